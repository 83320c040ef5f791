//! The mutation that meshes a pod, shared by the webhook and `inject`.
//!
//! Given a pod and whether its namespace turns injection on, it decides
//! whether to inject and, if so, returns the JSON patch (RFC 6902) that adds
//! the init container, the proxy, its token volume, the `strait.io/meshed`
//! label, the identity annotation and the Prometheus scrape annotations
//! (unless the application has its own).

pub mod annotations;
pub mod containers;
pub mod probes;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use strait_contract::names::{self, annotations as key};
use strait_contract::{PortSet, SpiffeId};

use crate::settings::InjectSettings;

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do, and why.
    Skip(String),
    Inject {
        /// RFC 6902 operations, in order.
        patch: Vec<Value>,
        warnings: Vec<String>,
    },
}

/// The annotations of Prometheus' conventional pod scrape configuration.
const SCRAPE_ANNOTATIONS: [&str; 3] = ["prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"];

/// The annotation kubectl reads for the container to exec into by default.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn names_of(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name")?.as_str().map(str::to_string))
        .collect()
}

/// Decides for one pod. `namespace_enabled` says whether the namespace
/// carries `strait.io/inject=enabled` (the offline command passes `true`).
pub fn decide(pod: &Value, namespace: &str, namespace_enabled: bool, settings: &InjectSettings) -> Decision {
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Decision::Skip("the pod uses the host network".into());
    }
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    let labels = string_map(pod.pointer("/metadata/labels"));
    let has_proxy = ["initContainers", "containers"]
        .iter()
        .any(|list| names_of(pod, list).iter().any(|n| n == names::PROXY_CONTAINER));
    if has_proxy || labels.get(names::MESHED_LABEL).is_some_and(|v| v == "true") {
        return Decision::Skip("the pod is already injected".into());
    }
    let mut warnings = Vec::new();
    let wanted = match annotations.get(key::INJECT).map(|v| v.trim()) {
        Some("disabled") => return Decision::Skip(format!("the pod opts out ({}: disabled)", key::INJECT)),
        Some("enabled") => true,
        Some(other) => {
            warnings.push(format!(
                "annotation {}={other:?} ignored: expected enabled or disabled",
                key::INJECT
            ));
            namespace_enabled
        }
        None => namespace_enabled,
    };
    if !wanted {
        return Decision::Skip(format!(
            "neither the namespace (label {}=enabled) nor the pod (annotation {}: enabled) turns injection on",
            names::INJECT_LABEL,
            key::INJECT
        ));
    }
    let (overrides, annotation_warnings) = annotations::read(&annotations);
    warnings.extend(annotation_warnings);
    let (proxy_resources, resource_warnings) = overrides.proxy_resources(&settings.proxy_resources);
    warnings.extend(resource_warnings);
    let service_account = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    // Every proxy has an identity, to reach the control plane; a pod that
    // opted out of mutual TLS does not announce it (no `strait.io/identity`
    // annotation), so its peers talk to it in plaintext.
    let identity = SpiffeId::new(&settings.trust_domain, namespace, service_account).to_string();
    let mtls = !overrides.mtls_disabled();

    let skip_inbound = overrides
        .skip_inbound_ports
        .as_deref()
        .and_then(|ports| PortSet::parse(ports).ok())
        .unwrap_or_default();
    let probes = probes::rewrite(pod, &skip_inbound);

    let init = serde_json::to_value(containers::init_container(settings, &overrides)).unwrap_or_default();
    let proxy = containers::proxy_container(settings, &overrides, &proxy_resources, &identity, mtls, &probes.ports);
    let proxy = serde_json::to_value(proxy).unwrap_or_default();
    // The probe rewrites name containers by their index as submitted, so
    // they come before the proxy is inserted among them.
    let mut patch = probes.patch;
    let has = |pointer: &str| pod.pointer(pointer).is_some();
    let mut add = |path: String, value: Value| patch.push(json!({"op": "add", "path": path, "value": value}));

    // Without native sidecars the proxy starts after every init container,
    // so an application init container behind the redirect could never
    // reach the network (case: a migration job, a config fetch). strait-init
    // then runs last: the application's init containers run before the
    // redirect exists, unmeshed, as other meshes let them do.
    let app_inits = names_of(pod, "initContainers");
    match (app_inits.is_empty(), settings.native_sidecar) {
        (true, true) => add("/spec/initContainers".into(), json!([init, proxy])),
        (true, false) => add("/spec/initContainers".into(), json!([init])),
        (false, true) => {
            add("/spec/initContainers/0".into(), init);
            add("/spec/initContainers/1".into(), proxy.clone());
        }
        (false, false) => {
            add("/spec/initContainers/-".into(), init);
            warnings.push(format!(
                "init containers {} run before {} and are not meshed: without native sidecars (proxy.nativeSidecar=false) \
                 the proxy starts only after them, so their traffic bypasses it (no mTLS, no balancing); \
                 enable native sidecars (Kubernetes 1.29+) to mesh them",
                app_inits.join(", "),
                names::INIT_CONTAINER
            ));
        }
    }
    if !settings.native_sidecar {
        add("/spec/containers/0".into(), proxy);
    }
    let volumes: Vec<Value> = containers::volumes()
        .into_iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    if has("/spec/volumes") {
        for volume in volumes {
            add("/spec/volumes/-".into(), volume);
        }
    } else {
        add("/spec/volumes".into(), json!(volumes));
    }

    if !has("/metadata") {
        add("/metadata".into(), json!({}));
    }
    let meshed = [(names::MESHED_LABEL, "true")];
    // The annotation-based scrape finds the proxy's metrics only where the
    // application has no scrape annotations of its own: its values win
    // (its metrics would otherwise stop being scraped), and the proxy is
    // then scraped through its `strait-admin` port (the chart's PodMonitor).
    let app_scrapes = SCRAPE_ANNOTATIONS.iter().any(|name| annotations.contains_key(*name));
    let mut annotated: Vec<(&str, &str)> = if app_scrapes {
        Vec::new()
    } else {
        SCRAPE_ANNOTATIONS
            .into_iter()
            .zip(["true", "4191", "/metrics"])
            .collect()
    };
    if mtls {
        annotated.insert(0, (key::IDENTITY, identity.as_str()));
    }
    // With the proxy first, `kubectl exec` and `logs` should still default
    // to the application.
    let first_app = names_of(pod, "containers").into_iter().next().unwrap_or_default();
    let has_default = annotations.contains_key(DEFAULT_CONTAINER);
    if !settings.native_sidecar && !has_default && !first_app.is_empty() {
        annotated.push((DEFAULT_CONTAINER, first_app.as_str()));
    }
    for (section, entries) in [("labels", &meshed[..]), ("annotations", &annotated[..])] {
        if has(&format!("/metadata/{section}")) {
            for (name, value) in entries {
                add(format!("/metadata/{section}/{}", pointer_key(name)), json!(value));
            }
        } else {
            let map: serde_json::Map<String, Value> = entries.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            add(format!("/metadata/{section}"), Value::Object(map));
        }
    }
    Decision::Inject { patch, warnings }
}

#[cfg(test)]
mod tests;
