//! Pod Security admission, as Kubernetes' built-in `PodSecurity` plugin does
//! it (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>,
//! <https://kubernetes.io/docs/concepts/security/pod-security-admission/>):
//! a namespace's `pod-security.kubernetes.io/enforce` label (`privileged`,
//! `baseline`, `restricted`) refuses pods that break its level with a 403
//! naming every check they fail; `.../warn` returns the same text as
//! warnings. Pods are checked on creation, after mutating admission (so an
//! injected sidecar is judged too). Each check's reason and detail are
//! worded as the plugin words them; checks run in the plugin's order (by
//! check ID). Only the `latest` policy is served, whatever a valid
//! `-version` label says; Windows' hostProcess is not checked, and
//! workload templates get no warnings.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::ApiError;
use super::store::name_of;

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(text: &str) -> Option<Level> {
        match text {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Capabilities a baseline pod may add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types a restricted pod may use.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls a baseline pod may set.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Checks whether namespace labels name valid levels, as the plugin does
/// when a namespace is created or changed.
pub fn check_namespace(namespace: &Value) -> Result<(), ApiError> {
    for label in [ENFORCE_LABEL, WARN_LABEL, AUDIT_LABEL] {
        let version_label = format!("{label}-version");
        if let Some(version) = namespace["metadata"]["labels"][&version_label].as_str() {
            let minor = version
                .strip_prefix("v1.")
                .map(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
            if version != "latest" && minor != Some(true) {
                return Err(ApiError::invalid(
                    "Namespace",
                    name_of(namespace),
                    format!("metadata.labels[{version_label}]: Invalid value: {version:?}: must be 'latest' or 'v1.x'"),
                ));
            }
        }
        let Some(value) = namespace["metadata"]["labels"][label].as_str() else {
            continue;
        };
        if Level::parse(value).is_none() {
            return Err(ApiError::invalid(
                "Namespace",
                name_of(namespace),
                format!(
                    "metadata.labels[{label}]: Invalid value: {value:?}: must be one of privileged, baseline, restricted"
                ),
            ));
        }
    }
    Ok(())
}

/// Admits a new pod in `namespace`: refuses it when it breaks the enforced
/// level; returns the warnings the warn level asks for.
pub fn admit(namespace: &Value, pod: &Value) -> Result<Vec<String>, ApiError> {
    let level = |label: &str| namespace["metadata"]["labels"][label].as_str().and_then(Level::parse);
    if let Some(enforce) = level(ENFORCE_LABEL) {
        let failures = evaluate(enforce, pod);
        if !failures.is_empty() {
            return Err(ApiError::forbidden(format!(
                "pods {:?} is forbidden: violates PodSecurity \"{}:latest\": {}",
                name_of(pod),
                enforce.name(),
                failures.join(", ")
            )));
        }
    }
    Ok(level(WARN_LABEL)
        .map(|warn| (warn, evaluate(warn, pod)))
        .filter(|(_, failures)| !failures.is_empty())
        .map(|(warn, failures)| {
            format!(
                "would violate PodSecurity \"{}:latest\": {}",
                warn.name(),
                failures.join(", ")
            )
        })
        .into_iter()
        .collect())
}

fn volume_name(volume: &Value) -> &str {
    volume["name"].as_str().unwrap_or_default()
}

fn seccomp<'a>(container: &Container<'a>) -> Option<&'a str> {
    container.spec["securityContext"]["seccompProfile"]["type"].as_str()
}

struct Container<'a> {
    name: &'a str,
    spec: &'a Value,
}

impl Container<'_> {
    fn security(&self, field: &str) -> &Value {
        &self.spec["securityContext"][field]
    }
}

fn containers(pod: &Value) -> Vec<Container<'_>> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .map(|spec| Container {
            name: spec["name"].as_str().unwrap_or_default(),
            spec,
        })
        .collect()
}

