//! Per-request balancing over a Service port's endpoints: power of two
//! choices over a peak-EWMA load estimate (latency × in-flight requests).
//!
//! This is done here rather than with tower's `Balance` + `Buffer`, because
//! the proxy needs things that stack does not give per request: a bounded
//! wait (then 503) when a Service has no ready endpoint, retrying a request
//! on another endpoint when its connection failed before anything was sent,
//! and a noise-tolerant comparison of loads (see `load`).

pub mod load;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};
use strait_contract::Chain;

use futures::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use load::{CLEARLY_CHEAPER, InFlight, PeakEwma, Recent};
use smallvec::SmallVec;
use tokio::sync::watch;

use crate::discovery::{self, EndpointSet, ServiceRef};
use crate::endpoint::replay::{self, Replayable};
use crate::endpoint::{Connector, Endpoint, SendError, StreamSlot};
use crate::metrics::discovery::EndpointStateLabels;
use crate::metrics::{DiscoveryMetrics, HttpMetrics, RouteLabels, RouteMetrics, TcpLabels, TurnedAway};
use crate::retry::Policy;
use crate::routes::RouteName;
use crate::transport::ConnectError;
use crate::upstream::Address;
use crate::wire::Body;

/// An endpoint's latency until measured: about a hop inside a cluster, so a
/// new pod competes at once; its first response replaces the guess, and the
/// in-flight count keeps a burst from landing on it alone.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How quickly the latency estimate forgets a peak. Short enough that one
/// slow response (a pause, a cold cache) costs an endpoint its share only
/// briefly; long enough that a consistently slow endpoint stays avoided.
const DECAY: Duration = Duration::from_millis(1000);
/// Attempts for a request no application saw (connections refused, an
/// application not listening yet, or a stream its HTTP/2 server turned
/// away), all within the bounded wait. An endpoint
/// that refused is left out for a while, so when every endpoint refuses, as
/// when the applications of Ready pods are still binding (a readiness probe
/// that does not test the application, or none), the request waits for one
/// to take it rather than failing at once.
const DISPATCH: Policy = Policy::Immediate(8);
/// Sends on one endpoint: a connection found closed before the request was
/// written, or a reused idle HTTP/1 connection the server closed as the
/// request arrived, gets one fresh try.
const SEND: Policy = Policy::Immediate(2);

/// Why a request reached no application, or failed on its way back.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No endpoint of the Service was ready within the wait.
    #[error("no ready endpoint for {target} after waiting {wait:?}")]
    NoEndpoints {
        /// The Service port, as `namespace/name:port`.
        target: String,
        /// How long the request waited (`STRAIT_NO_ENDPOINT_WAIT`).
        wait: Duration,
    },
    /// Every endpoint tried (or the one fixed address) refused the
    /// connection; nothing was sent. `source` is the last refusal.
    #[error("no endpoint of {target} could be reached")]
    Unreachable {
        /// The Service port (`namespace/name:port`), or the fixed address
        /// (`ip:port`).
        target: String,
        /// Why the last connection attempt failed.
        #[source]
        source: ConnectError,
    },
    /// The endpoint failed the request, or its HTTP/2 server turned the
    /// request's stream away ([`DispatchError::is_unprocessed`] says which).
    #[error("upstream {endpoint} failed")]
    Upstream {
        /// The endpoint the request was sent to.
        endpoint: SocketAddr,
        /// The HTTP error on its connection.
        #[source]
        source: hyper::Error,
    },
}

impl DispatchError {
    /// Whether the request reached no application: nothing of it was sent
    /// anywhere, or the endpoint's HTTP/2 server turned its stream away
    /// unprocessed (a RST_STREAM with REFUSED_STREAM, or a GOAWAY whose last
    /// stream ID leaves it out; RFC 9113, 8.7), as an application does
    /// while it shuts down.
    pub fn is_unprocessed(&self) -> bool {
        match self {
            DispatchError::NoEndpoints { .. } | DispatchError::Unreachable { .. } => true,
            DispatchError::Upstream { source, .. } => replay::refused_unprocessed(source),
        }
    }
}

