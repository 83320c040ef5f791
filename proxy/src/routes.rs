//! Gateway API routes on the request path: the rules the destination
//! service sends for a Service port (HTTPRoutes and GRPCRoutes bound to the
//! Service, GAMMA) compiled into a [`Table`]; for each request the first
//! rule whose match it satisfies, a backend Service picked by weight, the
//! rule's header changes and its timeout.
//!
//! A Service port with no rules is not routed: its requests are balanced
//! over its own endpoints. With rules, a request none matches is answered
//! 404 (gRPC: UNIMPLEMENTED), as the Gateway API says.
//!
//! Match semantics (Gateway API v1 HTTPRouteMatch): a path is matched
//! without its query; `PREFIX` is element-wise ("/foo" matches "/foo" and
//! "/foo/bar", not "/foobar"; a trailing "/" in the prefix is ignored);
//! regular expressions (RE2 syntax) match the whole value; header names are
//! case-insensitive, and a header sent several times matches on its values
//! joined by ","; a query parameter matches its first value, percent-decoded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};

use crate::wire::GRPC_TIMEOUT;
use rand::Rng;
use regex::Regex;
use strait_api::destination::v1 as api;
use strait_api::destination::v1::path_match::Kind as PathKind;

/// The route object a rule comes from (metrics' `route_kind` and
/// `route_name`, and logs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteName {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    /// `namespace/name` of the route object.
    pub name: String,
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// A header or query value to match: exactly, or a regular expression
/// that must match it whole.
#[derive(Debug)]
enum Value {
    Exact(String),
    Pattern(Regex),
}

impl Value {
    fn compile(text: &str, regular: bool) -> Result<Self, regex::Error> {
        if regular {
            Ok(Value::Pattern(Regex::new(&format!("^(?:{text})$"))?))
        } else {
            Ok(Value::Exact(text.to_string()))
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Value::Exact(exact) => exact == value,
            Value::Pattern(pattern) => pattern.is_match(value),
        }
    }
}

#[derive(Debug)]
enum Path {
    Exact(String),
    /// Without a trailing "/" (except the prefix "/" itself).
    Prefix(String),
    Pattern(Regex),
}

