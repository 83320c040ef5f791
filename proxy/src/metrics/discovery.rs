//! Discovery metrics: watch health and errors, and endpoints by state.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    /// The stream's resource: `destinations` (the destination service's).
    resource: &'static str,
}

/// The labels of `strait_balancer_endpoints`: a Service and an endpoint state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStateLabels {
    /// The Service's namespace.
    pub dst_namespace: String,
    /// The Service's name.
    pub dst_service: String,
    /// `ready`, `serving` (terminating but still answering) or `unready`.
    pub state: &'static str,
}

/// The discovery metrics: `strait_discovery_watch_healthy`,
/// `strait_discovery_watch_errors` and `strait_balancer_endpoints`.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    watch_healthy: Family<WatchLabels, Gauge>,
    watch_errors: Family<WatchLabels, Counter>,
    /// `strait_balancer_endpoints`: the endpoints of each Service in use, by state.
    pub endpoints: Family<EndpointStateLabels, Gauge>,
}

impl DiscoveryMetrics {
    /// Registers the discovery metrics in `registry` (the root, `strait_`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = DiscoveryMetrics::default();
        let discovery = registry.sub_registry_with_prefix("discovery");
        discovery.register(
            "watch_healthy",
            "1 while the last message of a discovery stream (resource=destinations: from the destination service) was a success, 0 while it is failing",
            metrics.watch_healthy.clone(),
        );
        discovery.register(
            "watch_errors",
            "Failed or broken discovery streams (resource=destinations: to the destination service)",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "balancer_endpoints",
            "Endpoints of the Services in use, by state",
            metrics.endpoints.clone(),
        );
        metrics
    }

    /// Notes that a stream's last message was a success: `watch_healthy` is 1.
    pub fn watch_ok(&self, resource: &'static str) {
        self.watch_healthy.get_or_create(&WatchLabels { resource }).set(1);
    }

    /// Notes that a stream failed or broke: `watch_healthy` is 0 and
    /// `watch_errors` counts one more.
    pub fn watch_failed(&self, resource: &'static str) {
        let labels = WatchLabels { resource };
        self.watch_healthy.get_or_create(&labels).set(0);
        self.watch_errors.get_or_create(&labels).inc();
    }
}
