use std::collections::HashMap;

use http::Request;
use strait_api::destination::v1 as api;

use super::*;

fn rule(name: &str, matched: Option<api::RouteMatch>, backends: &[(&str, u32)]) -> api::RouteRule {
    api::RouteRule {
        route: Some(api::RouteRef {
            kind: "GRPCRoute".into(),
            namespace: "mesh".into(),
            name: name.into(),
        }),
        rule: 0,
        r#match: matched,
        backends: backends
            .iter()
            .map(|(address, weight)| api::WeightedBackend {
                address: (*address).into(),
                weight: *weight,
                name: format!("mesh/{address}"),
            })
            .collect(),
        request_headers: None,
        request_timeout_ms: 0,
        backend_request_timeout_ms: 0,
        retry: None,
    }
}

fn path(kind: PathKind, value: &str) -> Option<api::RouteMatch> {
    Some(api::RouteMatch {
        path: Some(api::PathMatch {
            kind: kind as i32,
            value: value.into(),
        }),
        ..api::RouteMatch::default()
    })
}

fn request(uri: &str) -> Request<()> {
    Request::builder().method("POST").uri(uri).body(()).unwrap()
}

fn selected(table: &Table, uri: &str) -> Option<String> {
    table.select(&request(uri)).ok().map(|r| r.route.name.clone())
}

#[test]
fn prefixes_match_whole_path_elements_and_the_first_matching_rule_wins() {
    let table = Table::compile(&[
        rule(
            "exact",
            path(PathKind::Exact, "/pkg.Svc/Admin"),
            &[("198.19.0.2:80", 1)],
        ),
        rule("prefix", path(PathKind::Prefix, "/pkg.Svc/"), &[("198.19.0.1:80", 1)]),
        rule(
            "regex",
            path(PathKind::RegularExpression, "/[^/]+/Get"),
            &[("198.19.0.1:80", 1)],
        ),
    ]);
    assert_eq!(selected(&table, "/pkg.Svc/Admin").as_deref(), Some("mesh/exact"));
    assert_eq!(selected(&table, "/pkg.Svc/List").as_deref(), Some("mesh/prefix"));
    assert_eq!(selected(&table, "/pkg.Svc").as_deref(), Some("mesh/prefix"));
    assert_eq!(
        selected(&table, "/pkg.SvcX/Get").as_deref(),
        Some("mesh/regex"),
        "not a prefix of /pkg.Svc"
    );
    assert_eq!(
        selected(&table, "/other.Svc/GetMore"),
        None,
        "a regular expression matches the whole path"
    );
    assert_eq!(
        table.select(&request("/nope")).unwrap_err(),
        RouteError::NoMatch {
            method: "POST".into(),
            path: "/nope".into()
        }
    );
}

#[test]
fn headers_methods_and_query_parameters_all_must_match() {
    let matched = api::RouteMatch {
        path: None,
        method: "GET".into(),
        headers: vec![api::ValueMatch {
            name: "x-canary".into(),
            value: "yes|true".into(),
            regular_expression: true,
        }],
        query_params: vec![api::ValueMatch {
            name: "v".into(),
            value: "two words".into(),
            regular_expression: false,
        }],
    };
    let table = Table::compile(&[rule("canary", Some(matched), &[("198.19.0.2:80", 1)])]);
    let get = |uri: &str, canary: Option<&str>| {
        let mut builder = Request::builder().method("GET").uri(uri);
        if let Some(value) = canary {
            builder = builder.header("X-Canary", value);
        }
        table.select(&builder.body(()).unwrap()).is_ok()
    };
    assert!(get("/a?v=two+words", Some("true")));
    assert!(get("/a?x=1&v=two%20words", Some("yes")));
    assert!(!get("/a?v=two+words", Some("truest")), "whole-value regular expression");
    assert!(!get("/a?v=two+words", None));
    assert!(!get("/a?v=other", Some("yes")));
    assert!(table.select(&request("/a?v=two+words")).is_err(), "POST is not GET");
}

