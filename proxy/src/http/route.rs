//! One request's way through the proxy: hop-by-hop headers out, the target
//! picked (a balanced Service port or one fixed address), errors shaped for
//! the protocol, and the response observed as it streams back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::future::BoxFuture;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use strait_contract::Chain;

use super::body::{Completion, Observed, ResponseBody, grpc_status};
use super::errors::{ProxyError, respond};
use super::headers::{field_list_size, strip_hop_by_hop, wants_upgrade};
use super::upgrade::relay_upgraded;
use super::{Body, is_grpc};
use crate::balance::{Backend, Target, Tracked};
use crate::config::Limits;
use crate::endpoint::replay;
use crate::endpoint::replay::Replayable;
use crate::endpoint::switches_protocols;
use crate::metrics::{Direction, RetryOutcome, RouteMetrics};
use crate::routes::{RouteError, RouteName, Rule, Table, set_grpc_timeout};
use tokio::sync::watch;

/// The request header that carries a verified client identity to the
/// application; from anywhere else it is removed.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("strait-client-id");

/// Sends the requests of one client connection to its target; the
/// connection's HTTP server calls [`Router::handle`] for each.
#[derive(Clone)]
pub struct Router {
    /// Where every request of the connection goes.
    pub target: Target,
    /// Counts requests that reached no endpoint (their `dst_pod` is empty).
    pub unrouted: RouteMetrics,
    /// The verified identity of the client, for inbound requests over mTLS.
    pub client_id: Option<HeaderValue>,
    /// Inbound, the router sets `strait-client-id` and tells the client's
    /// proxy when a request never reached the application.
    pub direction: Direction,
    /// The idle timeout of upgraded connections, and the largest header
    /// list a request may have (see `header_list_size`).
    pub limits: Limits,
    /// The Gateway API routes bound to the target's Service port (outbound
    /// to a Service port only); while it has rules, they decide where each
    /// request goes instead of `target`.
    pub routes: Option<Routes>,
}

/// A request's header list size as HTTP/2 counts it (RFC 9113 §6.5.2): each
/// field's name and value plus 32 bytes, pseudo-headers included.
pub fn header_list_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", Some(request.method().as_str())),
        (":scheme", uri.scheme_str()),
        (":authority", uri.authority().map(|a| a.as_str())),
        (":path", uri.path_and_query().map(|p| p.as_str())),
    ];
    let pseudo: usize = pseudo
        .iter()
        .filter_map(|(name, value)| value.map(|value| name.len() + value.len() + 32))
        .sum();
    field_list_size(request.headers()) + pseudo
}

/// A response's header list size, counted as for requests (`:status` is
/// 3 bytes of value).
pub fn response_header_list_size<B>(response: &Response<B>) -> usize {
    field_list_size(response.headers()) + ":status".len() + 3 + 32
}

/// Gives the request the URI form the upstream hop expects. HTTP/2 needs a
/// scheme and authority: an HTTP/2 request has them already, else they come
/// from the Host header or, without one, `fallback_authority` (called only
/// then). HTTP/1 goes on in the form the client sent (origin-form,
/// absolute-form to a forward proxy, authority-form for CONNECT: RFC 9112
/// §3.2), with a Host header.
fn prepare_uri(request: &mut Request<Incoming>, fallback_authority: impl FnOnce() -> String) -> Result<(), ProxyError> {
    let uri = request.uri();
    if request.version() == Version::HTTP_2 && uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(());
    }
    let parts = uri.clone().into_parts();
    if request.version() != Version::HTTP_2 {
        if let (Some(authority), false) = (&parts.authority, request.headers().contains_key(HOST)) {
            let host = HeaderValue::from_str(authority.as_str()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            request.headers_mut().insert(HOST, host);
        }
        return Ok(());
    }
    let path = parts
        .path_and_query
        .clone()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let authority = match parts.authority {
        Some(authority) => authority,
        None => {
            let host = match request.headers().get(HOST).and_then(|h| h.to_str().ok()) {
                Some(host) => host.to_string(),
                None => fallback_authority(),
            };
            host.parse::<Authority>()
                .map_err(|e| ProxyError::BadRequest(format!("invalid authority {host:?}: {e}")))?
        }
    };
    let scheme = parts.scheme.unwrap_or(Scheme::HTTP);
    *request.uri_mut() = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    Ok(())
}

