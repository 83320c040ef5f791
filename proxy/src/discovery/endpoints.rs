//! Endpoint sets: what a Service port's EndpointSlices say about where its
//! traffic may go.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// A pod (or other object) an endpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetRef {
    pub namespace: String,
    pub name: String,
}

/// One address of a Service port, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Ready for new traffic.
    pub ready: bool,
    /// Able to answer (a terminating endpoint may still be serving).
    pub serving: bool,
    pub terminating: bool,
    pub target: Option<TargetRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// The endpoints to use: the ready ones, or, when none is ready, the
    /// terminating ones that still serve (as kube-proxy does), so a Service
    /// that is draining keeps answering.
    pub fn usable(&self) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints.iter().filter(|e| e.serving && e.terminating).collect()
    }

    pub fn find(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}

/// The endpoints of the Service port named `port_name` (empty for an
/// unnamed port) across a Service's slices. The port number comes from each
/// slice, so a named target port can differ between pods.
pub fn endpoint_set<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port_name: &str) -> EndpointSet {
    let mut endpoints = Vec::new();
    for slice in slices {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // An unknown condition counts as ready, as the API documents.
            let ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(ready);
            let terminating = conditions.terminating.unwrap_or(false);
            let target = endpoint
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .map(|t| TargetRef {
                    namespace: t.namespace.clone().unwrap_or_default(),
                    name: t.name.clone().unwrap_or_default(),
                });
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else { continue };
                endpoints.push(Endpoint {
                    addr: SocketAddr::new(ip, port),
                    ready,
                    serving,
                    terminating,
                    target: target.clone(),
                });
            }
        }
    }
    endpoints.sort_by_key(|e| e.addr);
    endpoints.dedup_by_key(|e| e.addr);
    EndpointSet { endpoints }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "demo"},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn conditions_and_named_ports_are_followed() {
        let a = slice(
            json!([{"name": "grpc", "port": 50051, "protocol": "TCP"}]),
            json!([
                {"addresses": ["198.18.1.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": "demo", "name": "a"}},
                {"addresses": ["198.18.1.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["198.18.1.3"]},
            ]),
        );
        // Another slice where the named port maps to another number.
        let b = slice(
            json!([{"name": "grpc", "port": 9000}]),
            json!([{"addresses": ["198.18.1.4"], "conditions": {"ready": true}}]),
        );
        let set = endpoint_set([&a, &b], "grpc");
        let addrs: Vec<String> = set.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "198.18.1.1:50051",
                "198.18.1.2:50051",
                "198.18.1.3:50051",
                "198.18.1.4:9000"
            ]
        );
        let usable: Vec<String> = set.usable().iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(usable, ["198.18.1.1:50051", "198.18.1.3:50051", "198.18.1.4:9000"]);
        assert_eq!(
            set.endpoints[0].target,
            Some(TargetRef {
                namespace: "demo".into(),
                name: "a".into()
            })
        );
        assert!(endpoint_set([&a], "http").endpoints.is_empty());
    }

    #[test]
    fn terminating_serving_endpoints_are_used_when_none_is_ready() {
        let a = slice(
            json!([{"name": "", "port": 80}]),
            json!([
                {"addresses": ["198.18.1.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["198.18.1.2"], "conditions": {"ready": false, "serving": false, "terminating": true}},
            ]),
        );
        let set = endpoint_set([&a], "");
        let usable: Vec<String> = set.usable().iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(usable, ["198.18.1.1:80"]);
    }
}