/// A response with the endpoint's in-flight count held until its body ends.
pub struct Tracked {
    /// The endpoint's response; its body is still to be read.
    pub response: Response<Incoming>,
    /// The request's place in the endpoint's in-flight count; dropping it ends
    /// the request and records its response time.
    pub load: InFlight,
    /// The stream's room on its HTTP/2 connection, held until the body ends.
    pub stream: Option<StreamSlot>,
}

/// Where a connection goes, and its requests: the one target type of the
/// proxy's pipeline, opaque and HTTP alike.
#[derive(Clone)]
pub enum Target {
    /// A Service port: each connection, and each request, to the endpoint
    /// the balancer picks.
    Balanced(Arc<Balancer>),
    /// One address: the original destination, or the local application.
    Fixed(Arc<Backend>),
}

impl Target {
    /// The metrics of requests that reached no endpoint: the Service
    /// port's (with no `dst_pod`), or the one address's own.
    pub fn unrouted(&self) -> RouteMetrics {
        match self {
            Target::Balanced(balancer) => balancer
                .unrouted
                .get_or_init(|| balancer.http_metrics.route(balancer.route.clone()))
                .clone(),
            Target::Fixed(backend) => backend.metrics().clone(),
        }
    }

    /// The authority for an HTTP/2 request that names none:
    /// `name.namespace.svc:port` for a Service, else the address.
    pub fn authority(&self) -> String {
        match self {
            Target::Balanced(balancer) => format!(
                "{}.{}.svc:{}",
                balancer.service.name, balancer.service.namespace, balancer.port
            ),
            Target::Fixed(backend) => backend.endpoint.addr.to_string(),
        }
    }

    /// Sends a request: see [`Balancer::dispatch`] and [`Backend::dispatch`].
    pub fn dispatch(&self, request: Request<Body>) -> impl Future<Output = Dispatched> + '_ {
        self.dispatch_avoiding(request, None)
    }

    /// Sends a request, to another endpoint than `avoid` where the
    /// balancer has one (a retry's).
    ///
    /// This and [`Target::dispatch`] return the balancer's or backend's
    /// own future rather than one that awaits it: each layer of `async fn`
    /// would hold the whole future below it (about 2 KiB) and copy it once
    /// per call.
    pub fn dispatch_avoiding(
        &self,
        request: Request<Body>,
        avoid: Option<SocketAddr>,
    ) -> impl Future<Output = Dispatched> + '_ {
        match self {
            Target::Balanced(balancer) => Either::Left(balancer.dispatch(request, avoid)),
            Target::Fixed(backend) => Either::Right(backend.dispatch(request)),
        }
    }
}

/// What sending a request through a [`Target`] gives: the backend that
/// answered and its response, or why none did.
pub type Dispatched = Result<(Arc<Backend>, Tracked), DispatchError>;

/// One endpoint, kept across endpoint-set updates so its connections, load
/// estimate and metric handles survive them.
pub struct Backend {
    /// The endpoint's address and its pooled connections.
    pub endpoint: Arc<Endpoint>,
    /// The endpoint's pod, for metric labels.
    pub pod: String,
    load: Arc<PeakEwma>,
    recent: Recent,
    metrics: OnceLock<RouteMetrics>,
    /// Where `metrics` come from when first asked for, for a backend that
    /// may never see a request (a connection that turns out opaque).
    route: Option<(HttpMetrics, RouteLabels)>,
    /// The metrics of requests Gateway API routes sent here, by route
    /// (bounded by the routes that name this backend's Service).
    routed: Mutex<Vec<(RouteName, RouteMetrics)>>,
    /// Consecutive failures, and the ejection they lead to.
    pub accrual: Accrual,
}

impl Backend {
    /// A backend whose request metrics exist from the start.
    fn new(endpoint: Arc<Endpoint>, pod: String, metrics: RouteMetrics, recent: f64) -> Self {
        let backend = Self::with_route(endpoint, pod, None, recent);
        let _ = backend.metrics.set(metrics);
        backend
    }

    /// The backend of one address (the original destination, or the local
    /// application), its requests labelled `route`; its request metrics
    /// are looked up on first use (a connection may turn out opaque).
    pub fn fixed(endpoint: Arc<Endpoint>, pod: String, http: HttpMetrics, route: RouteLabels) -> Self {
        Self::with_route(endpoint, pod, Some((http, route)), 0.0)
    }