impl Path {
    fn matches(&self, path: &str) -> bool {
        match self {
            Path::Exact(exact) => exact == path,
            Path::Prefix(prefix) if prefix == "/" => true,
            Path::Prefix(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            Path::Pattern(pattern) => pattern.is_match(path),
        }
    }
}

/// One match: every part present must hold.
#[derive(Debug, Default)]
struct Match {
    path: Option<Path>,
    method: Option<Method>,
    headers: Vec<(HeaderName, Value)>,
    query: Vec<(String, Value)>,
}

impl Match {
    fn compile(proto: &api::RouteMatch) -> Result<Self, String> {
        let path = match &proto.path {
            None => None,
            Some(path) => Some(match PathKind::try_from(path.kind) {
                Ok(PathKind::Exact) => Path::Exact(path.value.clone()),
                Ok(PathKind::Prefix) => {
                    let trimmed = path.value.trim_end_matches('/');
                    Path::Prefix(if trimmed.is_empty() { "/".into() } else { trimmed.into() })
                }
                Ok(PathKind::RegularExpression) => Path::Pattern(
                    Regex::new(&format!("^(?:{})$", path.value))
                        .map_err(|e| format!("path regular expression {:?}: {e}", path.value))?,
                ),
                Err(_) => return Err(format!("unknown path match kind {}", path.kind)),
            }),
        };
        let method = match proto.method.as_str() {
            "" => None,
            text => Some(Method::from_bytes(text.as_bytes()).map_err(|e| format!("method {text:?}: {e}"))?),
        };
        let headers = proto
            .headers
            .iter()
            .map(|h| {
                let name =
                    HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| format!("header {:?}: {e}", h.name))?;
                let value =
                    Value::compile(&h.value, h.regular_expression).map_err(|e| format!("header {:?}: {e}", h.name))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        let query = proto
            .query_params
            .iter()
            .map(|q| {
                let value = Value::compile(&q.value, q.regular_expression)
                    .map_err(|e| format!("query parameter {:?}: {e}", q.name))?;
                Ok((q.name.clone(), value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Match {
            path,
            method,
            headers,
            query,
        })
    }

    fn matches<B>(&self, request: &Request<B>) -> bool {
        if let Some(method) = &self.method
            && request.method() != method
        {
            return false;
        }
        if let Some(path) = &self.path
            && !path.matches(request.uri().path())
        {
            return false;
        }
        let headers = request.headers();
        let header_ok = |(name, value): &(HeaderName, Value)| {
            let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
            match (values.next(), values.next()) {
                (None, _) => false,
                (Some(only), None) => value.matches(only),
                (Some(first), Some(second)) => {
                    let mut joined = format!("{first},{second}");
                    for more in values {
                        joined.push(',');
                        joined.push_str(more);
                    }
                    value.matches(&joined)
                }
            }
        };
        if !self.headers.iter().all(header_ok) {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        let query = request.uri().query().unwrap_or("");
        self.query.iter().all(|(name, value)| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(n, _)| n == name)
                .is_some_and(|(_, v)| value.matches(&v))
        })
    }
}

/// A backend Service of a rule.
#[derive(Debug)]
struct Backend {
    /// Its ClusterIP:port; `None` when its backendRef is unresolved.
    address: Option<SocketAddr>,
    weight: u32,
    /// `namespace/name:port`, for errors.
    name: String,
}

/// Header changes, in the Gateway API's order: set, add, remove.
#[derive(Debug, Default)]
struct HeaderChanges {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderChanges {
    fn compile(proto: &api::HeaderModifier) -> Result<Self, String> {
        let pair = |h: &api::Header| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| format!("header {:?}: {e}", h.name))?,
                HeaderValue::from_str(&h.value).map_err(|e| format!("header {:?} value: {e}", h.name))?,
            ))
        };
        Ok(HeaderChanges {
            set: proto.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: proto.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: proto
                .remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header {n:?}: {e}")))
                .collect::<Result<_, _>>()?,
        })
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// One rule of a route, for one of its matches.
#[derive(Debug)]
pub struct Rule {
    /// The route it comes from.
    pub route: RouteName,
    matched: Option<Match>,
    backends: Vec<Backend>,
    total_weight: u64,
    headers: HeaderChanges,
    /// `timeouts.request`: the longest a request may wait for its
    /// response's headers, retries included; `None` for no limit.
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`: the longest one try may wait.
    pub try_timeout: Option<Duration>,
    /// Which answers are tried again, and the budget that bounds retries.
    pub retry: Option<Retry>,
}

/// A rule's retries: which answers are tried again, how often, and the
/// budget that keeps retries a bounded share of the load.
#[derive(Debug)]
pub struct Retry {
    /// The most retries of one request.
    pub limit: u32,
    http_statuses: Vec<(u16, u16)>,
    grpc_codes: Vec<u32>,
    /// Shared by every request of the rule (all its matches), on every
    /// connection, and kept when the routes change.
    pub budget: Arc<Budget>,
}

impl Retry {
    /// Whether an answer is one to try again: for gRPC, a `grpc-status` in
    /// the response's headers (a trailers-only answer) among the codes; for
    /// HTTP, the status among the statuses.
    pub fn wants<B>(&self, response: &http::Response<B>, grpc: bool) -> bool {
        if grpc {
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            code.is_some_and(|code| self.grpc_codes.contains(&code))
        } else {
            let status = response.status().as_u16();
            self.http_statuses
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&status))
        }
    }
}

/// A retry budget: retries may be at most [`Budget::RATIO`] of the
/// requests, plus [`Budget::FLOOR_PER_SECOND`], so that retries cannot
/// multiply the load of a failing backend (Finagle's and Linkerd's kind).
///
/// Each request deposits `RATIO` of a retry, time deposits
/// `FLOOR_PER_SECOND` a second, and each retry withdraws one; the balance is
/// capped at [`Budget::MOST_SAVED`], so a quiet spell cannot pay for a
/// storm.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<(f64, Instant)>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            state: Mutex::new((Self::FLOOR_PER_SECOND, Instant::now())),
        }
    }
}

impl Budget {
    /// Retries per request the budget allows over time.
    pub const RATIO: f64 = 0.2;
    /// Retries per second allowed whatever the request rate.
    pub const FLOOR_PER_SECOND: f64 = 10.0;
    /// The most retries saved up.
    pub const MOST_SAVED: f64 = 100.0;

    fn update(&self, change: f64) -> f64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.saturating_duration_since(state.1).as_secs_f64() * Self::FLOOR_PER_SECOND;
        state.0 = (state.0 + earned + change).min(Self::MOST_SAVED);
        state.1 = now;
        state.0
    }

    /// A request was made: it earns `RATIO` of a retry.
    pub fn deposit(&self) {
        self.update(Self::RATIO);
    }

    /// Takes one retry from the budget; false when it has none left.
    pub fn withdraw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.saturating_duration_since(state.1).as_secs_f64() * Self::FLOOR_PER_SECOND;
        state.0 = (state.0 + earned).min(Self::MOST_SAVED);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a routed request could not be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// Routes are bound to the Service port, and none matches the request.
    #[error("no route of the Service matches {method} {path}")]
    NoMatch {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// The rule's backends are all weight 0, or it has none.
    #[error("{route} has no backend with a weight above 0 for this request")]
    NoBackend {
        /// The route.
        route: RouteName,
    },
    /// The backend picked is not a Service the mesh can reach (its
    /// backendRef was not resolved: see the route's `ResolvedRefs`).
    #[error("{route}: backend {backend} is not resolved (see the route's ResolvedRefs condition)")]
    Unresolved {
        /// The route.
        route: RouteName,
        /// `namespace/name:port` of the backend.
        backend: String,
    },
    /// The route's timeout passed before the response's headers came.
    #[error("{route}: no response within {after:?}")]
    Timeout {
        /// The route.
        route: RouteName,
        /// The timeout.
        after: Duration,
    },
}

impl Rule {
    fn compile(proto: &api::RouteRule) -> Result<Self, String> {
        let route = proto.route.clone().unwrap_or_default();
        let backends: Vec<Backend> = proto
            .backends
            .iter()
            .map(|b| {
                let address = match b.address.as_str() {
                    "" => None,
                    text => Some(
                        text.parse::<SocketAddr>()
                            .map_err(|_| format!("backend address {text:?}"))?,
                    ),
                };
                Ok(Backend {
                    address,
                    weight: b.weight,
                    name: b.name.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        let retry = proto.retry.as_ref().map(|policy| Retry {
            limit: policy.limit.clamp(1, 10),
            http_statuses: policy
                .http_statuses
                .iter()
                .map(|r| {
                    let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
                    (clamp(r.first), clamp(r.last))
                })
                .collect(),
            grpc_codes: policy.grpc_codes.clone(),
            budget: Arc::default(),
        });
        Ok(Rule {
            route: RouteName {
                kind: route.kind,
                name: format!("{}/{}", route.namespace, route.name),
            },
            matched: proto.r#match.as_ref().map(Match::compile).transpose()?,
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            backends,
            headers: proto
                .request_headers
                .as_ref()
                .map(HeaderChanges::compile)
                .transpose()?
                .unwrap_or_default(),
            request_timeout: millis(proto.request_timeout_ms),
            try_timeout: millis(proto.backend_request_timeout_ms),
            retry,
        })
    }

    /// Picks a backend by weight: its ClusterIP:port. A retry passes the
    /// backend that failed as `avoid`: it is left out of the draw while
    /// another backend has a weight above 0 (a failing canary's retries go
    /// to the stable version).
    ///
    /// # Errors
    /// [`RouteError::NoBackend`] when no backend has a weight above 0;
    /// [`RouteError::Unresolved`] when the one picked was not resolved.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Result<SocketAddr, RouteError> {
        let avoided = |b: &Backend| avoid.is_some() && b.address == avoid;
        let others: u64 = self
            .backends
            .iter()
            .filter(|b| !avoided(b))
            .map(|b| u64::from(b.weight))
            .sum();
        let skip_avoided = others > 0 && others < self.total_weight;
        let total = if skip_avoided { others } else { self.total_weight };
        if total == 0 {
            return Err(RouteError::NoBackend {
                route: self.route.clone(),
            });
        }
        let mut ticket = rand::rng().random_range(0..total);
        let picked = self
            .backends
            .iter()
            .filter(|b| !(skip_avoided && avoided(b)))
            .find(|b| {
                let weight = u64::from(b.weight);
                if ticket < weight {
                    true
                } else {
                    ticket -= weight;
                    false
                }
            })
            .expect("a ticket below the total weight falls on a backend");
        picked.address.ok_or_else(|| RouteError::Unresolved {
            route: self.route.clone(),
            backend: picked.name.clone(),
        })
    }

    /// Applies the rule's RequestHeaderModifier.
    pub fn modify(&self, headers: &mut HeaderMap) {
        self.headers.apply(headers);
    }

    /// The time the request may wait for its response's headers, retries
    /// included: the rule's request timeout, or for a gRPC call its
    /// `grpc-timeout` if that is tighter (or the try timeout, when there are
    /// no retries and it is tighter still).
    pub fn deadline(&self, headers: &HeaderMap, grpc: bool) -> Option<Duration> {
        let tries = if self.retry.is_some() { None } else { self.try_timeout };
        let call = if grpc { grpc_timeout(headers) } else { None };
        [self.request_timeout, call, tries].into_iter().flatten().min()
    }
}

/// A gRPC call's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a
/// unit, H M S m u n); `None` when absent or malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Sets a call's `grpc-timeout` to `left`, in the coarsest unit that
/// keeps it exact within gRPC's 8 digits (milliseconds, else seconds).
pub fn set_grpc_timeout(headers: &mut HeaderMap, left: Duration) {
    let millis = left.as_millis();
    let text = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert(GRPC_TIMEOUT, value);
    }
}

/// A Service port's rules, in precedence order.
#[derive(Debug, Default)]
pub struct Table {
    rules: Vec<Arc<Rule>>,
    /// The rules as sent, to tell whether a message changes them.
    sent: Vec<api::RouteRule>,
    /// Each rule's retry budget, by route kind, route and rule index.
    budgets: HashMap<(String, String, u32), Arc<Budget>>,
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.sent == other.sent
    }
}

impl Table {
    /// Compiles the rules of a Service port routed for the first time.
    #[cfg(test)]
    pub fn compile(rules: &[api::RouteRule]) -> Self {
        Self::compile_after(&Table::default(), rules)
    }

    /// Compiles the rules the destination service sent for the Service
    /// port `previous` routed: a rule that stays keeps its retry budget (a
    /// weight change must not hand out a fresh one). A rule the proxy
    /// cannot compile (the control plane checks them, so only a version
    /// skew makes one) is left out and logged.
    pub fn compile_after(previous: &Table, rules: &[api::RouteRule]) -> Self {
        let mut budgets = HashMap::new();
        let compiled = rules
            .iter()
            .filter_map(|proto| match Rule::compile(proto) {
                Ok(mut rule) => {
                    if let Some(retry) = rule.retry.as_mut() {
                        let key = (rule.route.kind.clone(), rule.route.name.clone(), proto.rule);
                        let budget = budgets
                            .entry(key.clone())
                            .or_insert_with(|| previous.budgets.get(&key).cloned().unwrap_or_default());
                        retry.budget = budget.clone();
                    }
                    Some(Arc::new(rule))
                }
                Err(problem) => {
                    let route = proto.route.clone().unwrap_or_default();
                    tracing::warn!(route = %format!("{} {}/{}", route.kind, route.namespace, route.name), rule = proto.rule, %problem, "leaving out a route rule the proxy cannot carry out");
                    None
                }
            })
            .collect();
        Table {
            rules: compiled,
            sent: rules.to_vec(),
            budgets,
        }
    }

    /// Whether the Service port is routed at all.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The first rule whose match the request satisfies.
    ///
    /// # Errors
    /// [`RouteError::NoMatch`] when none does.
    pub fn select<B>(&self, request: &Request<B>) -> Result<&Arc<Rule>, RouteError> {
        self.rules
            .iter()
            .find(|rule| rule.matched.as_ref().is_none_or(|m| m.matches(request)))
            .ok_or_else(|| RouteError::NoMatch {
                method: request.method().to_string(),
                path: request.uri().path().chars().take(256).collect(),
            })
    }
}

#[cfg(test)]
mod tests;
