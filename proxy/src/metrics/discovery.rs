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

/// The labels of `strait_balancer_ejections`: an endpoint of a Service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    dst_namespace: String,
    dst_service: String,
    dst_pod: String,
}

/// The labels of `strait_balancer_failed_open`: a Service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    dst_namespace: String,
    dst_service: String,
}

/// The discovery metrics: `strait_discovery_watch_healthy`,
/// `strait_discovery_watch_errors`, `strait_balancer_endpoints`,
/// `strait_balancer_ejections` and `strait_balancer_failed_open`.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    watch_healthy: Family<WatchLabels, Gauge>,
    watch_errors: Family<WatchLabels, Counter>,
    /// `strait_balancer_endpoints`: the endpoints of each Service in use, by state.
    pub endpoints: Family<EndpointStateLabels, Gauge>,
    ejections: Family<EjectionLabels, Counter>,
    failed_open: Family<ServiceLabels, Counter>,
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
        registry.register(
            "balancer_ejections",
            "Endpoints taken out of the balancer after failing requests in a row (failure accrual)",
            metrics.ejections.clone(),
        );
        registry.register(
            "balancer_failed_open",
            "Requests sent to an ejected endpoint because every endpoint of the Service was ejected",
            metrics.failed_open.clone(),
        );
        metrics
    }

    /// Counts an ejection of `pod`, an endpoint of `namespace/service`.
    pub fn ejected(&self, namespace: &str, service: &str, pod: &str) {
        let labels = EjectionLabels {
            dst_namespace: namespace.to_string(),
            dst_service: service.to_string(),
            dst_pod: pod.to_string(),
        };
        self.ejections.get_or_create(&labels).inc();
    }

    /// Counts a pick among ejected endpoints of `namespace/service`.
    pub fn failed_open(&self, namespace: &str, service: &str) {
        let labels = ServiceLabels {
            dst_namespace: namespace.to_string(),
            dst_service: service.to_string(),
        };
        self.failed_open.get_or_create(&labels).inc();
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