    /// A backend that starts as if it had been given `recent` requests lately.
    fn with_route(
        endpoint: Arc<Endpoint>,
        pod: String,
        route: Option<(HttpMetrics, RouteLabels)>,
        recent: f64,
    ) -> Self {
        Backend {
            endpoint,
            pod,
            load: PeakEwma::new(DEFAULT_RTT, DECAY),
            recent: Recent::new(recent, DECAY),
            metrics: OnceLock::new(),
            route,
            routed: Mutex::new(Vec::new()),
            accrual: Accrual::default(),
        }
    }

    /// This endpoint's request metrics.
    pub fn metrics(&self) -> &RouteMetrics {
        self.metrics.get_or_init(|| {
            let (http, labels) = self.route.as_ref().expect("a backend has metrics or their labels");
            http.route(labels.clone())
        })
    }

    /// This endpoint's request metrics for requests `route` sent here.
    pub fn routed_metrics(&self, route: &RouteName) -> RouteMetrics {
        let mut routed = self.routed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, metrics)) = routed.iter().find(|(name, _)| name == route) {
            return metrics.clone();
        }
        let metrics = self.metrics().routed(&route.kind, &route.name);
        routed.push((route.clone(), metrics.clone()));
        metrics
    }

    fn cost(&self) -> f64 {
        self.load.cost()
    }

    /// Sends a request, counting it in this endpoint's load from when it is
    /// written on a connection. A connection found closed before the request
    /// was written gets one fresh try; so does an idempotent request that
    /// died on a reused idle HTTP/1 connection before any answer came back
    /// (the server closed that connection as the request arrived).
    ///
    /// The future holds the request once: an `async fn` would keep its
    /// argument and a copy (rust-lang/rust#62958), 240 bytes more in every
    /// future awaiting this one.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its request twice (rust-lang/rust#62958)"
    )]
    pub fn send(&self, mut request: Request<Body>) -> impl Future<Output = Result<Tracked, SendError>> + '_ {
        async move {
            let mut fresh = false;
            for attempt in SEND.attempts() {
                let connection = match self.endpoint.connection(request.version(), fresh).await {
                    Ok(connection) => connection,
                    Err(error) => {
                        self.load.cancel_probe();
                        return Err(SendError::NotSent {
                            request: Box::new(request),
                            error,
                        });
                    }
                };
                let mut replayable = None;
                if attempt == 0 && connection.is_reused_h1() && request.method().is_idempotent() {
                    (request, replayable) = Replayable::record(request);
                }
                let mut load = self.load.start();
                match connection.send(request, self.endpoint.addr).await {
                    Ok((response, stream)) => {
                        load.answered();
                        if let Some(replayable) = replayable {
                            replayable.discard();
                        }
                        return Ok(Tracked { response, load, stream });
                    }
                    Err(SendError::NotSent { request: unsent, .. }) if attempt == 0 => {
                        self.endpoint.forget_closed_h2().await;
                        request = *unsent;
                    }
                    Err(SendError::IdleClosed(error)) => match replayable.and_then(Replayable::into_request) {
                        Some(again) => {
                            tracing::debug!(endpoint = %self.endpoint.addr, error = %Chain(&error), "sending again on a fresh connection");
                            request = again;
                            fresh = true;
                        }
                        None => return Err(SendError::Failed(error)),
                    },
                    Err(error) => return Err(error),
                }
            }
            unreachable!("the loop returns on its last attempt")
        }
    }
}

impl Backend {
    /// Sends a request to this one endpoint (a fixed address: the original
    /// destination, or the local application), with [`Backend::send`]'s
    /// fresh tries; errors as [`Balancer::dispatch`] gives them.
    pub async fn dispatch(self: &Arc<Self>, request: Request<Body>) -> Dispatched {
        match self.send(request).await {
            Ok(tracked) => Ok((self.clone(), tracked)),
            Err(SendError::NotSent { error, .. }) => Err(DispatchError::Unreachable {
                target: self.endpoint.addr.to_string(),
                source: error,
            }),
            Err(SendError::Failed(source) | SendError::IdleClosed(source)) => Err(upstream_failed(self, source)),
        }
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), v| (sum + v, count + 1));
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// The balancer's view of one endpoint set.
struct Snapshot {
    set: Arc<EndpointSet>,
    usable: Vec<Arc<Backend>>,
}

