//! Gateway API routes bound to Services, as the mesh profile (GAMMA) binds
//! them: an HTTPRoute or GRPCRoute (`gateway.networking.k8s.io/v1`) whose
//! `parentRefs` name a Service (optionally one of its ports) applies to
//! meshed clients' requests to that Service.
//!
//! This module reads route objects into [`Route`] (checking what the
//! mesh can carry out), says which routes apply to one client's requests to
//! one Service port ([`table`], in the Gateway API's precedence order) and
//! what each route's status is ([`statuses`]). It keeps no state: the
//! [`super::index::Index`] holds the routes and Services and calls it.
//!
//! Semantics (Gateway API v1, GEP-1426 for the mesh):
//! - a route in the Service's namespace (a *producer* route) applies to all
//!   clients; a route in another namespace (a *consumer* route) applies to
//!   the clients of that namespace only, and where a namespace has consumer
//!   routes for a Service, the producer routes do not apply to it;
//! - a GRPCRoute and an HTTPRoute on one parent conflict: the HTTPRoute is
//!   not accepted (reason `Conflicted`);
//! - precedence, across the routes that apply: HTTPRoute: exact path, then
//!   the longest prefix, then a method match, then the most header matches,
//!   then the most query matches; GRPCRoute: the longest service, then the
//!   longest method, then the most header matches; ties go to the oldest
//!   route, then to `namespace/name` in alphabetical order, then to rule
//!   order;
//! - a route the mesh cannot carry out (a filter other than
//!   RequestHeaderModifier, an invalid regular expression or duration) is
//!   not accepted (reason `UnsupportedValue`) and changes no traffic; a
//!   backendRef that cannot be resolved (no such Service or port, another
//!   kind) makes `ResolvedRefs` false and its share of requests is answered
//!   500. A backendRef to a Service in another namespace needs a
//!   ReferenceGrant there that allows it (from the route's kind and
//!   namespace, to that Service or all Services): else `ResolvedRefs` is
//!   false with reason `RefNotPermitted`. (A consumer route's parentRef to
//!   a Service in another namespace needs none.) A rule without
//!   backendRefs sends its requests to the parent Service port.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;

use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteRules, GrpcRouteRulesFiltersType, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType,
};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesFiltersType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use strait_api::destination::v1::{
    Header, HeaderModifier, PathMatch, RetryPolicy, RouteMatch, RouteRef, RouteRule, StatusRange, ValueMatch,
    WeightedBackend, path_match,
};

use super::index::ObjectKey;

/// The controller name strait writes route status as (Gateway API
/// `controllerName`: a domain-prefixed path).
pub const CONTROLLER_NAME: &str = "strait.io/mesh";

/// The largest backendRef weight the Gateway API allows.
const MAX_WEIGHT: i32 = 1_000_000;

/// The two route kinds the mesh serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

impl RouteKind {
    /// The object kind, as in `kind:` and in metrics' `route_kind`.
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A route by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub kind: RouteKind,
    pub object: ObjectKey,
}

/// A parentRef naming a Service (group `""` or `core`, kind `Service`).
#[derive(Clone, Debug, PartialEq)]
pub struct ParentRef {
    pub service: ObjectKey,
    /// Only this Service port, when given.
    pub port: Option<u16>,
    /// Only the Service port of this name, when given (`sectionName`).
    pub section: Option<String>,
    /// The parentRef as the route wrote it, for status (whose `parentRef`
    /// must be the spec's).
    pub written: serde_json::Value,
}

/// Why a route or a backendRef cannot be used: a Gateway API condition
/// reason and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// A backendRef as written, resolved against the Services when a table is
/// made.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRef {
    pub service: ObjectKey,
    pub port: Option<u16>,
    pub weight: u32,
    /// A ref the mesh cannot follow whatever the Services are (another
    /// kind, another namespace).
    pub refused: Option<Problem>,
}

/// One match of a rule, and its precedence among matches (larger first).
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub proto: Option<RouteMatch>,
    pub precedence: (u8, usize, usize, usize, usize),
}

/// One rule of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub backends: Vec<BackendRef>,
    pub headers: Option<HeaderModifier>,
    pub request_timeout_ms: u64,
    pub backend_request_timeout_ms: u64,
    pub retry: Option<RetryPolicy>,
}

/// A route, read from its object.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub key: RouteKey,
    pub generation: i64,
    /// The object's `resourceVersion`: a status write is conditional on it,
    /// so that it never overwrites what another writer put there since.
    pub resource_version: Option<String>,
    /// `creationTimestamp` (RFC 3339, so text order is time order).
    pub created: String,
    pub parents: Vec<ParentRef>,
    pub rules: Vec<Rule>,
    /// Why the route as a whole cannot be carried out.
    pub invalid: Option<Problem>,
    /// The status parents other controllers wrote, kept as they are.
    pub others_status: Vec<serde_json::Value>,
    /// The status parents written as [`CONTROLLER_NAME`], as stored.
    pub own_status: Vec<serde_json::Value>,
}

