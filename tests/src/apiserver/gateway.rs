//! The Gateway API kinds the lab serves as if their CRDs
//! (`gateway.networking.k8s.io/v1`, standard channel) were installed:
//! HTTPRoute and GRPCRoute, with a status subresource, and ReferenceGrant,
//! validated as their schemas validate them before anything is stored (422
//! Invalid, every problem named by its field path).
//!
//! Checked: the object decodes as the kind's schema (field types, required
//! fields, enum values: the `gateway-api` crate's types are generated from
//! the CRDs), list lengths (parentRefs ≤ 32, rules ≤ 16, matches ≤ 64 for
//! HTTPRoute and ≤ 64 for GRPCRoute, backendRefs ≤ 16, filters ≤ 16), port
//! numbers 1..65535, weights 0..1,000,000, paths that start with "/", a
//! GRPCRoute method match naming a service or a method, and durations of
//! the form `^([0-9]{1,5}(h|m|s|ms)){1,4}$` (GEP-2257). The CEL rules that
//! compare fields with each other beyond these are not evaluated.

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use serde_json::Value;

use super::error::ApiError;

const MAX_PARENT_REFS: usize = 32;
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_BACKEND_REFS: usize = 16;
const MAX_FILTERS: usize = 16;
const MAX_WEIGHT: i32 = 1_000_000;

/// Collects field errors worded as Kubernetes words them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at_most(&mut self, path: &str, len: usize, max: usize) {
        if len > max {
            self.0
                .push(format!("{path}: Too many: {len}: must have at most {max} items"));
        }
    }

    fn range(&mut self, path: &str, value: Option<i32>, min: i32, max: i32) {
        if let Some(value) = value
            && !(min..=max).contains(&value)
        {
            let bound = if value < min {
                format!("should be greater than or equal to {min}")
            } else {
                format!("should be less than or equal to {max}")
            };
            self.0
                .push(format!("{path}: Invalid value: {value}: {path} in body {bound}"));
        }
    }

    /// A rule's filters (their count) and backendRefs (each one's port and
    /// weight), as both route kinds' schemas bound them.
    fn rule_lists(
        &mut self,
        at: &dyn Fn(&str) -> String,
        filters: usize,
        backends: impl ExactSizeIterator<Item = (Option<i32>, Option<i32>)>,
    ) {
        self.at_most(&at("filters"), filters, MAX_FILTERS);
        self.at_most(&at("backendRefs"), backends.len(), MAX_BACKEND_REFS);
        for (b, (port, weight)) in backends.enumerate() {
            self.range(&at(&format!("backendRefs[{b}].port")), port, 1, 65535);
            self.range(&at(&format!("backendRefs[{b}].weight")), weight, 0, MAX_WEIGHT);
        }
    }

    fn invalid(&mut self, path: &str, value: &str, why: &str) {
        self.0.push(format!("{path}: Invalid value: {value:?}: {why}"));
    }
}

/// Whether `text` is a Gateway API duration (GEP-2257).
fn is_duration(text: &str) -> bool {
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "h", "m", "s"].into_iter().find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    (1..=4).contains(&parts)
}

fn decode<T: serde::de::DeserializeOwned>(kind: &str, name: &str, object: &Value) -> Result<T, ApiError> {
    serde_json::from_value(object.clone())
        .map_err(|e| ApiError::invalid(kind, name, format!("spec: Invalid value: {e}")))
}

