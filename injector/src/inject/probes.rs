//! Rewrites the application's `tcpSocket` probes to ask the proxy.
//!
//! Behind the inbound redirect a kubelet's TCP probe reaches the proxy,
//! which accepts every connection: the probe would pass as soon as the proxy
//! listens, before the application does, and the pod would be Ready (and in
//! its Services' EndpointSlices) with nothing behind it. Each such probe
//! becomes an `httpGet` on the proxy's admin port,
//! [`path`]`(port)` = `/app-probe/tcp/<port>`, which answers 200 only when a
//! TCP connection to the application's port opens, as the kubelet's own
//! probe would; the probe's timing and thresholds stay. The ports go to the
//! proxy in `STRAIT_APP_PROBE_PORTS`, and the proxy probes no others.
//!
//! `httpGet` and `grpc` probes are left as they are: the proxy forwards
//! them, and they fail while the application does not answer. So are TCP
//! probes with a `host` (not the pod), on a port the pod skips
//! (`strait.io/skip-inbound-ports`, the kubelet reaches the application
//! itself) or on a named port the container does not declare (the kubelet
//! fails those, and so should the pod).

use serde_json::{Value, json};
use strait_contract::PortSet;
use strait_contract::names;

/// The probes of a container, in the order the kubelet runs them.
const KINDS: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

/// The admin path that probes TCP `port` of the application.
pub fn path(port: u16) -> String {
    format!("/app-probe/tcp/{port}")
}

/// What the rewrite changes: RFC 6902 operations on `/spec/containers`
/// (indices of the pod as submitted, so they go before any insertion), and
/// the ports the proxy is to probe.
#[derive(Debug, Default, PartialEq)]
pub struct Rewrite {
    pub patch: Vec<Value>,
    pub ports: PortSet,
}

/// Rewrites every `tcpSocket` probe whose port is not in `skip_inbound`, of
/// the pod's containers and of its own sidecars (init containers with
/// `restartPolicy: Always`, which run behind the redirect too).
pub fn rewrite(pod: &Value, skip_inbound: &PortSet) -> Rewrite {
    let mut rewrite = Rewrite::default();
    for list in ["initContainers", "containers"] {
        let containers = pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array);
        for (index, container) in containers.into_iter().flatten().enumerate() {
            let sidecar = container.get("restartPolicy").and_then(Value::as_str) == Some("Always");
            if list == "containers" || sidecar {
                rewrite_container(&mut rewrite, &format!("/spec/{list}/{index}"), container, skip_inbound);
            }
        }
    }
    rewrite
}

fn rewrite_container(rewrite: &mut Rewrite, pointer: &str, container: &Value, skip_inbound: &PortSet) {
    for kind in KINDS {
        let Some(probe) = container.get(kind) else { continue };
        let Some(port) = tcp_port(container, probe) else {
            continue;
        };
        if skip_inbound.contains(port) {
            continue;
        }
        let mut probe = probe.clone();
        if let Some(fields) = probe.as_object_mut() {
            fields.remove("tcpSocket");
            fields.insert(
                "httpGet".into(),
                json!({"path": path(port), "port": names::ADMIN_PORT, "scheme": "HTTP"}),
            );
        }
        rewrite.patch.push(json!({
            "op": "replace",
            "path": format!("{pointer}/{kind}"),
            "value": probe,
        }));
        rewrite.ports.insert(port);
    }
}

/// The port of a `tcpSocket` probe on the pod itself: a number, or the name
/// of one of the container's ports (as the kubelet resolves it). A probe
/// with another handler besides is invalid (the API server refuses it) and
/// is left for it to refuse.
fn tcp_port(container: &Value, probe: &Value) -> Option<u16> {
    let tcp = probe.get("tcpSocket")?;
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"];
    if handlers.iter().filter(|handler| probe.get(**handler).is_some()).count() > 1 {
        return None;
    }
    if tcp
        .get("host")
        .and_then(Value::as_str)
        .is_some_and(|host| !host.is_empty())
    {
        return None;
    }
    match tcp.get("port")? {
        Value::Number(number) => number.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|&n| n > 0),
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|port| port.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|port| port.get("containerPort")?.as_u64())
            .and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Value {
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn tcp_probes_become_admin_probes_with_their_timing_kept() {
        let pod = pod(json!([
            {"name": "sidecar", "image": "x"},
            {
                "name": "app",
                "ports": [{"name": "grpc", "containerPort": 50051}],
                "readinessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 1, "failureThreshold": 5},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 10},
                "startupProbe": {"httpGet": {"path": "/healthz", "port": 8080}}
            }
        ]));
        let rewrite = rewrite(&pod, &PortSet::default());
        assert_eq!(
            rewrite.patch,
            [
                json!({"op": "replace", "path": "/spec/containers/1/readinessProbe", "value": {
                    "httpGet": {"path": "/app-probe/tcp/50051", "port": 4191, "scheme": "HTTP"},
                    "periodSeconds": 1, "failureThreshold": 5
                }}),
                json!({"op": "replace", "path": "/spec/containers/1/livenessProbe", "value": {
                    "httpGet": {"path": "/app-probe/tcp/8080", "port": 4191, "scheme": "HTTP"},
                    "initialDelaySeconds": 10
                }}),
            ]
        );
        assert_eq!(rewrite.ports.to_string(), "50051,8080");
    }

    #[test]
    fn probes_the_kubelet_sends_elsewhere_are_left_alone() {
        let pod = pod(json!([{
            "name": "app",
            "ports": [{"name": "admin", "containerPort": 9000}],
            "startupProbe": {"tcpSocket": {"port": 22}},
            "readinessProbe": {"tcpSocket": {"port": 8080, "host": "10.0.0.9"}},
            "livenessProbe": {"tcpSocket": {"port": "metrics"}}
        }, {
            "name": "invalid",
            "readinessProbe": {"tcpSocket": {"port": 7000}, "httpGet": {"path": "/h", "port": 7001}}
        }]));
        assert_eq!(rewrite(&pod, &PortSet::parse("22").unwrap()), Rewrite::default());
    }

    #[test]
    fn the_pods_own_sidecars_are_rewritten_and_its_init_tasks_are_not() {
        let pod = json!({"spec": {
            "initContainers": [
                {"name": "migrate", "readinessProbe": {"tcpSocket": {"port": 5432}}},
                {"name": "log-shipper", "restartPolicy": "Always", "startupProbe": {"tcpSocket": {"port": 9000}}}
            ],
            "containers": [{"name": "app"}]
        }});
        let rewrite = rewrite(&pod, &PortSet::default());
        assert_eq!(rewrite.patch.len(), 1, "{:?}", rewrite.patch);
        assert_eq!(rewrite.patch[0]["path"], "/spec/initContainers/1/startupProbe");
        assert_eq!(rewrite.ports.to_string(), "9000");
    }
}