#[test]
fn backends_are_picked_by_weight_and_weight_zero_or_unresolved_ones_say_why() {
    let table = Table::compile(&[rule(
        "split",
        None,
        &[("198.19.0.1:80", 90), ("198.19.0.2:80", 10), ("198.19.0.3:80", 0)],
    )]);
    let split = table.select(&request("/")).unwrap();
    let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
    for _ in 0..10_000 {
        *counts.entry(split.pick(None).unwrap()).or_default() += 1;
    }
    let v2 = f64::from(counts[&"198.19.0.2:80".parse().unwrap()]) / 10_000.0;
    assert!((0.08..=0.12).contains(&v2), "v2 took {v2}");
    assert!(
        !counts.contains_key(&"198.19.0.3:80".parse().unwrap()),
        "weight 0 takes nothing"
    );

    let canary: SocketAddr = "198.19.0.2:80".parse().unwrap();
    for _ in 0..1000 {
        assert_ne!(
            split.pick(Some(canary)).unwrap(),
            canary,
            "a retry avoids the backend that failed"
        );
    }
    let only = Table::compile(&[rule("only", None, &[("198.19.0.2:80", 1), ("198.19.0.3:80", 0)])]);
    assert_eq!(
        only.select(&request("/")).unwrap().pick(Some(canary)).unwrap(),
        canary,
        "unless it is the only one with a weight"
    );
    let none = Table::compile(&[rule("none", None, &[("198.19.0.1:80", 0)])]);
    assert!(matches!(
        none.select(&request("/")).unwrap().pick(None),
        Err(RouteError::NoBackend { .. })
    ));
    let unresolved = Table::compile(&[rule("gone", None, &[("", 1)])]);
    assert!(matches!(
        unresolved.select(&request("/")).unwrap().pick(None),
        Err(RouteError::Unresolved { .. })
    ));
}

#[test]
fn the_tighter_of_the_routes_timeout_and_grpc_timeout_holds() {
    let mut proto = rule("slow", None, &[("198.19.0.1:80", 1)]);
    proto.request_timeout_ms = 1000;
    proto.backend_request_timeout_ms = 300;
    // Without retries, one try is the whole request: the tighter holds.
    let table = Table::compile(&[proto]);
    let slow = table.select(&request("/")).unwrap();
    let mut headers = HeaderMap::new();
    assert_eq!(slow.deadline(&headers, true), Some(Duration::from_millis(300)));
    headers.insert("grpc-timeout", HeaderValue::from_static("100m"));
    assert_eq!(slow.deadline(&headers, true), Some(Duration::from_millis(100)));
    assert_eq!(
        slow.deadline(&headers, false),
        Some(Duration::from_millis(300)),
        "grpc-timeout binds gRPC calls only"
    );
    headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
    assert_eq!(slow.deadline(&headers, true), Some(Duration::from_millis(300)));
    for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S"] {
        headers.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
        assert_eq!(grpc_timeout(&headers), None, "{bad:?}");
    }
}

#[test]
fn header_changes_set_then_add_then_remove() {
    let mut proto = rule("headers", None, &[("198.19.0.1:80", 1)]);
    proto.request_headers = Some(api::HeaderModifier {
        set: vec![api::Header {
            name: "x-version".into(),
            value: "v2".into(),
        }],
        add: vec![api::Header {
            name: "x-tag".into(),
            value: "canary".into(),
        }],
        remove: vec!["x-secret".into()],
    });
    let table = Table::compile(&[proto]);
    let mut headers = HeaderMap::new();
    headers.insert("x-version", HeaderValue::from_static("v1"));
    headers.insert("x-tag", HeaderValue::from_static("a"));
    headers.insert("x-secret", HeaderValue::from_static("s"));
    table.select(&request("/")).unwrap().modify(&mut headers);
    assert_eq!(headers["x-version"], "v2");
    assert_eq!(headers.get_all("x-tag").iter().count(), 2);
    assert!(!headers.contains_key("x-secret"));
}