/// Balances the requests (and opaque connections) for one Service port over
/// its endpoints, picking by power of two choices on their peak-EWMA load.
pub struct Balancer {
    /// The Service whose endpoints this balances over.
    pub service: ServiceRef,
    /// The Service port the client addressed.
    pub port: u16,
    endpoints: watch::Receiver<Arc<EndpointSet>>,
    snapshot: RwLock<Snapshot>,
    backends: Mutex<HashMap<Address, Arc<Backend>>>,
    connector: Connector,
    route: RouteLabels,
    /// Requests that reached no endpoint (no `dst_pod`), on first use.
    unrouted: OnceLock<RouteMetrics>,
    http_metrics: HttpMetrics,
    discovery_metrics: DiscoveryMetrics,
    /// How long a request waits for a ready endpoint before 503.
    wait: Duration,
}

/// What a balancer needs besides its Service port.
pub struct BalancerContext {
    /// Opens connections to the endpoints.
    pub connector: Connector,
    /// Where each endpoint's request metrics are registered.
    pub http_metrics: HttpMetrics,
    /// Where the counts of the Service's endpoints by state are set.
    pub discovery_metrics: DiscoveryMetrics,
    /// How long a request waits for a ready endpoint before it fails with 503.
    pub wait: Duration,
}

impl Balancer {
    /// The balancer of one Service port, following its endpoints.
    pub fn new(target: &discovery::ServicePort, context: BalancerContext) -> Self {
        let route = RouteLabels::from(&TcpLabels::outbound(&target.service.namespace, &target.service.name));
        let BalancerContext {
            connector,
            http_metrics,
            discovery_metrics,
            wait,
        } = context;
        Balancer {
            service: target.service.clone(),
            port: target.port,
            endpoints: target.endpoints.clone(),
            snapshot: RwLock::new(Snapshot {
                set: Arc::new(EndpointSet::default()),
                usable: Vec::new(),
            }),
            backends: Mutex::new(HashMap::new()),
            connector,
            unrouted: OnceLock::new(),
            route,
            http_metrics,
            discovery_metrics,
            wait,
        }
    }

    /// Where to connect for an endpoint: its address and, if its pod is
    /// meshed, the identity to expect there.
    fn target(endpoint: &discovery::Endpoint) -> Address {
        Address {
            addr: endpoint.addr,
            peer: endpoint.identity.clone(),
        }
    }