impl Router {
    /// Sends one request to the target and returns the response, its body
    /// observed for metrics as it streams back. A request that fails in the
    /// proxy is answered by the proxy (see [`ProxyError::status`]); inbound, an
    /// answer to a request the application never saw is marked so the client's
    /// proxy may send it again.
    pub async fn handle(&self, mut request: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let grpc = is_grpc(request.headers());
        let method = request.method().clone();
        let http1 = request.version() <= Version::HTTP_11;
        let upgrade = http1 && wants_upgrade(request.headers());
        // CONNECT, like an upgrade, may turn the connection into a tunnel.
        let downstream_upgrade =
            (upgrade || (http1 && method == Method::CONNECT)).then(|| hyper::upgrade::on(&mut request));
        strip_hop_by_hop(request.headers_mut(), upgrade);
        let inbound = self.direction == Direction::Inbound;
        if inbound {
            request.headers_mut().remove(CLIENT_ID_HEADER);
            if let Some(id) = &self.client_id {
                request.headers_mut().insert(CLIENT_ID_HEADER, id.clone());
            }
        }
        let size = header_list_size(&request);
        let mut route: Option<RouteName> = None;
        let result = if size > self.limits.max_header_bytes {
            Err(ProxyError::HeadersTooLarge {
                size,
                limit: self.limits.max_header_bytes,
            })
        } else {
            match prepare_uri(&mut request, || self.target.authority()) {
                Ok(()) => {
                    let request = request.map(Body::Received);
                    match self
                        .routes
                        .as_ref()
                        .and_then(|routes| Some((routes, routes.current()?)))
                    {
                        // Boxed: routing (timeouts, retries) makes a future twice
                        // the size of a plain dispatch, which every call's
                        // future would otherwise carry and copy.
                        Some((routes, table)) => {
                            Box::pin(self.dispatch_routed(routes, &table, request, grpc, &mut route)).await
                        }
                        None => self.target.dispatch(request).await.map_err(ProxyError::from),
                    }
                }
                Err(error) => Err(error),
            }
        };
        let (backend, tracked) = match result {
            Ok(sent) => sent,
            Err(error) => {
                tracing::debug!(error = %Chain(&error), "request failed in the proxy");
                let unrouted = match &route {
                    Some(route) => self.unrouted.routed(&route.kind, &route.name),
                    None => self.unrouted.clone(),
                };
                unrouted.request();
                let mut response = respond(&error, grpc);
                if inbound && error.is_unprocessed() {
                    replay::mark_unprocessed(&mut response);
                }
                let status = if grpc { None } else { Some(response.status().as_u16()) };
                unrouted.response(
                    status.unwrap_or(200),
                    grpc.then_some(error.grpc_status()),
                    started.elapsed(),
                );
                return response.map(ResponseBody::Right);
            }
        };
        let metrics = match &route {
            Some(route) => backend.routed_metrics(route),
            None => backend.metrics().clone(),
        };
        let size = response_header_list_size(&tracked.response);
        if size > self.limits.max_header_bytes {
            let error = ProxyError::ResponseHeadersTooLarge {
                size,
                limit: self.limits.max_header_bytes,
            };
            tracing::debug!(error = %Chain(&error), "response refused");
            metrics.request();
            let response = respond(&error, grpc);
            let status = if grpc { 200 } else { response.status().as_u16() };
            metrics.response(status, grpc.then_some(error.grpc_status()), started.elapsed());
            return response.map(ResponseBody::Right);
        }
        metrics.request();
        let Tracked {
            mut response,
            load,
            stream,
        } = tracked;
        let upgraded = switches_protocols(&method, response.status());
        if let (true, Some(downstream)) = (upgraded, downstream_upgrade) {
            let upstream = hyper::upgrade::on(&mut response);
            relay_upgraded(downstream, upstream, self.limits.idle_timeout);
        }
        if upgraded && method == Method::CONNECT {
            // A tunnel has no body: a client ignores a length on a 2xx to
            // CONNECT, and a server must not send one (RFC 9110 §9.3.6).
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(response.headers_mut(), switching);
        let completion = Completion {
            metrics: metrics.clone(),
            status: response.status().as_u16(),
            grpc,
            grpc_status: grpc_status(response.headers()),
            started,
            load: Some(load),
            stream,
        };
        let limit = self.limits.max_header_bytes;
        response.map(|body| ResponseBody::Left(Observed::new(body, completion, limit)))
    }

    /// Sends a request by the Service port's routes: the first rule that
    /// matches, a backend Service of it by weight, its header changes, and
    /// its timeouts: the request timeout (or the call's `grpc-timeout`, if
    /// tighter) on the response's headers, retries included, and the try
    /// timeout on each try. An answer the rule's retry policy wants is
    /// tried again, on another endpoint where there is one, while the
    /// request's body was kept, the policy's limit is not reached and the
    /// rule's budget allows. `route` is set to the rule's route once known.
    async fn dispatch_routed(
        &self,
        routes: &Routes,
        table: &Table,
        mut request: Request<Body>,
        grpc: bool,
        route: &mut Option<RouteName>,
    ) -> Result<(Arc<Backend>, Tracked), ProxyError> {
        let rule: &Arc<Rule> = table.select(&request)?;
        *route = Some(rule.route.clone());
        rule.modify(request.headers_mut());
        let timeout = |after| RouteError::Timeout {
            route: rule.route.clone(),
            after,
        };
        let deadline = rule.deadline(request.headers(), grpc);
        let started = Instant::now();
        let tries = async {
            let Some(retry) = &rule.retry else {
                let target = routes.target(rule, rule.pick(None)?).await?;
                return Ok::<_, ProxyError>(target.dispatch(request).await?);
            };
            retry.budget.deposit();
            let (mut request, mut replayable) = Replayable::record(request);
            // The backend Service and the endpoint of the try that failed.
            let mut avoid: Option<(SocketAddr, SocketAddr)> = None;
            let mut retries = 0;
            // The answer a retry replaces: given to the client if the retry
            // cannot be sent at all.
            let mut last: Option<(SocketAddr, (Arc<Backend>, Tracked))> = None;
            loop {
                let tried = Instant::now();
                let attempt = async {
                    let backend = rule.pick(avoid.map(|(service, _)| service))?;
                    let target = routes.target(rule, backend).await?;
                    let sent = target.dispatch_avoiding(request, avoid.map(|(_, endpoint)| endpoint));
                    let answer = match rule.try_timeout {
                        Some(after) => tokio::time::timeout(after, sent).await.map_err(|_| timeout(after))??,
                        None => sent.await?,
                    };
                    Ok::<_, ProxyError>((backend, answer))
                };
                let (service, (backend, tracked)) = match (attempt.await, last.take()) {
                    (Ok(answer), _) => answer,
                    (Err(_), Some((_, answer))) => return Ok(answer),
                    (Err(error), None) => return Err(error),
                };
                if !retry.wants(&tracked.response, grpc) {
                    if let Some(replayable) = replayable {
                        replayable.discard();
                    }
                    return Ok((backend, tracked));
                }
                let outcome = |outcome| self.unrouted.retry(&rule.route.kind, &rule.route.name, outcome);
                if retries >= retry.limit {
                    outcome(RetryOutcome::LimitReached);
                    return Ok((backend, tracked));
                }
                let Some(mut again) = replayable.take().and_then(Replayable::into_request) else {
                    outcome(RetryOutcome::NotReplayable);
                    return Ok((backend, tracked));
                };
                if !retry.budget.withdraw() {
                    outcome(RetryOutcome::BudgetExhausted);
                    return Ok((backend, tracked));
                }
                outcome(RetryOutcome::Retried);
                // The try the client will not see still counts on its
                // endpoint.
                let metrics = backend.routed_metrics(&rule.route);
                metrics.request();
                let status = tracked.response.status().as_u16();
                metrics.response(
                    status,
                    grpc.then(|| grpc_status(tracked.response.headers())).flatten(),
                    tried.elapsed(),
                );
                // The server of the next try is told the time left.
                if let (true, Some(after)) = (grpc, deadline) {
                    set_grpc_timeout(again.headers_mut(), after.saturating_sub(started.elapsed()));
                }
                retries += 1;
                avoid = Some((service, backend.endpoint.addr));
                last = Some((service, (backend, tracked)));
                (request, replayable) = Replayable::record(again);
            }
        };
        match deadline {
            Some(after) => tokio::time::timeout(after, tries).await.map_err(|_| timeout(after))?,
            None => tries.await,
        }
    }
}

/// Where a rule's backend Services are reached: the balancer of a Service
/// port, by its ClusterIP:port.
pub trait Backends: Send + Sync {
    /// The target for the Service port at `address`; `None` when discovery
    /// says it is no Service port.
    fn target(&self, address: SocketAddr) -> BoxFuture<'_, Option<Target>>;
}

/// Backend targets by address, and the table they were looked up under.
type KnownTargets = (Arc<Table>, HashMap<SocketAddr, Target>);

/// The routes of one client connection's Service port.
#[derive(Clone)]
pub struct Routes {
    /// The Service port's rules, as the destination service updates them.
    pub table: watch::Receiver<Arc<Table>>,
    /// Reaches the backends.
    pub backends: Arc<dyn Backends>,
    /// Backend targets this connection already looked up, with the table
    /// they were looked up under: a new table starts afresh, so backends it
    /// no longer names are let go.
    known: Arc<Mutex<KnownTargets>>,
}

impl Routes {
    /// Routes from `table`, reaching backends through `backends`.
    pub fn new(table: watch::Receiver<Arc<Table>>, backends: Arc<dyn Backends>) -> Self {
        Routes {
            table,
            backends,
            known: Arc::default(),
        }
    }

    /// The rules now; `None` when the Service port is not routed.
    pub fn current(&self) -> Option<Arc<Table>> {
        let table = self.table.borrow();
        (!table.is_empty()).then(|| table.clone())
    }

    /// The target of the backend at `address`.
    ///
    /// # Errors
    /// [`RouteError::Unresolved`] when it is no Service port.
    pub async fn target(&self, rule: &Rule, address: SocketAddr) -> Result<Target, RouteError> {
        let known = {
            let table = self.table.borrow();
            let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&known.0, &table) {
                *known = (table.clone(), HashMap::new());
            }
            known.1.get(&address).cloned()
        };
        if let Some(target) = known {
            return Ok(target);
        }
        let target = self
            .backends
            .target(address)
            .await
            .ok_or_else(|| RouteError::Unresolved {
                route: rule.route.clone(),
                backend: address.to_string(),
            })?;
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .insert(address, target.clone());
        Ok(target)
    }
}