/// `container "a"` or `containers "a", "b"`.
fn named(kind: &str, names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("{kind}{plural} {}", quoted.join(", "))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The failed checks of `pod` at `level`, as `reason (detail)`.
pub fn evaluate(level: Level, pod: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let restricted = level == Level::Restricted;
    let containers = containers(pod);
    let spec = &pod["spec"];
    let pod_security = &spec["securityContext"];
    // Check ID → (reason, detail), in ID order.
    let mut failures: BTreeMap<&str, (&str, String)> = BTreeMap::new();

    if restricted {
        let bad: Vec<&str> = containers
            .iter()
            .filter(|c| c.security("allowPrivilegeEscalation") != &Value::Bool(false))
            .map(|c| c.name)
            .collect();
        if !bad.is_empty() {
            failures.insert(
                "allowPrivilegeEscalation",
                (
                    "allowPrivilegeEscalation != false",
                    format!(
                        "{} must set securityContext.allowPrivilegeEscalation=false",
                        named("container", &bad)
                    ),
                ),
            );
        }
    }

    let mut app_armor: Vec<String> = containers
        .iter()
        .filter(|c| c.security("appArmorProfile")["type"] == "Unconfined")
        .map(|c| {
            format!(
                "container {:?} must not set AppArmor profile type to \"Unconfined\"",
                c.name
            )
        })
        .collect();
    if pod_security["appArmorProfile"]["type"] == "Unconfined" {
        app_armor.insert(0, "pod must not set AppArmor profile type to \"Unconfined\"".into());
    }
    for (key, value) in pod["metadata"]["annotations"].as_object().into_iter().flatten() {
        let value = value.as_str().unwrap_or_default();
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && value != "runtime/default"
            && !value.starts_with("localhost/")
        {
            app_armor.push(format!("annotation {key:?}={value:?}"));
        }
    }
    if !app_armor.is_empty() {
        failures.insert("appArmorProfile", ("forbidden AppArmor profile", app_armor.join(", ")));
    }

    // Capabilities: the baseline's allowed list, or restricted's "drop ALL,
    // add at most NET_BIND_SERVICE".
    let mut must_drop = Vec::new();
    let mut adds = Vec::new();
    for container in &containers {
        let capabilities = container.security("capabilities");
        let added: Vec<&str> = strings(&capabilities["add"])
            .into_iter()
            .filter(|cap| {
                if restricted {
                    *cap != "NET_BIND_SERVICE"
                } else {
                    !BASELINE_CAPABILITIES.contains(cap)
                }
            })
            .collect();
        if !added.is_empty() {
            let quoted: Vec<String> = added.iter().map(|c| format!("{c:?}")).collect();
            adds.push(format!(
                "container {:?} must not include {} in securityContext.capabilities.add",
                container.name,
                quoted.join(", ")
            ));
        }
        if restricted && !strings(&capabilities["drop"]).contains(&"ALL") {
            must_drop.push(container.name);
        }
    }
    if restricted && (!must_drop.is_empty() || !adds.is_empty()) {
        let mut parts = Vec::new();
        if !must_drop.is_empty() {
            parts.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                named("container", &must_drop)
            ));
        }
        parts.extend(adds);
        failures.insert(
            "capabilities_restricted",
            ("unrestricted capabilities", parts.join("; ")),
        );
    } else if !restricted && !adds.is_empty() {
        failures.insert("capabilities_baseline", ("non-default capabilities", adds.join("; ")));
    }

    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|field| spec[**field] == Value::Bool(true))
        .map(|field| format!("{field}=true"))
        .collect();
    if !host.is_empty() {
        failures.insert("hostNamespaces", ("host namespaces", host.join(", ")));
    }

    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| volume_name(v))
        .collect();
    // At restricted, the volume-type check covers hostPath (it overrides
    // this one in the plugin).
    if !host_paths.is_empty() && !restricted {
        failures.insert("hostPathVolumes", ("hostPath volumes", named("volume", &host_paths)));
    }

    let host_ports: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            c.spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["hostPort"].as_u64().filter(|port| *port != 0))
                .map(|port| format!("container {:?} uses hostPort {port}", c.name))
        })
        .collect();
    if !host_ports.is_empty() {
        failures.insert("hostPorts", ("hostPort", host_ports.join(", ")));
    }

    // Probes and lifecycle hooks may not reach another host (baseline,
    // Kubernetes 1.34).
    let host_probes: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            let handlers = [
                &c.spec["livenessProbe"],
                &c.spec["readinessProbe"],
                &c.spec["startupProbe"],
                &c.spec["lifecycle"]["postStart"],
                &c.spec["lifecycle"]["preStop"],
            ];
            handlers
                .into_iter()
                .flat_map(|handler| [&handler["httpGet"]["host"], &handler["tcpSocket"]["host"]])
                .filter_map(|host| host.as_str().filter(|h| !h.is_empty()))
                .map(|host| format!("container {:?} uses probe or lifecycle host {host:?}", c.name))
                .collect::<Vec<_>>()
        })
        .collect();
    if !host_probes.is_empty() {
        failures.insert(
            "hostProbesAndHostLifecycle",
            ("probe or lifecycle host", host_probes.join(", ")),
        );
    }

    let privileged: Vec<&str> = containers
        .iter()
        .filter(|c| c.security("privileged") == &Value::Bool(true))
        .map(|c| c.name)
        .collect();
    if !privileged.is_empty() {
        failures.insert(
            "privileged",
            (
                "privileged",
                format!(
                    "{} must not set securityContext.privileged=true",
                    named("container", &privileged)
                ),
            ),
        );
    }

    let unmasked: Vec<&str> = containers
        .iter()
        .filter(|c| c.security("procMount").as_str().is_some_and(|m| m != "Default"))
        .map(|c| c.name)
        .collect();
    if !unmasked.is_empty() {
        failures.insert(
            "procMount",
            (
                "procMount",
                format!(
                    "{} must not set securityContext.procMount to \"Unmasked\"",
                    named("container", &unmasked)
                ),
            ),
        );
    }

    if restricted {
        let restricted_volumes: Vec<String> = volumes
            .iter()
            .filter_map(|v| {
                let kind = v
                    .as_object()?
                    .keys()
                    .find(|k| *k != "name" && !RESTRICTED_VOLUMES.contains(&k.as_str()))?;
                Some(format!(
                    "volume {:?} uses restricted volume type {kind:?}",
                    volume_name(v)
                ))
            })
            .collect();
        if !restricted_volumes.is_empty() {
            failures.insert(
                "restrictedVolumes",
                ("restricted volume types", restricted_volumes.join(", ")),
            );
        }

        // runAsNonRoot: the pod's setting, unless a container sets its own.
        let pod_non_root = pod_security["runAsNonRoot"].as_bool();
        let set_false: Vec<&str> = containers
            .iter()
            .filter(|c| c.security("runAsNonRoot").as_bool() == Some(false))
            .map(|c| c.name)
            .collect();
        let not_set: Vec<&str> = containers
            .iter()
            .filter(|c| c.security("runAsNonRoot").as_bool().is_none() && pod_non_root != Some(true))
            .map(|c| c.name)
            .collect();
        let mut details = Vec::new();
        if pod_non_root == Some(false) {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        if !set_false.is_empty() {
            details.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                named("container", &set_false)
            ));
        }
        if !not_set.is_empty() && pod_non_root != Some(false) {
            details.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                named("container", &not_set)
            ));
        }
        if !details.is_empty() {
            failures.insert("runAsNonRoot", ("runAsNonRoot != true", details.join("; ")));
        }

        let root: Vec<&str> = containers
            .iter()
            .filter(|c| c.security("runAsUser").as_u64() == Some(0))
            .map(|c| c.name)
            .collect();
        if pod_security["runAsUser"].as_u64() == Some(0) || !root.is_empty() {
            let detail = if root.is_empty() {
                "pod must not set runAsUser=0".to_string()
            } else {
                format!("{} must not set runAsUser=0", named("container", &root))
            };
            failures.insert("runAsUser", ("runAsUser=0", detail));
        }
    }

    // seccomp: never Unconfined; restricted needs RuntimeDefault or
    // Localhost on the pod or on every container.
    let pod_seccomp = pod_security["seccompProfile"]["type"].as_str();
    if restricted {
        let unset: Vec<&str> = containers
            .iter()
            .filter(|c| !matches!(seccomp(c).or(pod_seccomp), Some("RuntimeDefault" | "Localhost")))
            .map(|c| c.name)
            .collect();
        let mut details = Vec::new();
        if pod_seccomp == Some("Unconfined") {
            details.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
        }
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                named("container", &unset)
            ));
        }
        if !details.is_empty() {
            failures.insert("seccompProfile_restricted", ("seccompProfile", details.join("; ")));
        }
    } else {
        let unconfined: Vec<&str> = containers
            .iter()
            .filter(|c| seccomp(c) == Some("Unconfined"))
            .map(|c| c.name)
            .collect();
        if pod_seccomp == Some("Unconfined") || !unconfined.is_empty() {
            let detail = if unconfined.is_empty() {
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string()
            } else {
                format!(
                    "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                    named("container", &unconfined)
                )
            };
            failures.insert("seccompProfile_baseline", ("seccompProfile", detail));
        }
    }

    let selinux_bad = |options: &Value| {
        options.is_object()
            && (!matches!(
                options["type"].as_str().unwrap_or_default(),
                "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t"
            ) || options.get("user").is_some()
                || options.get("role").is_some())
    };
    if selinux_bad(&pod_security["seLinuxOptions"])
        || containers.iter().any(|c| selinux_bad(c.security("seLinuxOptions")))
    {
        failures.insert(
            "seLinuxOptions",
            (
                "seLinuxOptions",
                "forbidden securityContext.seLinuxOptions: type, user or role".to_string(),
            ),
        );
    }

    let sysctls: Vec<String> = pod_security["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|name| !SAFE_SYSCTLS.contains(name))
        .map(str::to_string)
        .collect();
    if !sysctls.is_empty() {
        failures.insert("sysctls", ("forbidden sysctls", sysctls.join(", ")));
    }

    failures
        .into_values()
        .map(|(reason, detail)| format!("{reason} ({detail})"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn namespace(labels: Value) -> Value {
        json!({"metadata": {"name": "locked", "labels": labels}})
    }

    /// What strait's injector adds to a pod: the init container that
    /// installs the redirect needs NET_ADMIN and NET_RAW; the proxy is
    /// locked down.
    fn meshed_pod() -> Value {
        let locked = json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "runAsUser": 2102,
            "seccompProfile": {"type": "RuntimeDefault"},
        });
        json!({
            "metadata": {"name": "web-1"},
            "spec": {
                "initContainers": [{
                    "name": "strait-init",
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                        "runAsNonRoot": true,
                        "runAsUser": 2102,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                }, {"name": "strait-proxy", "securityContext": locked}],
                "containers": [{"name": "app", "securityContext": locked}],
            },
        })
    }

    #[test]
    fn a_meshed_pod_breaks_baseline_and_restricted_by_its_init_containers_capabilities() {
        let pod = meshed_pod();
        for level in ["baseline", "restricted"] {
            let error = admit(&namespace(json!({ENFORCE_LABEL: level})), &pod).unwrap_err();
            assert_eq!((error.code, error.reason), (403, "Forbidden"));
            let expected_reason = if level == "baseline" {
                "non-default capabilities"
            } else {
                "unrestricted capabilities"
            };
            assert_eq!(
                error.message,
                format!(
                    "pods \"web-1\" is forbidden: violates PodSecurity \"{level}:latest\": {expected_reason} (container \"strait-init\" must not include \"NET_ADMIN\", \"NET_RAW\" in securityContext.capabilities.add)"
                )
            );
        }
        assert!(admit(&namespace(json!({ENFORCE_LABEL: "privileged"})), &pod).is_ok());
        assert!(admit(&namespace(json!({})), &pod).is_ok());
        let warned = admit(&namespace(json!({WARN_LABEL: "restricted"})), &pod).unwrap();
        assert!(warned[0].starts_with("would violate PodSecurity \"restricted:latest\": unrestricted capabilities"));
    }

    #[test]
    fn a_plain_pod_fails_every_restricted_check_it_should_and_passes_baseline() {
        let pod = json!({"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app"}, {"name": "side"}]}});
        assert!(evaluate(Level::Baseline, &pod).is_empty());
        assert_eq!(
            evaluate(Level::Restricted, &pod),
            [
                "allowPrivilegeEscalation != false (containers \"app\", \"side\" must set securityContext.allowPrivilegeEscalation=false)",
                "unrestricted capabilities (containers \"app\", \"side\" must set securityContext.capabilities.drop=[\"ALL\"])",
                "runAsNonRoot != true (pod or containers \"app\", \"side\" must set securityContext.runAsNonRoot=true)",
                "seccompProfile (pod or containers \"app\", \"side\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            ]
        );
        // The pod-level settings cover every container.
        let covered = json!({"metadata": {"name": "ok"}, "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }});
        assert!(
            evaluate(Level::Restricted, &covered).is_empty(),
            "{:?}",
            evaluate(Level::Restricted, &covered)
        );
    }

    #[test]
    fn baseline_refuses_host_access() {
        let pod = json!({"metadata": {"name": "host"}, "spec": {
            "hostNetwork": true,
            "containers": [{"name": "app", "securityContext": {"privileged": true}, "ports": [{"containerPort": 80, "hostPort": 80}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        }});
        assert_eq!(
            evaluate(Level::Baseline, &pod),
            [
                "host namespaces (hostNetwork=true)",
                "hostPath volumes (volume \"root\")",
                "hostPort (container \"app\" uses hostPort 80)",
                "privileged (container \"app\" must not set securityContext.privileged=true)",
            ]
        );
    }

    #[test]
    fn pod_level_settings_that_undo_restricted_are_named_as_the_plugin_names_them() {
        let locked = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"seccompProfile": {"type": "Unconfined"}},
            "containers": [{"name": "app", "securityContext": locked}],
        }});
        assert_eq!(
            evaluate(Level::Restricted, &pod),
            ["seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"]
        );
        let mut own_false = locked.clone();
        own_false["runAsNonRoot"] = json!(false);
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "app", "securityContext": own_false}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        }});
        assert_eq!(
            evaluate(Level::Restricted, &pod),
            [
                "restricted volume types (volume \"root\" uses restricted volume type \"hostPath\")",
                "runAsNonRoot != true (container \"app\" must not set securityContext.runAsNonRoot=false)",
            ]
        );
        let unconfined = json!({"metadata": {"name": "p", "annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}},
                                "spec": {"containers": [{"name": "app"}]}});
        assert_eq!(
            evaluate(Level::Baseline, &unconfined),
            [
                "forbidden AppArmor profile (annotation \"container.apparmor.security.beta.kubernetes.io/app\"=\"unconfined\")"
            ]
        );
    }

    #[test]
    fn baseline_refuses_probes_and_hooks_aimed_at_another_host() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{
            "name": "app",
            "readinessProbe": {"tcpSocket": {"port": 80}},
            "lifecycle": {"preStop": {"httpGet": {"host": "10.0.0.1", "port": 80}}},
        }]}});
        assert_eq!(
            evaluate(Level::Baseline, &pod),
            ["probe or lifecycle host (container \"app\" uses probe or lifecycle host \"10.0.0.1\")"]
        );
    }

    #[test]
    fn unknown_levels_are_refused_on_the_namespace() {
        let error = check_namespace(&namespace(json!({ENFORCE_LABEL: "strict"}))).unwrap_err();
        assert_eq!(error.code, 422);
        assert!(
            error
                .message
                .contains("must be one of privileged, baseline, restricted")
        );
        check_namespace(&namespace(json!({ENFORCE_LABEL: "restricted", WARN_LABEL: "baseline"}))).unwrap();
        check_namespace(&namespace(
            json!({ENFORCE_LABEL: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.34"}),
        ))
        .unwrap();
        let error =
            check_namespace(&namespace(json!({"pod-security.kubernetes.io/warn-version": "bogus"}))).unwrap_err();
        assert!(
            error.message.contains("must be 'latest' or 'v1.x'"),
            "{}",
            error.message
        );
    }
}