/// Reads the parts of a route object every kind shares.
fn common(kind: RouteKind, metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Route {
    Route {
        key: RouteKey {
            kind,
            object: ObjectKey::of(metadata),
        },
        generation: metadata.generation.unwrap_or(0),
        resource_version: metadata.resource_version.clone(),
        created: metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        parents: Vec::new(),
        rules: Vec::new(),
        invalid: None,
        others_status: Vec::new(),
        own_status: Vec::new(),
    }
}

/// A parentRef's fields, whatever the route kind.
struct ParentFields<'a> {
    written: serde_json::Value,
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    section: Option<&'a str>,
}

fn parent(route_namespace: &str, fields: ParentFields<'_>) -> Option<ParentRef> {
    let core = matches!(fields.group, Some("" | "core"));
    if !core || fields.kind != Some("Service") {
        return None;
    }
    Some(ParentRef {
        service: ObjectKey {
            namespace: fields.namespace.unwrap_or(route_namespace).to_string(),
            name: fields.name.to_string(),
        },
        port: fields.port.and_then(|p| u16::try_from(p).ok()),
        section: fields.section.map(str::to_string),
        written: fields.written,
    })
}

/// A backendRef's fields, whatever the route kind.
struct BackendFields<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
}

fn backend(route_namespace: &str, fields: BackendFields<'_>) -> BackendRef {
    let namespace = fields.namespace.unwrap_or(route_namespace);
    let group = fields.group.unwrap_or("");
    let kind = fields.kind.unwrap_or("Service");
    let refused = if !(group.is_empty() || group == "core") || kind != "Service" {
        Some(Problem::new(
            "InvalidKind",
            format!("backendRef {}: {group}/{kind} is not a Service", fields.name),
        ))
    } else if fields.port.is_none() {
        Some(Problem::new(
            "BackendNotFound",
            format!(
                "backendRef {namespace}/{}: a Service backendRef needs a port",
                fields.name
            ),
        ))
    } else {
        None
    };
    BackendRef {
        service: ObjectKey {
            namespace: namespace.to_string(),
            name: fields.name.to_string(),
        },
        port: fields.port.and_then(|p| u16::try_from(p).ok()),
        weight: fields.weight.unwrap_or(1).clamp(0, MAX_WEIGHT).unsigned_abs(),
        refused,
    }
}

/// Checks a regular expression as the proxy will compile it (RE2 syntax,
/// the `regex` crate), anchored to the whole value.
fn regex(value: &str, what: &str) -> Result<String, Problem> {
    let anchored = format!("^(?:{value})$");
    regex::Regex::new(&anchored).map(|_| value.to_string()).map_err(|e| {
        Problem::new(
            "UnsupportedValue",
            format!("{what}: invalid regular expression {value:?}: {e}"),
        )
    })
}

/// A Gateway API duration (GEP-2257: `1h`, `500ms`, `1m30s`) in
/// milliseconds; `0s` means none.
fn duration_ms(value: Option<&str>, what: &str) -> Result<u64, Problem> {
    let Some(value) = value else { return Ok(0) };
    let duration = gateway_api::Duration::from_str(value)
        .map_err(|e| Problem::new("UnsupportedValue", format!("{what}: invalid duration {value:?}: {e}")))?;
    Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A RequestHeaderModifier, its names and values checked as the proxy will
/// use them (HTTP field names and visible-ASCII values: a value the proxy
/// cannot send would otherwise leave the rule out there while the route
/// says Accepted).
fn header_modifier<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: &[String],
    what: &str,
) -> Result<HeaderModifier, Problem> {
    let name = |name: &str| {
        http::HeaderName::from_bytes(name.as_bytes())
            .map(|n| n.as_str().to_string())
            .map_err(|e| Problem::new("UnsupportedValue", format!("{what}: header name {name:?}: {e}")))
    };
    let header = |(field, value): (&str, &str)| -> Result<Header, Problem> {
        http::HeaderValue::from_str(value).map_err(|e| {
            Problem::new(
                "UnsupportedValue",
                format!("{what}: header {field:?} value {value:?}: {e}"),
            )
        })?;
        Ok(Header {
            name: name(field)?,
            value: value.to_string(),
        })
    };
    Ok(HeaderModifier {
        set: set.map(header).collect::<Result<_, _>>()?,
        add: add.map(header).collect::<Result<_, _>>()?,
        remove: remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
    })
}

/// A parentRef's fields out of either kind's generated type (the same
/// names and shapes in both).
macro_rules! parent_fields {
    ($p:expr) => {
        ParentFields {
            written: serde_json::to_value($p).unwrap_or_default(),
            group: Some($p.group.as_deref().unwrap_or("gateway.networking.k8s.io")),
            kind: Some($p.kind.as_deref().unwrap_or("Gateway")),
            name: &$p.name,
            namespace: $p.namespace.as_deref(),
            port: $p.port,
            section: $p.section_name.as_deref(),
        }
    };
}