#[test]
fn a_rule_the_proxy_cannot_compile_is_left_out_and_the_rest_still_route() {
    let bad = rule(
        "bad",
        path(PathKind::RegularExpression, "(unclosed"),
        &[("198.19.0.1:80", 1)],
    );
    let good = rule("good", None, &[("198.19.0.1:80", 1)]);
    let table = Table::compile(&[bad, good]);
    assert!(!table.is_empty());
    assert_eq!(selected(&table, "/x").as_deref(), Some("mesh/good"));
}

#[test]
fn the_budget_allows_a_fifth_of_the_requests_plus_a_floor_and_no_more() {
    let budget = Budget::default();
    // The floor's first second is there at once; then each request earns
    // a fifth of a retry.
    let mut granted = 0;
    for _ in 0..1000 {
        budget.deposit();
        if budget.withdraw() {
            granted += 1;
        }
    }
    // 1000 requests × 0.2 + the 10 saved at the start + what the floor earned
    // while the loop ran (well under a second).
    assert!((200..=230).contains(&granted), "{granted} retries for 1000 requests");
    let mut more = 0;
    while budget.withdraw() {
        more += 1;
        assert!(more < 50, "an empty budget grants nothing more");
    }
}

#[test]
fn retries_want_the_listed_answers_only() {
    let mut proto = rule("retry", None, &[("198.19.0.1:80", 1)]);
    proto.retry = Some(api::RetryPolicy {
        limit: 3,
        http_statuses: vec![api::StatusRange { first: 500, last: 599 }],
        grpc_codes: vec![14],
    });
    let table = Table::compile(&[proto]);
    let retry = table.select(&request("/")).unwrap().retry.as_ref().unwrap();
    let answer = |status: u16, grpc_status: Option<&str>| {
        let mut response = http::Response::builder().status(status);
        if let Some(code) = grpc_status {
            response = response.header("grpc-status", code);
        }
        response.body(()).unwrap()
    };
    assert!(retry.wants(&answer(503, None), false));
    assert!(!retry.wants(&answer(404, None), false));
    assert!(retry.wants(&answer(200, Some("14")), true));
    assert!(!retry.wants(&answer(200, Some("4")), true));
    assert!(
        !retry.wants(&answer(200, None), true),
        "a status in the trailers is not seen: not retried"
    );
    assert!(
        !retry.wants(&answer(503, None), true),
        "gRPC is judged by its status code"
    );
}

#[test]
fn a_rules_matches_share_one_budget_and_keep_it_when_the_routes_change() {
    let matched = |value: &str| path(PathKind::Prefix, value);
    let mut first = rule("retry", matched("/a"), &[("198.19.0.1:80", 1)]);
    first.retry = Some(api::RetryPolicy {
        limit: 1,
        http_statuses: vec![api::StatusRange { first: 503, last: 503 }],
        grpc_codes: Vec::new(),
    });
    let mut second = first.clone();
    second.r#match = matched("/b");
    let table = Table::compile(&[first.clone(), second.clone()]);
    let budget = |table: &Table, uri: &str| {
        table
            .select(&request(uri))
            .unwrap()
            .retry
            .as_ref()
            .unwrap()
            .budget
            .clone()
    };
    assert!(
        Arc::ptr_eq(&budget(&table, "/a"), &budget(&table, "/b")),
        "one budget per rule"
    );
    first.backends[0].weight = 2;
    let changed = Table::compile_after(&table, &[first, second]);
    assert!(
        Arc::ptr_eq(&budget(&table, "/a"), &budget(&changed, "/a")),
        "kept across a change"
    );
}

#[test]
fn a_retry_tells_the_server_the_time_left() {
    let mut headers = HeaderMap::new();
    set_grpc_timeout(&mut headers, Duration::from_millis(250));
    assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(250)));
    set_grpc_timeout(&mut headers, Duration::from_secs(200_000));
    assert_eq!(headers["grpc-timeout"], "200000S");
}
