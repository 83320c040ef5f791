//! EndpointSlices: one set of endpoints per Service and port mapping, from
//! the pods its selector matches, with the ready / serving / terminating
//! conditions and named target ports resolved per pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{is_terminating, owner_reference, pod_ready, short_hash};
use crate::apiserver::resource::Resource;
use crate::apiserver::selector::LabelSelector;
use crate::apiserver::store::{Store, name_of, namespace_of};
use crate::kubelet::container::NODE_NAME;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub async fn run(store: Arc<Store>) {
    let reconciler = store.clone();
    super::run_controller(store, &["services", "pods"], || {
        reconcile_all(&reconciler);
        std::future::ready(())
    })
    .await;
}

fn reconcile_all(store: &Store) {
    let (services, _) = store.list(Resource::named("services"), None);
    for service in &services {
        if let Some(selector) = service.pointer("/spec/selector").and_then(Value::as_object) {
            reconcile(store, service, &LabelSelector::from_map(selector));
        }
    }
    // Slices of Services that are gone.
    let (slices, _) = store.list(Resource::named("endpointslices"), None);
    for slice in slices.iter().filter(|s| {
        s.pointer(&format!("/metadata/labels/{}", MANAGED_BY_LABEL.replace('/', "~1"))) == Some(&json!(MANAGED_BY))
    }) {
        let service = slice
            .pointer(&format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")))
            .and_then(Value::as_str);
        let exists = services
            .iter()
            .any(|s| Some(name_of(s)) == service && namespace_of(s) == namespace_of(slice));
        if !exists {
            let _ = store.remove(Resource::named("endpointslices"), namespace_of(slice), name_of(slice));
        }
    }
}

/// The pod's port for a Service port's targetPort (a number, or the name of
/// one of the pod's container ports).
fn target_port(pod: &Value, target: &Value) -> Option<i64> {
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c.get("ports").and_then(Value::as_array).cloned().unwrap_or_default())
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_i64()),
        _ => None,
    }
}

fn reconcile(store: &Store, service: &Value, selector: &LabelSelector) {
    let namespace = namespace_of(service);
    let service_name = name_of(service);
    let service_ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (pods, _) = store.list(Resource::named("pods"), Some(namespace));

    // Endpoints grouped by their port mapping: each group is one slice.
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selector.matches(p)) {
        let Some(ip) = pod.pointer("/status/podIP").and_then(Value::as_str) else {
            continue;
        };
        if matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let ports: Vec<Value> = service_ports
            .iter()
            .filter_map(|port| {
                let target = port.get("targetPort").unwrap_or(&port["port"]);
                Some(json!({
                    "name": port.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "port": target_port(pod, target)?,
                    "protocol": port.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                    "appProtocol": port.get("appProtocol"),
                }))
            })
            .collect();
        let terminating = is_terminating(pod);
        let ready = pod_ready(pod);
        let endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
            "nodeName": NODE_NAME,
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": name_of(pod), "uid": pod["metadata"]["uid"]},
        });
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let group = groups.entry(key).or_insert_with(|| (ports, Vec::new()));
        group.1.push(endpoint);
    }
    if groups.is_empty() {
        // A Service with no endpoints still has a slice, with none in it.
        let ports: Vec<Value> = service_ports
            .iter()
            .filter(|p| p.get("targetPort").is_none_or(Value::is_number))
            .map(|p| json!({"name": p.get("name").and_then(Value::as_str).unwrap_or_default(), "port": p.get("targetPort").unwrap_or(&p["port"]), "protocol": "TCP"}))
            .collect();
        groups.insert(String::new(), (ports, Vec::new()));
    }

    let mut wanted = Vec::new();
    for (ports, mut endpoints) in groups.into_values() {
        endpoints.sort_by(|a, b| a["addresses"][0].as_str().cmp(&b["addresses"][0].as_str()));
        let name = format!("{service_name}-{}", short_hash(&json!(ports), 5));
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: service_name, MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [owner_reference(service)],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        apply(store, slice);
        wanted.push(name);
    }
    let (slices, _) = store.list(Resource::named("endpointslices"), Some(namespace));
    for slice in slices {
        let owned = slice.pointer(&format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")))
            == Some(&json!(service_name));
        if owned && !wanted.iter().any(|w| w == name_of(&slice)) {
            let _ = store.remove(Resource::named("endpointslices"), namespace, name_of(&slice));
        }
    }
}

/// Creates the slice, or updates it when its endpoints or ports changed.
pub fn apply(store: &Store, slice: Value) {
    let resource = Resource::named("endpointslices");
    let result = match store.get(resource, namespace_of(&slice), name_of(&slice)) {
        Err(_) => store.create(resource, slice).map(drop),
        Ok(_) => store
            .modify(resource, namespace_of(&slice), name_of(&slice), |stored| {
                for field in ["endpoints", "ports", "addressType"] {
                    stored[field] = slice[field].clone();
                }
                stored["metadata"]["labels"] = slice["metadata"]["labels"].clone();
                Ok(())
            })
            .map(drop),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "cannot write an EndpointSlice");
    }
}
