//! The proxy's Prometheus metrics. One registry (prefix `strait_`) is built
//! at start and each subsystem registers its metrics under it. Every label
//! value comes from discovered objects or from the proxy itself, never from
//! request paths or other client input, so the number of series is bounded.

pub mod discovery;
pub mod http;
pub mod tcp;

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use discovery::DiscoveryMetrics;
pub use http::{HttpMetrics, RetryOutcome, RouteLabels, RouteMetrics, TurnedAway};
pub use tcp::{TcpLabels, TcpMetrics};

/// Traffic direction, relative to the pod.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// To this pod's application, from a client elsewhere (the `direction`
    /// label `inbound`).
    Inbound,
    /// From this pod's application (the `direction` label `outbound`).
    Outbound,
}

impl Direction {
    /// The metric label value: `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric the proxy has, registered in one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Connection metrics: `strait_tcp_*` and `strait_protocol_detections`.
    pub tcp: TcpMetrics,
    /// Request metrics: `strait_requests`, `strait_responses` and the rest.
    pub http: HttpMetrics,
    /// Discovery metrics: `strait_discovery_*` and `strait_balancer_endpoints`.
    pub discovery: DiscoveryMetrics,
}

impl Metrics {
    /// Registers every metric; `recording` false (`STRAIT_METRICS=off`)
    /// keeps them at zero, to measure what recording costs.
    pub fn register(registry: &mut Registry, recording: bool) -> Self {
        registry.register(
            "build",
            "strait-proxy build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics {
            tcp: TcpMetrics::register(registry, recording),
            http: HttpMetrics::register(registry, recording),
            discovery: DiscoveryMetrics::register(registry),
        }
    }
}

/// The root registry: every metric is `strait_*`.
pub fn registry() -> Registry {
    Registry::with_prefix("strait")
}