    /// The Service port as `namespace/name:port`, for logs, errors and `/endpoints`.
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.service.namespace, self.service.name, self.port)
    }

    /// Brings the snapshot up to date with discovery and with which pods
    /// are meshed, reusing backends whose target is unchanged.
    fn refresh(&self) {
        let current = self.endpoints.borrow().clone();
        {
            let snapshot = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
            if Arc::ptr_eq(&current, &snapshot.set) {
                return;
            }
        }
        let mut backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        let targets: HashMap<SocketAddr, Address> =
            current.endpoints.iter().map(|e| (e.addr, Self::target(e))).collect();
        // Endpoints not ready now keep their connections for when they are.
        backends.retain(|target, _| targets.get(&target.addr) == Some(target));
        let level = mean(backends.values().map(|b| b.recent.get()));
        let usable: Vec<Arc<Backend>> = current
            .usable()
            .into_iter()
            .filter_map(|endpoint| {
                let target = targets.get(&endpoint.addr)?;
                let backend = backends
                    .entry(target.clone())
                    .or_insert_with(|| self.backend(endpoint, target.clone(), level))
                    .clone();
                Some(backend)
            })
            .collect();
        self.record_states(&current);
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Snapshot { set: current, usable };
    }

    fn backend(&self, endpoint: &discovery::Endpoint, target: Address, recent: f64) -> Arc<Backend> {
        let connection = Arc::new(Endpoint::new(target, self.connector.clone()));
        let mut labels = connection.labelled(self.route.clone());
        labels.dst_pod = endpoint.target.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        Arc::new(Backend::new(
            connection,
            labels.dst_pod.clone(),
            self.http_metrics.route(labels),
            recent,
        ))
    }

    fn record_states(&self, set: &EndpointSet) {
        let count =
            |keep: &dyn Fn(&discovery::Endpoint) -> bool| set.endpoints.iter().filter(|e| keep(e)).count() as i64;
        for (state, n) in [
            ("ready", count(&|e| e.ready)),
            ("serving", count(&|e| !e.ready && e.serving)),
            ("unready", count(&|e| !e.ready && !e.serving)),
        ] {
            let labels = EndpointStateLabels {
                dst_namespace: self.service.namespace.clone(),
                dst_service: self.service.name.clone(),
                state,
            };
            self.discovery_metrics.endpoints.get_or_create(&labels).set(n);
        }
    }

    /// Whether more than one endpoint could take a request, as of the last
    /// pick (which brought the endpoints up to date).
    fn has_alternatives(&self) -> bool {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .usable
            .len()
            > 1
    }

    /// Power of two choices: two distinct random usable endpoints not in
    /// connect back-off, not ejected for failing (unless all are: then the
    /// balancer fails open, and counts it), and not `avoid` unless it is the
    /// only one; the second wins only if it is clearly less loaded.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<Arc<Backend>> {
        self.refresh();
        let snapshot = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        let live = |b: &&Arc<Backend>| !b.endpoint.in_backoff();
        // On the stack up to 16: a pick is on every request, and each
        // backend's state is read once (other threads may change it).
        let mut candidates: SmallVec<[&Arc<Backend>; 16]> = snapshot
            .usable
            .iter()
            .filter(|b| live(b) && !b.accrual.is_ejected())
            .collect();
        if candidates.is_empty() {
            candidates = snapshot.usable.iter().filter(live).collect();
            if !candidates.is_empty() {
                self.discovery_metrics
                    .failed_open(&self.service.namespace, &self.service.name);
            }
        }
        if candidates.len() > 1
            && let Some(avoid) = avoid
        {
            candidates.retain(|b| b.endpoint.addr != avoid);
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                let (cost_a, cost_b) = (a.cost(), b.cost());
                let (cheap, costly) = if cost_a <= cost_b { (a, b) } else { (b, a) };
                let chosen = if cost_a.max(cost_b) > cost_a.min(cost_b) * CLEARLY_CHEAPER {
                    // The costlier one now and then gets a probe, whose
                    // answer corrects an estimate that keeps it out.
                    if costly.load.passed_over(cost_a.min(cost_b)) {
                        costly
                    } else {
                        cheap
                    }
                } else if a.recent.get() <= b.recent.get() {
                    a
                } else {
                    b
                };
                Some(chosen.clone())
            }
        }
        .inspect(|chosen| chosen.recent.add())
    }

    /// Counts a request's outcome in the endpoint's failure accrual (see
    /// [`Accrual`]), and an ejection in `strait_balancer_ejections`.
    fn record_outcome(&self, backend: &Backend, failed: bool) {
        if backend.accrual.record(failed) {
            tracing::info!(service = %self.name(), endpoint = %backend.endpoint.addr, "endpoint ejected after consecutive failures");
            self.discovery_metrics
                .ejected(&self.service.namespace, &self.service.name, &backend.pod);
        }
    }

    /// Whether this balancer is the one for `target`: the same Service port
    /// and the same endpoint stream (discovery hands out a new stream when
    /// the address came to mean another Service, or was forgotten and
    /// followed again).
    pub fn follows(&self, target: &discovery::ServicePort) -> bool {
        self.service == target.service && self.port == target.port && self.endpoints.same_channel(&target.endpoints)
    }

    /// Whether discovery still updates this balancer's endpoints (false once
    /// it has forgotten the destination).
    pub fn is_followed(&self) -> bool {
        self.endpoints.has_changed().is_ok()
    }

    /// The balancer as the admin server's `/endpoints` shows it: the
    /// destination (`namespace/service:port`) and, per endpoint discovery
    /// knows, its state (`ready`, `backoff` after a failed connect,
    /// `serving` while terminating, `unready`), its load estimate (latency
    /// in milliseconds, and the cost the balancer compares: latency ×
    /// (in-flight + 1), in nanoseconds), requests in flight, requests given
    /// it lately (a count decaying over about a second), and the streams on
    /// each of its HTTP/2 connections.
    pub fn view(&self) -> serde_json::Value {
        self.refresh();
        let set = self.snapshot.read().unwrap_or_else(PoisonError::into_inner).set.clone();
        let backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        let endpoints: Vec<serde_json::Value> = set
            .endpoints
            .iter()
            .map(|endpoint| {
                let backend = backends.iter().find(|(t, _)| t.addr == endpoint.addr).map(|(_, b)| b);
                let state = match (endpoint.ready, endpoint.serving, backend) {
                    (true, _, Some(b)) if b.endpoint.in_backoff() => "backoff",
                    (true, _, _) => "ready",
                    (false, true, _) => "serving",
                    (false, false, _) => "unready",
                };
                let mut view = serde_json::json!({
                    "address": endpoint.addr.to_string(),
                    "pod": endpoint.target.as_ref().map(|t| t.name.clone()),
                    "state": state,
                });
                if let Some(backend) = backend {
                    let load = backend.load.view();
                    view["meshed"] = backend.endpoint.is_meshed().into();
                    view["latency_ms"] = (load.latency_ns / 1e6).into();
                    view["cost_ns"] = load.cost_ns.into();
                    view["in_flight"] = load.in_flight.into();
                    view["recent"] = backend.recent.get().into();
                    view["h2_connection_streams"] = backend.endpoint.h2_streams().into();
                }
                view
            })
            .collect();
        serde_json::json!({"destination": self.name(), "endpoints": endpoints})
    }

    /// Waits (up to the bounded wait) for an endpoint to pick (see
    /// [`Balancer::pick`] for `avoid`).
    pub async fn pick_or_wait(&self, deadline: Instant, avoid: Option<SocketAddr>) -> Option<Arc<Backend>> {
        let mut changes = self.endpoints.clone();
        loop {
            if let Some(backend) = self.pick(avoid) {
                return Some(backend);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // Wake on a discovery change, or soon, for endpoints leaving back-off.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), changes.changed()).await;
        }
    }

    /// Sends a request to the chosen endpoint; a request that could not be
    /// sent, or that the endpoint turned away before its application saw
    /// it, is tried on another one. `avoid`: see [`Balancer::pick`].
    ///
    /// The future holds the request once, as [`Backend::send`]'s.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its request twice (rust-lang/rust#62958)"
    )]
    pub fn dispatch(
        &self,
        mut request: Request<Body>,
        avoid: Option<SocketAddr>,
    ) -> impl Future<Output = Dispatched> + '_ {
        async move {
            let deadline = Instant::now() + self.wait;
            let mut last_error = None;
            let mut turned_away = None;
            let mut replayable = None;
            for attempt in DISPATCH.attempts() {
                let Some(backend) = self.pick_or_wait(deadline, avoid).await else {
                    break;
                };
                // A replay needs another endpoint to go to; with one, nothing is kept.
                if attempt == 0 && self.has_alternatives() {
                    (request, replayable) = Replayable::record(request);
                }
                let refusal = match backend.send(request).await {
                    Ok(mut tracked) => {
                        if replay::take_unprocessed(&mut tracked.response) {
                            Refusal::Answered(Box::new(tracked))
                        } else {
                            if let Some(replayable) = replayable {
                                replayable.discard();
                            }
                            self.record_outcome(&backend, is_failure(&tracked.response));
                            return Ok((backend, tracked));
                        }
                    }
                    Err(SendError::NotSent { request: unsent, error }) => {
                        tracing::debug!(endpoint = %backend.endpoint.addr, error = %Chain(&error), "connect failed; trying another endpoint");
                        backend.metrics().turned_away(TurnedAway::ConnectFailed);
                        self.record_outcome(&backend, true);
                        request = *unsent;
                        last_error = Some(error);
                        continue;
                    }
                    Err(SendError::Failed(source)) if replay::refused_unprocessed(&source) => Refusal::Refused(source),
                    Err(SendError::Failed(source) | SendError::IdleClosed(source)) => {
                        self.record_outcome(&backend, true);
                        return Err(upstream_failed(&backend, source));
                    }
                };
                backend.metrics().turned_away(refusal.reason());
                let Some(again) = replayable.take().and_then(Replayable::into_request) else {
                    return refusal.into_result(backend);
                };
                tracing::debug!(endpoint = %backend.endpoint.addr, "the request did not reach the application; trying another endpoint");
                backend.endpoint.mark_failed();
                turned_away = Some((backend, refusal));
                (request, replayable) = Replayable::record(again);
            }
            if let Some((backend, refusal)) = turned_away {
                return refusal.into_result(backend);
            }
            Err(match last_error {
                Some(source) => DispatchError::Unreachable {
                    target: self.name(),
                    source,
                },
                None => DispatchError::NoEndpoints {
                    target: self.name(),
                    wait: self.wait,
                },
            })
        }
    }
}

