//! Endpoint sets: where a Service port's traffic may go, as the
//! destination service tells it (from the Service's EndpointSlices).

use std::net::SocketAddr;

use strait_contract::SpiffeId;

/// A pod (or other object) an endpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetRef {
    /// The namespace of the pod (or other object).
    pub namespace: String,
    /// The pod's (or other object's) name.
    pub name: String,
}

/// One address of a Service port, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect: the endpoint's IP and the Service port's target port.
    pub addr: SocketAddr,
    /// Ready for new traffic.
    pub ready: bool,
    /// Able to answer (a terminating endpoint may still be serving).
    pub serving: bool,
    /// Being deleted: the EndpointSlice's `terminating` condition.
    pub terminating: bool,
    /// The pod behind the address (the EndpointSlice's `targetRef`), if any.
    pub target: Option<TargetRef>,
    /// The SPIFFE ID to require of it: set when its pod is meshed.
    pub identity: Option<SpiffeId>,
}

/// One Service port's endpoints as of the destination service's last update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// The port's endpoints, ready or not.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: addr.parse().expect("an address"),
            ready,
            serving,
            terminating,
            target: None,
            identity: None,
        }
    }

    fn usable(set: &EndpointSet) -> Vec<String> {
        set.usable().iter().map(|e| e.addr.to_string()).collect()
    }

    #[test]
    fn ready_endpoints_are_used_and_terminating_serving_ones_only_when_none_is_ready() {
        let mut set = EndpointSet {
            endpoints: vec![
                endpoint("198.18.1.1:80", true, true, false),
                endpoint("198.18.1.2:80", false, true, true),
                endpoint("198.18.1.3:80", false, false, true),
            ],
        };
        assert_eq!(usable(&set), ["198.18.1.1:80"]);
        set.endpoints.remove(0);
        assert_eq!(usable(&set), ["198.18.1.2:80"]);
    }
}