/// Validates an HTTPRoute, GRPCRoute or ReferenceGrant (`kind`) before it
/// is stored.
pub fn validate(kind: &str, object: &Value) -> Result<(), ApiError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let qualified = format!("{kind}.gateway.networking.k8s.io");
    let mut problems = Problems::default();
    let parents = object.pointer("/spec/parentRefs").and_then(Value::as_array);
    problems.at_most("spec.parentRefs", parents.map_or(0, Vec::len), MAX_PARENT_REFS);
    for (i, parent) in parents.into_iter().flatten().enumerate() {
        let port = parent
            .get("port")
            .and_then(Value::as_i64)
            .map(|p| i32::try_from(p).unwrap_or(i32::MAX));
        problems.range(&format!("spec.parentRefs[{i}].port"), port, 1, 65535);
    }
    match kind {
        "HTTPRoute" => {
            let route: HttpRoute = decode(&qualified, name, object)?;
            let rules = route.spec.rules.unwrap_or_default();
            problems.at_most("spec.rules", rules.len(), MAX_RULES);
            for (r, rule) in rules.iter().enumerate() {
                let at = |part: &str| format!("spec.rules[{r}].{part}");
                let matches = rule.matches.as_deref().unwrap_or_default();
                problems.at_most(&at("matches"), matches.len(), MAX_MATCHES);
                for (m, matched) in matches.iter().enumerate() {
                    let regular = matches!(
                        matched.path.as_ref().and_then(|p| p.r#type.as_ref()),
                        Some(gateway_api::httproutes::HttpRouteRulesMatchesPathType::RegularExpression)
                    );
                    if let Some(value) = matched.path.as_ref().and_then(|p| p.value.as_deref())
                        && !regular
                        && !value.starts_with('/')
                    {
                        problems.invalid(
                            &at(&format!("matches[{m}].path.value")),
                            value,
                            "value must be an absolute path and start with '/'",
                        );
                    }
                }
                problems.rule_lists(
                    &at,
                    rule.filters.as_ref().map_or(0, Vec::len),
                    rule.backend_refs
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|b| (b.port, b.weight)),
                );
                if let Some(timeouts) = &rule.timeouts {
                    for (field, value) in [
                        ("request", &timeouts.request),
                        ("backendRequest", &timeouts.backend_request),
                    ] {
                        if let Some(value) = value
                            && !is_duration(value)
                        {
                            problems.invalid(
                                &at(&format!("timeouts.{field}")),
                                value,
                                "should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
                            );
                        }
                    }
                }
            }
        }
        "GRPCRoute" => {
            let route: GrpcRoute = decode(&qualified, name, object)?;
            let rules = route.spec.rules.unwrap_or_default();
            problems.at_most("spec.rules", rules.len(), MAX_RULES);
            for (r, rule) in rules.iter().enumerate() {
                let at = |part: &str| format!("spec.rules[{r}].{part}");
                let matches = rule.matches.as_deref().unwrap_or_default();
                problems.at_most(&at("matches"), matches.len(), MAX_MATCHES);
                for (m, matched) in matches.iter().enumerate() {
                    if let Some(method) = &matched.method
                        && method.service.as_deref().unwrap_or("").is_empty()
                        && method.method.as_deref().unwrap_or("").is_empty()
                    {
                        problems.invalid(
                            &at(&format!("matches[{m}].method")),
                            "",
                            "One or both of 'service' or 'method' must be specified",
                        );
                    }
                }
                problems.rule_lists(
                    &at,
                    rule.filters.as_ref().map_or(0, Vec::len),
                    rule.backend_refs
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|b| (b.port, b.weight)),
                );
            }
        }
        "ReferenceGrant" => {
            let grant: ReferenceGrant = decode(&qualified, name, object)?;
            for (field, len) in [("spec.from", grant.spec.from.len()), ("spec.to", grant.spec.to.len())] {
                if len == 0 {
                    problems
                        .0
                        .push(format!("{field}: Required value: must have at least 1 item"));
                }
                problems.at_most(field, len, 16);
            }
        }
        _ => {}
    }
    if problems.0.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&qualified, name, problems.0.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn routes_are_held_to_their_schema() {
        let good = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "canary", "namespace": "mesh"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "grpc", "port": 50051}],
                     "rules": [{"backendRefs": [{"name": "grpc-v2", "port": 50051, "weight": 10}]}]},
        });
        assert!(validate("GRPCRoute", &good).is_ok());
        let mut heavy = good.clone();
        heavy["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(2_000_000);
        let error = validate("GRPCRoute", &heavy).unwrap_err();
        assert_eq!(error.code, 422);
        assert!(
            error.message.contains("spec.rules[0].backendRefs[0].weight"),
            "{}",
            error.message
        );
        let mut typo = good.clone();
        typo["spec"]["rules"][0]["matches"] = json!([{"method": {"type": "Glob", "service": "x"}}]);
        assert_eq!(
            validate("GRPCRoute", &typo).unwrap_err().code,
            422,
            "an enum value the schema lacks"
        );
        let relative = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web"},
            "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "api"}}],
                                "timeouts": {"request": "1.5s"}}]},
        });
        let message = validate("HTTPRoute", &relative).unwrap_err().message;
        assert!(message.contains("matches[0].path.value"), "{message}");
        assert!(message.contains("timeouts.request"), "{message}");
        for ok in ["1h", "500ms", "1m30s", "0s", "99999ms"] {
            assert!(is_duration(ok), "{ok}");
        }
        for bad in ["", "1", "1.5s", "100000s", "1h1m1s1ms1h", "1d"] {
            assert!(!is_duration(bad), "{bad}");
        }
    }
}
