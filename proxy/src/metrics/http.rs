//! HTTP and gRPC metrics: requests, responses (HTTP status, gRPC status,
//! classification), latency, and requests turned away, per route. A route's
//! metric handles are looked up once and kept, so the request path only
//! touches atomics.

use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{Direction, TcpLabels};

/// Latency buckets from 100 µs to 60 s: sub-millisecond proxy hops and slow
/// calls both resolve.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Where requests go and who is talking; every value comes from discovery or
/// from verified identities.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Which way the request goes.
    pub direction: Direction,
    /// The Service's namespace (outbound) or this pod's (inbound).
    pub dst_namespace: String,
    /// The Service, outbound to a Service port; else `""`.
    pub dst_service: String,
    /// The endpoint's pod (outbound) or this pod (inbound); `""` for requests
    /// that reached no endpoint.
    pub dst_pod: String,
    /// The client's verified SPIFFE ID, inbound over mutual TLS; else `""`.
    pub client_id: String,
    /// The endpoint's SPIFFE ID, outbound over mutual TLS; else `""`.
    pub server_id: String,
    /// Whether the request crossed the mesh over mutual TLS: inbound from the
    /// client's proxy, outbound to the endpoint's.
    pub tls: bool,
    /// The kind of the Gateway API route that sent the request (`HTTPRoute`,
    /// `GRPCRoute`); `""` when the Service port is not routed. Bounded: it
    /// comes from route objects, never from request data.
    pub route_kind: String,
    /// `namespace/name` of that route; `""` when not routed.
    pub route_name: String,
}

impl From<&TcpLabels> for RouteLabels {
    /// The requests of a connection labelled so, before an endpoint is
    /// picked (its `server_id` is added then: [`crate::endpoint::Endpoint::labelled`]).
    fn from(tcp: &TcpLabels) -> Self {
        RouteLabels {
            direction: tcp.direction,
            dst_namespace: tcp.dst_namespace.clone(),
            dst_service: tcp.dst_service.clone(),
            dst_pod: tcp.dst_pod.clone(),
            client_id: tcp.client_id.clone(),
            server_id: String::new(),
            tls: tcp.tls,
            route_kind: String::new(),
            route_name: String::new(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    status_code: u16,
    grpc_status: String,
    /// `success` or `failure`; a gRPC error in a trailer is a failure.
    classification: &'static str,
}

/// Why an endpoint did not take a request; each is safe to send elsewhere.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TurnedAway {
    /// No connection took the request: the connect failed, or the
    /// connection closed before anything of the request was written.
    ConnectFailed,
    /// The endpoint's proxy found its application gone.
    ApplicationGone,
    /// The endpoint's HTTP/2 server refused the stream (RST_STREAM
    /// REFUSED_STREAM, or left out by GOAWAY).
    StreamRefused,
}

impl EncodeLabelValue for TurnedAway {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            TurnedAway::ConnectFailed => "connect_failed",
            TurnedAway::ApplicationGone => "application_gone",
            TurnedAway::StreamRefused => "stream_refused",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TurnedAwayLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    reason: TurnedAway,
}

/// What became of a retry a route's policy wanted (`strait_retries`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The request was sent again.
    Retried,
    /// The retry budget had none left: the answer went to the client.
    BudgetExhausted,
    /// The request was retried as often as the policy allows.
    LimitReached,
    /// The request's body was not kept (too large, or still streaming).
    NotReplayable,
}

impl EncodeLabelValue for RetryOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            RetryOutcome::Retried => "retried",
            RetryOutcome::BudgetExhausted => "budget_exhausted",
            RetryOutcome::LimitReached => "limit_reached",
            RetryOutcome::NotReplayable => "not_replayable",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    dst_namespace: String,
    dst_service: String,
    route_kind: String,
    route_name: String,
    outcome: RetryOutcome,
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// The request metrics, by route: `strait_requests`, `strait_responses`,
/// `strait_response_latency_seconds` and `strait_requests_turned_away`.
#[derive(Clone)]
pub struct HttpMetrics {
    /// Off (`STRAIT_METRICS=off`, to measure what metrics cost), routes
    /// record nothing.
    recording: bool,
    requests: Family<RouteLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<RouteLabels, Histogram, LatencyHistogram>,
    turned_away: Family<TurnedAwayLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

impl HttpMetrics {
    /// Registers the request metrics in `registry` (the root, `strait_`); with
    /// `recording` false (`STRAIT_METRICS=off`) routes record nothing.
    pub fn register(registry: &mut Registry, recording: bool) -> Self {
        let metrics = HttpMetrics {
            recording,
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(LatencyHistogram),
            turned_away: Family::default(),
            retries: Family::default(),
        };
        registry.register(
            "requests",
            "HTTP requests and gRPC calls, per route",
            metrics.requests.clone(),
        );
        registry.register(
            "responses",
            "Completed responses by HTTP status, gRPC status and classification",
            metrics.responses.clone(),
        );
        registry.register_with_unit(
            "response_latency",
            "Time from request to the end of the response",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        registry.register(
            "requests_turned_away",
            "Requests an endpoint did not take before its application saw them, by reason; \
             each goes to another endpoint when one is left",
            metrics.turned_away.clone(),
        );
        registry.register(
            "retries",
            "Answers a route's retry policy wanted tried again, by outcome: retried, or not \
             (budget_exhausted, limit_reached, not_replayable)",
            metrics.retries.clone(),
        );
        metrics
    }

    /// The handles of one route, to keep with it.
    pub fn route(&self, labels: RouteLabels) -> RouteMetrics {
        RouteMetrics(Arc::new(RouteInner {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            responses: Mutex::new(Vec::new()),
            family: self.responses.clone(),
            turned_away: self.turned_away.clone(),
            labels,
            recording: self.recording,
            http: self.clone(),
        }))
    }
}

/// An HTTP status and, for gRPC, the call's status.
type StatusKey = (u16, Option<u32>);

struct RouteInner {
    requests: Counter,
    latency: Histogram,
    /// Response counters already looked up, by (status, gRPC status).
    responses: Mutex<Vec<(StatusKey, Counter)>>,
    family: Family<ResponseLabels, Counter>,
    turned_away: Family<TurnedAwayLabels, Counter>,
    labels: RouteLabels,
    recording: bool,
    /// For the same labels with a route's added ([`RouteMetrics::routed`]).
    http: HttpMetrics,
}

/// One route's metric handles.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteInner>);

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RouteMetrics").field(&self.0.labels).finish()
    }
}

impl RouteMetrics {
    /// The handles for these labels with a Gateway API route's kind and
    /// name (`route_kind`, `route_name`) added.
    pub fn routed(&self, kind: &str, name: &str) -> RouteMetrics {
        let mut labels = self.0.labels.clone();
        labels.route_kind = kind.to_string();
        labels.route_name = name.to_string();
        self.0.http.route(labels)
    }