/// A rule's filters and backendRefs out of either kind's generated types
/// (the same names and shapes in both; `$modifier` is the kind's
/// RequestHeaderModifier filter type), read by [`shared_parts`].
macro_rules! shared_parts {
    ($namespace:expr, $what:expr, $rule:expr, $modifier:path) => {
        shared_parts(
            $namespace,
            $what,
            $rule
                .filters
                .iter()
                .flatten()
                .map(|f| {
                    let modifier = match (&f.r#type, &f.request_header_modifier) {
                        ($modifier, Some(m)) => Some(ModifierView {
                            set: m
                                .set
                                .iter()
                                .flatten()
                                .map(|h| (h.name.as_str(), h.value.as_str()))
                                .collect(),
                            add: m
                                .add
                                .iter()
                                .flatten()
                                .map(|h| (h.name.as_str(), h.value.as_str()))
                                .collect(),
                            remove: m.remove.as_deref().unwrap_or_default(),
                        }),
                        _ => None,
                    };
                    (serde_json::to_value(&f.r#type).unwrap_or_default(), modifier)
                })
                .collect(),
            $rule
                .backend_refs
                .iter()
                .flatten()
                .map(|b| {
                    let fields = BackendFields {
                        group: b.group.as_deref(),
                        kind: b.kind.as_deref(),
                        name: &b.name,
                        namespace: b.namespace.as_deref(),
                        port: b.port,
                        weight: b.weight,
                    };
                    (fields, b.filters.as_ref().is_some_and(|f| !f.is_empty()))
                })
                .collect(),
        )
    };
}

/// A RequestHeaderModifier as either kind writes it.
struct ModifierView<'a> {
    set: Vec<(&'a str, &'a str)>,
    add: Vec<(&'a str, &'a str)>,
    remove: &'a [String],
}

/// What both kinds' rules are made of beside their matches: their filters
/// (only RequestHeaderModifier is carried out; `filters` holds each one's
/// type and, for that one, its changes) and their backendRefs (whose own
/// filters are not carried out; each with whether it has any).
fn shared_parts(
    namespace: &str,
    what: &dyn Fn(&str) -> String,
    filters: Vec<(serde_json::Value, Option<ModifierView<'_>>)>,
    backends: Vec<(BackendFields<'_>, bool)>,
) -> Result<(Option<HeaderModifier>, Vec<BackendRef>), Problem> {
    if let Some(i) = backends.iter().position(|(_, filtered)| *filtered) {
        return Err(Problem::new(
            "UnsupportedValue",
            format!(
                "{}: backendRef filters are not supported",
                what(&format!("backendRefs[{i}].filters"))
            ),
        ));
    }
    let mut headers = None;
    for (i, (kind, modifier)) in filters.into_iter().enumerate() {
        let Some(m) = modifier else {
            return Err(Problem::new(
                "UnsupportedValue",
                format!(
                    "{}: filter type {kind} is not supported (only RequestHeaderModifier)",
                    what(&format!("filters[{i}]"))
                ),
            ));
        };
        headers = Some(header_modifier(
            m.set.into_iter(),
            m.add.into_iter(),
            m.remove,
            &what(&format!("filters[{i}].requestHeaderModifier")),
        )?);
    }
    let backends = backends
        .into_iter()
        .map(|(fields, _)| backend(namespace, fields))
        .collect();
    Ok((headers, backends))
}

/// A route of `kind` from its object's parts: its Service parents, its
/// rules (`read_rules`, given the route's namespace; the route's retry
/// annotations are applied to each), and its stored status.
fn read_route<'a>(
    kind: RouteKind,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parents: impl Iterator<Item = ParentFields<'a>>,
    read_rules: impl FnOnce(&str) -> Result<Vec<Rule>, Problem>,
    status: Option<Result<serde_json::Value, serde_json::Error>>,
) -> Route {
    let mut route = common(kind, metadata);
    let namespace = route.key.object.namespace.clone();
    route.parents = parents.filter_map(|fields| parent(&namespace, fields)).collect();
    let read = retry_policy(metadata).and_then(|retry| {
        let mut rules = read_rules(&namespace)?;
        for rule in &mut rules {
            rule.retry = retry.clone();
        }
        Ok(rules)
    });
    match read {
        Ok(rules) => route.rules = rules,
        Err(problem) => route.invalid = Some(problem),
    }
    split_status(&mut route, status);
    route
}

/// Reads an HTTPRoute.
pub fn http_route(object: &HttpRoute) -> Route {
    let rules = object.spec.rules.as_deref().unwrap_or_default();
    read_route(
        RouteKind::Http,
        &object.metadata,
        object.spec.parent_refs.iter().flatten().map(|p| parent_fields!(p)),
        |namespace| {
            rules
                .iter()
                .enumerate()
                .map(|(i, rule)| http_rule(namespace, i, rule))
                .collect()
        },
        object.status.as_ref().map(serde_json::to_value),
    )
}

fn http_rule(namespace: &str, index: usize, rule: &HttpRouteRules) -> Result<Rule, Problem> {
    let what = |part: &str| format!("spec.rules[{index}].{part}");
    let (headers, backends) = shared_parts!(namespace, &what, rule, HttpRouteRulesFiltersType::RequestHeaderModifier)?;
    let matches = match &rule.matches {
        Some(matches) if !matches.is_empty() => matches
            .iter()
            .enumerate()
            .map(|(i, m)| http_match(m, &what(&format!("matches[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?,
        // No matches: every request, as a prefix match of "/".
        _ => vec![http_match(&HttpRouteRulesMatches::default(), &what("matches"))?],
    };
    let timeouts = rule.timeouts.as_ref();
    Ok(Rule {
        matches,
        backends,
        headers,
        request_timeout_ms: duration_ms(timeouts.and_then(|t| t.request.as_deref()), &what("timeouts.request"))?,
        backend_request_timeout_ms: duration_ms(
            timeouts.and_then(|t| t.backend_request.as_deref()),
            &what("timeouts.backendRequest"),
        )?,
        retry: None,
    })
}

fn http_match(m: &HttpRouteRulesMatches, what: &str) -> Result<Match, Problem> {
    let (kind, value) = match &m.path {
        None => (path_match::Kind::Prefix, "/".to_string()),
        Some(path) => {
            let value = path.value.clone().unwrap_or_else(|| "/".to_string());
            match path
                .r#type
                .as_ref()
                .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => (path_match::Kind::Exact, value),
                HttpRouteRulesMatchesPathType::PathPrefix => (path_match::Kind::Prefix, value),
                HttpRouteRulesMatchesPathType::RegularExpression => (
                    path_match::Kind::RegularExpression,
                    regex(&value, &format!("{what}.path"))?,
                ),
            }
        }
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            let regular = matches!(h.r#type, Some(HttpRouteRulesMatchesHeadersType::RegularExpression));
            value_match(&h.name.to_ascii_lowercase(), &h.value, regular, what)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query_params = m
        .query_params
        .iter()
        .flatten()
        .map(|q| {
            let regular = matches!(q.r#type, Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression));
            value_match(&q.name, &q.value, regular, what)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let method = m
        .method
        .as_ref()
        .and_then(|method| serde_json::to_value(method).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    // The spec leaves regular expressions' rank to implementations: they
    // go after exact paths and before prefixes, so that a catch-all "/"
    // cannot hide them.
    let rank = match kind {
        path_match::Kind::Exact => 2,
        path_match::Kind::RegularExpression => 1,
        path_match::Kind::Prefix => 0,
    };
    Ok(Match {
        precedence: (
            rank,
            value.len(),
            usize::from(!method.is_empty()),
            headers.len(),
            query_params.len(),
        ),
        proto: Some(RouteMatch {
            path: Some(PathMatch {
                kind: kind as i32,
                value,
            }),
            method,
            headers,
            query_params,
        }),
    })
}

fn value_match(name: &str, value: &str, regular: bool, what: &str) -> Result<ValueMatch, Problem> {
    let value = if regular {
        regex(value, &format!("{what} {name}"))?
    } else {
        value.to_string()
    };
    Ok(ValueMatch {
        name: name.to_string(),
        value,
        regular_expression: regular,
    })
}

/// Reads a GRPCRoute.
pub fn grpc_route(object: &GrpcRoute) -> Route {
    let rules = object.spec.rules.as_deref().unwrap_or_default();
    read_route(
        RouteKind::Grpc,
        &object.metadata,
        object.spec.parent_refs.iter().flatten().map(|p| parent_fields!(p)),
        |namespace| {
            let timeouts = route_timeouts(&object.metadata)?;
            rules
                .iter()
                .enumerate()
                .map(|(i, rule)| grpc_rule(namespace, i, rule, timeouts))
                .collect()
        },
        object.status.as_ref().map(serde_json::to_value),
    )
}

/// GRPCRoute has no timeouts field in the standard channel: the
/// annotations `timeout.strait.io/request` and
/// `timeout.strait.io/backend-request` (Gateway API durations) give every
/// rule of the route the HTTPRoute timeouts' meaning.
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "timeout.strait.io/request";
/// See [`REQUEST_TIMEOUT_ANNOTATION`].
pub const BACKEND_REQUEST_TIMEOUT_ANNOTATION: &str = "timeout.strait.io/backend-request";

fn route_timeouts(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(u64, u64), Problem> {
    let annotation = |name: &str| {
        metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .map(String::as_str)
    };
    Ok((
        duration_ms(
            annotation(REQUEST_TIMEOUT_ANNOTATION),
            &format!("metadata.annotations[{REQUEST_TIMEOUT_ANNOTATION}]"),
        )?,
        duration_ms(
            annotation(BACKEND_REQUEST_TIMEOUT_ANNOTATION),
            &format!("metadata.annotations[{BACKEND_REQUEST_TIMEOUT_ANNOTATION}]"),
        )?,
    ))
}

fn grpc_rule(namespace: &str, index: usize, rule: &GrpcRouteRules, timeouts: (u64, u64)) -> Result<Rule, Problem> {
    let what = |part: &str| format!("spec.rules[{index}].{part}");
    let (headers, backends) = shared_parts!(namespace, &what, rule, GrpcRouteRulesFiltersType::RequestHeaderModifier)?;
    let matches = match &rule.matches {
        Some(matches) if !matches.is_empty() => matches
            .iter()
            .enumerate()
            .map(|(i, m)| grpc_match(m, &what(&format!("matches[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?,
        _ => vec![Match {
            proto: None,
            precedence: (0, 0, 0, 0, 0),
        }],
    };
    Ok(Rule {
        matches,
        backends,
        headers,
        request_timeout_ms: timeouts.0,
        backend_request_timeout_ms: timeouts.1,
        retry: None,
    })
}

/// A GRPCRouteMatch as a path match on `/SERVICE/METHOD` plus header
/// matches.
fn grpc_match(m: &GrpcRouteRulesMatches, what: &str) -> Result<Match, Problem> {
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            let regular = matches!(h.r#type, Some(GrpcRouteRulesMatchesHeadersType::RegularExpression));
            value_match(&h.name.to_ascii_lowercase(), &h.value, regular, what)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let method = m.method.as_ref();
    let service = method.and_then(|m| m.service.as_deref()).unwrap_or("");
    let name = method.and_then(|m| m.method.as_deref()).unwrap_or("");
    let regular = matches!(
        method.and_then(|m| m.r#type.as_ref()),
        Some(GrpcRouteRulesMatchesMethodType::RegularExpression)
    );
    let path = match (method, regular) {
        (None, _) => None,
        (Some(_), false) => Some(match (service.is_empty(), name.is_empty()) {
            (false, false) => PathMatch {
                kind: path_match::Kind::Exact as i32,
                value: format!("/{service}/{name}"),
            },
            (false, true) => PathMatch {
                kind: path_match::Kind::Prefix as i32,
                value: format!("/{service}"),
            },
            (true, false) => PathMatch {
                kind: path_match::Kind::RegularExpression as i32,
                value: format!("/[^/]+/{}", regex_escape(name)),
            },
            (true, true) => {
                return Err(Problem::new(
                    "UnsupportedValue",
                    format!("{what}.method: one of service and method must be given"),
                ));
            }
        }),
        (Some(_), true) => {
            let service = if service.is_empty() { "[^/]+" } else { service };
            let name = if name.is_empty() { "[^/]+" } else { name };
            Some(PathMatch {
                kind: path_match::Kind::RegularExpression as i32,
                value: regex(&format!("/(?:{service})/(?:{name})"), &format!("{what}.method"))?,
            })
        }
    };
    Ok(Match {
        precedence: (0, service.len(), name.len(), headers.len(), 0),
        proto: Some(RouteMatch {
            path,
            method: String::new(),
            headers,
            query_params: Vec::new(),
        }),
    })
}

/// The annotation listing the HTTP statuses a route's requests are tried
/// again on: codes and classes, comma-separated (`5xx`, `502,503`, `429`).
pub const RETRY_HTTP_ANNOTATION: &str = "retry.strait.io/http";
/// The annotation listing the gRPC status codes a route's calls are tried
/// again on: names as gRPC spells them, any case, or numbers
/// (`unavailable,cancelled`, `14`).
pub const RETRY_GRPC_ANNOTATION: &str = "retry.strait.io/grpc";
/// The annotation giving the most retries of one request, 1..10 (default 2).
pub const RETRY_LIMIT_ANNOTATION: &str = "retry.strait.io/limit";

/// gRPC's status codes by name (gRPC's `statuscodes.md`).
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// A route's retry policy from its `retry.strait.io/*` annotations (the
/// Gateway API's standard channel has no retry field); `None` without
/// `retry.strait.io/http` or `retry.strait.io/grpc`.
fn retry_policy(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Option<RetryPolicy>, Problem> {
    let annotation = |name: &str| {
        metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .map(String::as_str)
    };
    let bad = |name: &str, value: &str, why: String| {
        Problem::new(
            "UnsupportedValue",
            format!("metadata.annotations[{name}]: invalid value {value:?}: {why}"),
        )
    };
    let items = |text: &str| -> Vec<String> {
        text.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut http_statuses = Vec::new();
    if let Some(text) = annotation(RETRY_HTTP_ANNOTATION) {
        for item in items(text) {
            let range = match item.strip_suffix("xx") {
                Some(class) => class
                    .parse::<u32>()
                    .ok()
                    .filter(|c| (1..=5).contains(c))
                    .map(|c| (c * 100, c * 100 + 99)),
                None => item
                    .parse::<u32>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .map(|c| (c, c)),
            };
            let (first, last) = range.ok_or_else(|| {
                bad(
                    RETRY_HTTP_ANNOTATION,
                    text,
                    format!("{item:?} is neither a status 100..599 nor a class such as 5xx"),
                )
            })?;
            http_statuses.push(StatusRange { first, last });
        }
    }
    let mut grpc_codes = Vec::new();
    if let Some(text) = annotation(RETRY_GRPC_ANNOTATION) {
        for item in items(text) {
            let name = item.replace('-', "_");
            let code = GRPC_CODES
                .iter()
                .position(|n| *n == name)
                .and_then(|c| u32::try_from(c).ok())
                .or_else(|| item.parse::<u32>().ok().filter(|c| (1..=16).contains(c)));
            let code = code.filter(|c| *c != 0).ok_or_else(|| {
                bad(
                    RETRY_GRPC_ANNOTATION,
                    text,
                    format!("{item:?} is not a gRPC status code other than OK (unavailable, cancelled, 14, ...)"),
                )
            })?;
            grpc_codes.push(code);
        }
    }
    let limit = match annotation(RETRY_LIMIT_ANNOTATION) {
        None => 2,
        Some(text) => text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| bad(RETRY_LIMIT_ANNOTATION, text, "expected a number 1..10".into()))?,
    };
    if http_statuses.is_empty() && grpc_codes.is_empty() {
        return Ok(None);
    }
    Ok(Some(RetryPolicy {
        limit,
        http_statuses,
        grpc_codes,
    }))
}

fn regex_escape(text: &str) -> String {
    regex::escape(text)
}

/// Separates the stored status's parents into ours and other controllers'.
fn split_status(route: &mut Route, status: Option<Result<serde_json::Value, serde_json::Error>>) {
    let Some(Ok(status)) = status else { return };
    for parent in status["parents"].as_array().into_iter().flatten() {
        if parent["controllerName"] == CONTROLLER_NAME {
            route.own_status.push(parent.clone());
        } else {
            route.others_status.push(parent.clone());
        }
    }
}

/// What a ReferenceGrant allows: references from (group, kind, namespace)
/// to (group, kind, name or every name) in its own namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub namespace: String,
    pub from: Vec<(String, String, String)>,
    pub to: Vec<(String, String, Option<String>)>,
}

/// Reads a ReferenceGrant (`gateway.networking.k8s.io/v1`).
pub fn reference_grant(object: &gateway_api::referencegrants::ReferenceGrant) -> Grant {
    Grant {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        from: object
            .spec
            .from
            .iter()
            .map(|f| (f.group.clone(), f.kind.clone(), f.namespace.clone()))
            .collect(),
        to: object
            .spec
            .to
            .iter()
            .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
            .collect(),
    }
}

impl Grant {
    /// Whether it lets routes of `kind` in `from_namespace` reference the
    /// Service `service` (of the grant's namespace).
    pub fn allows(&self, kind: RouteKind, from_namespace: &str, service: &ObjectKey) -> bool {
        self.namespace == service.namespace
            && self.from.iter().any(|(group, from_kind, namespace)| {
                group == "gateway.networking.k8s.io" && from_kind == kind.kind() && namespace == from_namespace
            })
            && self.to.iter().any(|(group, to_kind, name)| {
                (group.is_empty() || group == "core")
                    && to_kind == "Service"
                    && name.as_ref().is_none_or(|n| *n == service.name)
            })
    }
}

/// What a table is made for: a Service port and a client's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableKey {
    pub service: ObjectKey,
    pub port: u16,
    pub port_name: String,
    pub client_namespace: String,
}

/// What the routes need to know of the cluster's Services.
pub trait Services {
    /// The address (a ClusterIP of the family of `like`, and the port) of
    /// `service`'s port `port`, if the Service and port exist.
    fn address(&self, service: &ObjectKey, port: u16, like: &SocketAddr) -> Option<SocketAddr>;
    /// Whether `service` exists, and its port names by number.
    fn ports(&self, service: &ObjectKey) -> Option<Vec<(u16, String)>>;
    /// Whether a ReferenceGrant in `service`'s namespace lets routes of
    /// `kind` in `from_namespace` name it as a backend.
    fn grants(&self, kind: RouteKind, from_namespace: &str, service: &ObjectKey) -> bool;
}

/// A backendRef's reference across namespaces that no ReferenceGrant
/// allows, said as `ResolvedRefs` says it.
fn not_permitted(route: &Route, backend: &BackendRef, services: &impl Services) -> Option<Problem> {
    let from = &route.key.object.namespace;
    (backend.service.namespace != *from && !services.grants(route.key.kind, from, &backend.service)).then(|| {
        Problem::new(
            "RefNotPermitted",
            format!(
                "backendRef {}/{}: no ReferenceGrant in namespace {} allows {}s of namespace {from} to reference it",
                backend.service.namespace,
                backend.service.name,
                backend.service.namespace,
                route.key.kind.kind()
            ),
        )
    })
}

impl ParentRef {
    fn selects(&self, service: &ObjectKey, port: u16, port_name: &str) -> bool {
        &self.service == service
            && self.port.is_none_or(|p| p == port)
            && self.section.as_deref().is_none_or(|s| s == port_name)
    }
}

impl ParentRef {
    /// Whether two parentRefs can select the same Service port.
    fn overlaps(&self, other: &ParentRef) -> bool {
        self.service == other.service
            && (self.port.is_none() || other.port.is_none() || self.port == other.port)
            && (self.section.is_none() || other.section.is_none() || self.section == other.section)
    }
}

/// Whether an HTTPRoute's `parent` conflicts with a valid GRPCRoute bound to
/// the same Service port by routes of the same namespace (the producer's,
/// or one consumer namespace's): GEP-1426 then accepts only the GRPCRoute.
/// A route of another namespace never changes this one's traffic.
fn conflicted<'a>(route: &Route, parent: &ParentRef, routes: impl Iterator<Item = &'a Route>) -> bool {
    let mut routes = routes;
    route.key.kind == RouteKind::Http
        && routes.any(|other| {
            other.key.kind == RouteKind::Grpc
                && other.invalid.is_none()
                && other.key.object.namespace == route.key.object.namespace
                && other.parents.iter().any(|p| p.overlaps(parent))
        })
}

/// The rules that apply to `key`'s client's requests to its Service port,
/// flattened to one entry per match and sorted by precedence (first match
/// wins). `destination` is the address the client follows, whose family
/// backends' ClusterIPs take.
pub fn table<'a>(
    key: &TableKey,
    destination: &SocketAddr,
    routes: impl Iterator<Item = &'a Route> + Clone,
    services: &impl Services,
) -> Vec<RouteRule> {
    let applies = |route: &&Route| {
        route.invalid.is_none()
            && route
                .parents
                .iter()
                .any(|p| p.selects(&key.service, key.port, &key.port_name) && !conflicted(route, p, routes.clone()))
    };
    let consumer: Vec<&Route> = routes
        .clone()
        .filter(&applies)
        .filter(|r| r.key.object.namespace == key.client_namespace && key.client_namespace != key.service.namespace)
        .collect();
    let chosen: Vec<&Route> = if consumer.is_empty() {
        routes
            .clone()
            .filter(&applies)
            .filter(|r| r.key.object.namespace == key.service.namespace)
            .collect()
    } else {
        consumer
    };
    type Order<'r> = (
        Reverse<(u8, usize, usize, usize, usize)>,
        &'r str,
        &'r ObjectKey,
        usize,
        usize,
    );
    let mut entries: Vec<(Order<'_>, RouteRule)> = Vec::new();
    for route in chosen {
        for (r, rule) in route.rules.iter().enumerate() {
            let mut backends: Vec<WeightedBackend> = rule
                .backends
                .iter()
                .map(|b| WeightedBackend {
                    address: resolve(route, b, services, destination)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    weight: b.weight,
                    name: format!("{}/{}:{}", b.service.namespace, b.service.name, b.port.unwrap_or(0)),
                })
                .collect();
            // A rule without backendRefs (only filters, say) sends its
            // requests to the parent Service port itself, as the mesh's
            // conformance tests expect.
            if rule.backends.is_empty() {
                backends.push(WeightedBackend {
                    address: destination.to_string(),
                    weight: 1,
                    name: format!("{}/{}:{}", key.service.namespace, key.service.name, key.port),
                });
            }
            for (m, matched) in rule.matches.iter().enumerate() {
                let order = (
                    Reverse(matched.precedence),
                    route.created.as_str(),
                    &route.key.object,
                    r,
                    m,
                );
                entries.push((
                    order,
                    RouteRule {
                        route: Some(RouteRef {
                            kind: route.key.kind.kind().to_string(),
                            namespace: route.key.object.namespace.clone(),
                            name: route.key.object.name.clone(),
                        }),
                        rule: u32::try_from(r).unwrap_or(u32::MAX),
                        r#match: matched.proto.clone(),
                        backends: backends.clone(),
                        request_headers: rule.headers.clone(),
                        request_timeout_ms: rule.request_timeout_ms,
                        backend_request_timeout_ms: rule.backend_request_timeout_ms,
                        retry: rule.retry.clone(),
                    },
                ));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(_, rule)| rule).collect()
}

fn resolve(route: &Route, backend: &BackendRef, services: &impl Services, like: &SocketAddr) -> Option<SocketAddr> {
    if backend.refused.is_some() || not_permitted(route, backend, services).is_some() {
        return None;
    }
    services.address(&backend.service, backend.port?, like)
}

/// One parent's conditions for a route: `Accepted` and `ResolvedRefs`, as
/// (type, status, reason, message).
pub type Conditions = [(&'static str, bool, &'static str, String); 2];

/// The status of `route` on each of its Service parents.
pub fn statuses<'a>(
    route: &Route,
    routes: impl Iterator<Item = &'a Route> + Clone,
    services: &impl Services,
) -> Vec<(ParentRef, Conditions)> {
    let resolved = || -> (bool, &'static str, String) {
        for rule in &route.rules {
            for backend in &rule.backends {
                if let Some(problem) = backend
                    .refused
                    .clone()
                    .or_else(|| not_permitted(route, backend, services))
                {
                    return (false, problem.reason, problem.message);
                }
                let found = services
                    .ports(&backend.service)
                    .is_some_and(|ports| backend.port.is_some_and(|p| ports.iter().any(|(n, _)| *n == p)));
                if !found {
                    return (
                        false,
                        "BackendNotFound",
                        format!(
                            "backendRef {}/{} port {}: no such Service port",
                            backend.service.namespace,
                            backend.service.name,
                            backend.port.unwrap_or(0)
                        ),
                    );
                }
            }
        }
        (true, "ResolvedRefs", "all backendRefs resolved".to_string())
    };
    let (refs_ok, refs_reason, refs_message) = resolved();
    route
        .parents
        .iter()
        .map(|parent| {
            let accepted = if let Some(problem) = &route.invalid {
                (false, problem.reason, problem.message.clone())
            } else if conflicted(route, parent, routes.clone()) {
                (
                    false,
                    "Conflicted",
                    format!(
                        "a GRPCRoute is bound to Service {}/{}: an HTTPRoute on the same parent is not accepted (GEP-1426)",
                        parent.service.namespace, parent.service.name
                    ),
                )
            } else {
                match services.ports(&parent.service) {
                    None => (
                        false,
                        "NoMatchingParent",
                        format!("Service {}/{} does not exist", parent.service.namespace, parent.service.name),
                    ),
                    Some(ports)
                        if !ports
                            .iter()
                            .any(|(number, name)| parent.selects(&parent.service, *number, name)) =>
                    {
                        (
                            false,
                            "NoMatchingParent",
                            format!(
                                "Service {}/{} has no port matching port {:?} sectionName {:?}",
                                parent.service.namespace, parent.service.name, parent.port, parent.section
                            ),
                        )
                    }
                    Some(_) => (true, "Accepted", "bound to the Service by the mesh".to_string()),
                }
            };
            (
                parent.clone(),
                [
                    ("Accepted", accepted.0, accepted.1, accepted.2),
                    ("ResolvedRefs", refs_ok, refs_reason, refs_message.clone()),
                ],
            )
        })
        .collect()
}

/// The status patch that writes `status.parents` for `route` as
/// [`CONTROLLER_NAME`] would now (other controllers' entries kept), keeping
/// each condition's `lastTransitionTime` where its status did not change,
/// conditional on the route's `resourceVersion`; `None` when what is stored
/// already says so.
pub fn status_patch(route: &Route, computed: &[(ParentRef, Conditions)], now: &str) -> Option<serde_json::Value> {
    let stored_time = |parent: &serde_json::Value, kind: &str, status: &str| -> Option<String> {
        parent["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind && c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
    };
    let mut ours = Vec::new();
    let mut stored_by_parent: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    for stored in &route.own_status {
        stored_by_parent.insert(parent_id(&stored["parentRef"]), stored);
    }
    for (parent, conditions) in computed {
        // The parentRef as the spec wrote it (Gateway API: status parentRef
        // corresponds to a parentRef of the spec).
        let reference = parent.written.clone();
        let stored = stored_by_parent.get(&parent_id(&reference)).copied();
        let conditions: Vec<serde_json::Value> = conditions
            .iter()
            .map(|(kind, ok, reason, message)| {
                let status = if *ok { "True" } else { "False" };
                let time = stored
                    .and_then(|s| stored_time(s, kind, status))
                    .unwrap_or_else(|| now.to_string());
                serde_json::json!({
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": route.generation,
                    "lastTransitionTime": time,
                })
            })
            .collect();
        ours.push(serde_json::json!({
            "parentRef": reference,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions,
        }));
    }
    if ours == route.own_status {
        return None;
    }
    let mut parents = route.others_status.clone();
    parents.extend(ours);
    let mut patch = serde_json::json!({ "status": { "parents": parents } });
    if let Some(version) = &route.resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    Some(patch)
}

/// A parentRef's identity for comparing stored and computed status.
fn parent_id(reference: &serde_json::Value) -> String {
    format!(
        "{}/{}:{}:{}",
        reference["namespace"].as_str().unwrap_or(""),
        reference["name"].as_str().unwrap_or(""),
        reference["port"],
        reference["sectionName"].as_str().unwrap_or("")
    )
}

#[cfg(test)]
mod tests;