/// An endpoint's word that a request never reached its application.
enum Refusal {
    /// Its proxy answered so (the application refused the connection).
    Answered(Box<Tracked>),
    /// Its HTTP/2 server refused the stream (RST_STREAM or GOAWAY).
    Refused(hyper::Error),
}

impl Refusal {
    fn reason(&self) -> TurnedAway {
        match self {
            Refusal::Answered(_) => TurnedAway::ApplicationGone,
            Refusal::Refused(_) => TurnedAway::StreamRefused,
        }
    }

    /// What the client gets when the request goes nowhere else.
    fn into_result(self, backend: Arc<Backend>) -> Dispatched {
        match self {
            Refusal::Answered(tracked) => Ok((backend, *tracked)),
            Refusal::Refused(source) => Err(upstream_failed(&backend, source)),
        }
    }
}

/// Failure accrual: an endpoint that fails [`Accrual::FAILURES`] requests in
/// a row (a 5xx, gRPC UNAVAILABLE, a failed connect) is ejected, taken out
/// of the balancer for a back-off that grows with each ejection in a row (1 s
/// doubling to 60 s, jittered). When it ends the endpoint gets requests
/// again, as probes: one more failure ejects it again at once, a success
/// ends the accrual.
pub struct Accrual {
    state: Mutex<AccrualState>,
    /// The state is the default (no failure counted, not ejected): the
    /// per-request checks of a healthy endpoint take no lock. Written with
    /// the lock held.
    clean: AtomicBool,
}