    /// Counts a retry the route `kind`/`name` wanted, by what became of it
    /// (`strait_retries`).
    pub fn retry(&self, kind: &str, name: &str, outcome: RetryOutcome) {
        if !self.0.recording {
            return;
        }
        let labels = RetryLabels {
            dst_namespace: self.0.labels.dst_namespace.clone(),
            dst_service: self.0.labels.dst_service.clone(),
            route_kind: kind.to_string(),
            route_name: name.to_string(),
            outcome,
        };
        self.0.http.retries.get_or_create(&labels).inc();
    }

    /// Counts one request on this route (`strait_requests`).
    pub fn request(&self) {
        if self.0.recording {
            self.0.requests.inc();
        }
    }

    /// Records a request this route's endpoint did not take (rare: the
    /// series is looked up each time).
    pub fn turned_away(&self, reason: TurnedAway) {
        if self.0.recording {
            let labels = TurnedAwayLabels {
                route: self.0.labels.clone(),
                reason,
            };
            self.0.turned_away.get_or_create(&labels).inc();
        }
    }

    /// Records a finished response. `grpc_status` is the call's status for
    /// gRPC (from the trailers, or the headers of a trailers-only response).
    pub fn response(&self, status: u16, grpc_status: Option<u32>, elapsed: Duration) {
        if !self.0.recording {
            return;
        }
        self.0.latency.observe(elapsed.as_secs_f64());
        let key = (status, grpc_status);
        let mut cached = self.0.responses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = cached.iter().find(|(k, _)| *k == key) {
            counter.inc();
            return;
        }
        let success = match grpc_status {
            Some(code) => code == 0,
            None => status < 500,
        };
        let labels = ResponseLabels {
            route: self.0.labels.clone(),
            status_code: status,
            grpc_status: grpc_status.map(|c| c.to_string()).unwrap_or_default(),
            classification: if success { "success" } else { "failure" },
        };
        let counter = self.0.family.get_or_create(&labels).clone();
        counter.inc();
        cached.push((key, counter));
    }
}
