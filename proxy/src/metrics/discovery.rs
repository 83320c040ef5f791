//! Discovery metrics: watch health and errors, and endpoints by state.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    /// `services` or `endpointslices`.
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStateLabels {
    pub dst_namespace: String,
    pub dst_service: String,
    /// `ready`, `serving` (terminating but still answering) or `unready`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    watch_healthy: Family<WatchLabels, Gauge>,
    watch_errors: Family<WatchLabels, Counter>,
    pub endpoints: Family<EndpointStateLabels, Gauge>,
}

impl DiscoveryMetrics {
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

    pub fn watch_ok(&self, resource: &'static str) {
        self.watch_healthy.get_or_create(&WatchLabels { resource }).set(1);
    }

    pub fn watch_failed(&self, resource: &'static str) {
        let labels = WatchLabels { resource };
        self.watch_healthy.get_or_create(&labels).set(0);
        self.watch_errors.get_or_create(&labels).inc();
    }
}