impl Default for Accrual {
    fn default() -> Self {
        Accrual {
            state: Mutex::default(),
            clean: AtomicBool::new(true),
        }
    }
}

#[derive(Default)]
struct AccrualState {
    consecutive: u32,
    ejected_until: Option<Instant>,
    /// The back-off of ejections in a row; `None` after a success.
    delays: Option<Box<dyn Iterator<Item = Duration> + Send>>,
}

impl std::fmt::Debug for Accrual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accrual")
    }
}

/// The back-off of an endpoint's ejections in a row.
const EJECTION: Policy = Policy::Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

impl Accrual {
    /// Failures in a row that eject an endpoint.
    pub const FAILURES: u32 = 5;

    fn lock(&self) -> std::sync::MutexGuard<'_, AccrualState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an outcome; true when it ejects the endpoint. Outcomes that
    /// arrive while it is ejected (of requests sent before) change nothing.
    pub fn record(&self, failed: bool) -> bool {
        if !failed && self.clean.load(Ordering::Relaxed) {
            return false;
        }
        let mut state = self.lock();
        let ejected = state.ejected_until.is_some_and(|until| Instant::now() < until);
        if ejected {
            return false;
        }
        if !failed {
            *state = AccrualState::default();
            self.clean.store(true, Ordering::Relaxed);
            return false;
        }
        self.clean.store(false, Ordering::Relaxed);
        state.consecutive = state.consecutive.saturating_add(1);
        if state.consecutive < Self::FAILURES {
            return false;
        }
        let delay = state
            .delays
            .get_or_insert_with(|| EJECTION.delays())
            .next()
            .unwrap_or(Duration::from_secs(60));
        state.ejected_until = Some(Instant::now() + delay);
        true
    }

    /// Whether the endpoint is out of the balancer now.
    pub fn is_ejected(&self) -> bool {
        !self.clean.load(Ordering::Relaxed) && self.lock().ejected_until.is_some_and(|until| Instant::now() < until)
    }
}

/// Whether an answer counts as the endpoint failing, for failure accrual:
/// a 5xx, or gRPC UNAVAILABLE with the response's headers (a trailers-only
/// answer). Other gRPC errors are the application's answers.
fn is_failure<B>(response: &Response<B>) -> bool {
    response.status().is_server_error() || response.headers().get("grpc-status").is_some_and(|v| v == "14")
}

fn upstream_failed(backend: &Backend, source: hyper::Error) -> DispatchError {
    DispatchError::Upstream {
        endpoint: backend.endpoint.addr,
        source,
    }
}

#[cfg(test)]
mod tests;
