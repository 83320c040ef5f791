use std::collections::HashMap;

use serde_json::json;

use super::*;

/// Services by key: ClusterIP and ports (number, name); and ReferenceGrants.
struct Cluster(HashMap<ObjectKey, (std::net::IpAddr, Vec<(u16, String)>)>, Vec<Grant>);

impl Services for Cluster {
    fn address(&self, service: &ObjectKey, port: u16, _: &SocketAddr) -> Option<SocketAddr> {
        let (ip, ports) = self.0.get(service)?;
        ports
            .iter()
            .any(|(n, _)| *n == port)
            .then_some(SocketAddr::new(*ip, port))
    }
    fn ports(&self, service: &ObjectKey) -> Option<Vec<(u16, String)>> {
        self.0.get(service).map(|(_, ports)| ports.clone())
    }
    fn grants(&self, kind: RouteKind, from_namespace: &str, service: &ObjectKey) -> bool {
        self.1.iter().any(|g| g.allows(kind, from_namespace, service))
    }
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn cluster() -> Cluster {
    let mut services = HashMap::new();
    for (i, name) in ["grpc", "grpc-v1", "grpc-v2"].iter().enumerate() {
        services.insert(
            key("mesh", name),
            (
                format!("198.19.0.{}", i + 10).parse().unwrap(),
                vec![(50051, "grpc".to_string())],
            ),
        );
    }
    Cluster(services, Vec::new())
}

fn grpc(namespace: &str, name: &str, created: &str, rules: serde_json::Value) -> Route {
    let object: GrpcRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"namespace": namespace, "name": name, "creationTimestamp": created, "generation": 1},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "grpc", "namespace": "mesh", "port": 50051}],
            "rules": rules,
        },
    }))
    .unwrap();
    grpc_route(&object)
}

fn http(namespace: &str, name: &str, rules: serde_json::Value) -> Route {
    let object: HttpRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": namespace, "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "grpc", "namespace": "mesh"}],
            "rules": rules,
        },
    }))
    .unwrap();
    http_route(&object)
}

fn table_for(routes: &[Route], client: &str) -> Vec<RouteRule> {
    table_in(&cluster(), routes, client)
}

fn table_in(cluster: &Cluster, routes: &[Route], client: &str) -> Vec<RouteRule> {
    let key = TableKey {
        service: key("mesh", "grpc"),
        port: 50051,
        port_name: "grpc".into(),
        client_namespace: client.into(),
    };
    table(&key, &"198.19.0.10:50051".parse().unwrap(), routes.iter(), cluster)
}

fn summary(rules: &[RouteRule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let path = r.r#match.as_ref().and_then(|m| m.path.as_ref());
            let backends: Vec<String> = r
                .backends
                .iter()
                .map(|b| format!("{}*{}", b.address, b.weight))
                .collect();
            format!(
                "{}:{} {} -> {}",
                r.route.as_ref().unwrap().name,
                r.rule,
                path.map(|p| p.value.as_str()).unwrap_or("*"),
                backends.join(",")
            )
        })
        .collect()
}

#[test]
fn a_method_match_goes_before_a_split_and_weights_pass_through() {
    let route = grpc(
        "mesh",
        "canary",
        "2026-01-01T00:00:00Z",
        json!([
            {"backendRefs": [{"name": "grpc-v1", "port": 50051, "weight": 90}, {"name": "grpc-v2", "port": 50051, "weight": 10}]},
            {"matches": [{"method": {"service": "pkg.Svc", "method": "Admin"}}],
             "backendRefs": [{"name": "grpc-v2", "port": 50051}]},
        ]),
    );
    assert_eq!(route.invalid, None);
    assert_eq!(
        summary(&table_for(&[route], "mesh")),
        [
            "canary:1 /pkg.Svc/Admin -> 198.19.0.12:50051*1",
            "canary:0 * -> 198.19.0.11:50051*90,198.19.0.12:50051*10",
        ]
    );
}

#[test]
fn ties_go_to_the_oldest_route_then_to_its_name() {
    let rules =
        json!([{"matches": [{"method": {"service": "pkg.Svc"}}], "backendRefs": [{"name": "grpc-v1", "port": 50051}]}]);
    let newer = grpc("mesh", "a-newer", "2026-02-01T00:00:00Z", rules.clone());
    let older = grpc("mesh", "z-older", "2026-01-01T00:00:00Z", rules.clone());
    let twin = grpc("mesh", "b-twin", "2026-01-01T00:00:00Z", rules);
    let names: Vec<String> = table_for(&[newer, older, twin], "mesh")
        .iter()
        .map(|r| r.route.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["b-twin", "z-older", "a-newer"]);
}

#[test]
fn a_consumer_route_replaces_the_producers_for_its_namespace_only() {
    let producer = grpc(
        "mesh",
        "producer",
        "2026-01-01T00:00:00Z",
        json!([{"backendRefs": [{"name": "grpc-v1", "port": 50051}]}]),
    );
    // A consumer route's backend in the Service's namespace needs a
    // ReferenceGrant there (its parentRef to the Service needs none).
    let consumer = grpc(
        "team-a",
        "consumer",
        "2026-01-01T00:00:00Z",
        json!([{"backendRefs": [{"name": "grpc-v2", "namespace": "mesh", "port": 50051}]}]),
    );
    let routes = [producer, consumer];
    assert_eq!(
        summary(&table_for(&routes, "team-a")),
        ["consumer:0 * -> *1"],
        "no grant: unresolved"
    );
    let status = statuses(&routes[1], routes.iter(), &cluster());
    assert_eq!(
        (status[0].1[0].1, status[0].1[1].1, status[0].1[1].2),
        (true, false, "RefNotPermitted")
    );
    let grant = |from_kind: &str, from: &str, name: Option<&str>| Grant {
        namespace: "mesh".into(),
        from: vec![("gateway.networking.k8s.io".into(), from_kind.into(), from.into())],
        to: vec![(String::new(), "Service".into(), name.map(str::to_string))],
    };
    let mut granted = cluster();
    granted.1 = vec![grant("GRPCRoute", "team-a", Some("grpc-v2"))];
    assert_eq!(
        summary(&table_in(&granted, &routes, "team-a")),
        ["consumer:0 * -> 198.19.0.12:50051*1"]
    );
    for (wrong, why) in [
        (grant("HTTPRoute", "team-a", None), "another kind"),
        (grant("GRPCRoute", "team-b", None), "another namespace"),
        (grant("GRPCRoute", "team-a", Some("grpc-v1")), "another Service"),
    ] {
        let mut cluster = cluster();
        cluster.1 = vec![wrong];
        assert_eq!(
            summary(&table_in(&cluster, &routes, "team-a")),
            ["consumer:0 * -> *1"],
            "a grant for {why}"
        );
    }
    assert_eq!(
        summary(&table_for(&routes, "team-b")),
        ["producer:0 * -> 198.19.0.11:50051*1"]
    );
    assert_eq!(
        summary(&table_for(&routes, "mesh")),
        ["producer:0 * -> 198.19.0.11:50051*1"]
    );
}

#[test]
fn an_http_route_beside_a_grpc_route_is_conflicted_and_applies_nowhere() {
    let grpc = grpc(
        "mesh",
        "g",
        "2026-01-01T00:00:00Z",
        json!([{"backendRefs": [{"name": "grpc-v1", "port": 50051}]}]),
    );
    let http = http(
        "mesh",
        "h",
        json!([{"backendRefs": [{"name": "grpc-v2", "port": 50051}]}]),
    );
    let routes = [grpc, http];
    assert_eq!(summary(&table_for(&routes, "mesh")), ["g:0 * -> 198.19.0.11:50051*1"]);
    let status = statuses(&routes[1], routes.iter(), &cluster());
    assert!(!status[0].1[0].1);
    assert_eq!(status[0].1[0].2, "Conflicted");

    // A GRPCRoute of another namespace (a consumer's) does not take the
    // producer's HTTPRoute away from everyone else.
    let elsewhere = grpc_in(
        "team-a",
        "g",
        json!([{"backendRefs": [{"name": "grpc-v1", "namespace": "mesh", "port": 50051}]}]),
    );
    let routes = [elsewhere, routes[1].clone()];
    assert_eq!(summary(&table_for(&routes, "mesh")), ["h:0 / -> 198.19.0.12:50051*1"]);
    assert!(statuses(&routes[1], routes.iter(), &cluster())[0].1[0].1, "accepted");
}

fn grpc_in(namespace: &str, name: &str, rules: serde_json::Value) -> Route {
    let object: GrpcRoute = serde_json::from_value(json!({
        "metadata": {"namespace": namespace, "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "grpc", "namespace": "mesh", "port": 50051}],
            "rules": rules,
        },
    }))
    .unwrap();
    grpc_route(&object)
}

#[test]
fn a_rule_without_backends_goes_to_the_parent_service_port() {
    let route = grpc_in(
        "mesh",
        "headers-only",
        json!([{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "b"}]}}]}]),
    );
    assert_eq!(route.invalid, None);
    assert_eq!(
        summary(&table_for(&[route], "mesh")),
        ["headers-only:0 * -> 198.19.0.10:50051*1"]
    );
}

#[test]
fn a_header_value_the_proxy_cannot_send_is_refused_by_the_control_plane() {
    let route = grpc_in(
        "mesh",
        "bad-header",
        json!([{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "caf\u{e9}\n"}]}}],
                "backendRefs": [{"name": "grpc-v1", "port": 50051}]}]),
    );
    let problem = route.invalid.expect("refused");
    assert_eq!(problem.reason, "UnsupportedValue");
    assert!(
        problem
            .message
            .contains("spec.rules[0].filters[0].requestHeaderModifier"),
        "{}",
        problem.message
    );
}

#[test]
fn http_precedence_is_exact_then_longest_prefix_then_method_then_headers() {
    let route = http(
        "mesh",
        "web",
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "grpc-v1", "port": 50051}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Canary", "value": "1"}]},
                         {"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
             "backendRefs": [{"name": "grpc-v2", "port": 50051}]},
            {"matches": [{"path": {"type": "Exact", "value": "/"}}], "backendRefs": [{"name": "grpc-v1", "port": 50051}]},
        ]),
    );
    assert_eq!(route.invalid, None);
    let table = table_for(&[route], "mesh");
    let order: Vec<(u32, String, usize)> = table
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().unwrap();
            (r.rule, m.method.clone(), m.headers.len())
        })
        .collect();
    assert_eq!(
        order,
        [
            (2, String::new(), 0),
            (1, "GET".to_string(), 0),
            (1, String::new(), 1),
            (0, String::new(), 0)
        ]
    );
    assert_eq!(
        table[2].r#match.as_ref().unwrap().headers[0].name,
        "x-canary",
        "header names in lower case"
    );
}

#[test]
fn what_the_mesh_cannot_carry_out_is_not_accepted_with_the_reason_and_routes_nothing() {
    let mirror = http(
        "mesh",
        "mirror",
        json!([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "grpc-v2", "port": 50051}}}],
                "backendRefs": [{"name": "grpc-v1", "port": 50051}]}]),
    );
    let problem = mirror.invalid.clone().expect("a mirror is not supported");
    assert_eq!(problem.reason, "UnsupportedValue");
    assert!(
        problem.message.contains("spec.rules[0].filters[0]"),
        "{}",
        problem.message
    );
    let bad_regex = grpc(
        "mesh",
        "bad",
        "2026-01-01T00:00:00Z",
        json!([{"matches": [{"method": {"type": "RegularExpression", "service": "pkg.(Svc", "method": "A"}}]}]),
    );
    assert!(
        bad_regex
            .invalid
            .as_ref()
            .unwrap()
            .message
            .contains("invalid regular expression")
    );
    let routes = [mirror, bad_regex];
    assert!(
        table_for(&routes, "mesh").is_empty(),
        "invalid routes change no traffic"
    );
    let status = statuses(&routes[0], routes.iter(), &cluster());
    assert_eq!(
        (status[0].1[0].0, status[0].1[0].1, status[0].1[0].2),
        ("Accepted", false, "UnsupportedValue")
    );
}

#[test]
fn an_unresolved_backend_is_an_empty_address_and_resolved_refs_false() {
    let route = grpc(
        "mesh",
        "gone",
        "2026-01-01T00:00:00Z",
        json!([{"backendRefs": [{"name": "nowhere", "port": 50051}, {"name": "grpc-v1", "port": 50051}]}]),
    );
    assert_eq!(
        summary(&table_for(std::slice::from_ref(&route), "mesh")),
        ["gone:0 * -> *1,198.19.0.11:50051*1"]
    );
    let status = statuses(&route, std::iter::once(&route), &cluster());
    assert!(status[0].1[0].1, "still accepted");
    assert_eq!((status[0].1[1].1, status[0].1[1].2), (false, "BackendNotFound"));
}

#[test]
fn status_is_written_only_when_it_changes_and_keeps_other_controllers() {
    let mut route = grpc(
        "mesh",
        "canary",
        "2026-01-01T00:00:00Z",
        json!([{"backendRefs": [{"name": "grpc-v1", "port": 50051}]}]),
    );
    route.others_status =
        vec![json!({"controllerName": "example.com/gateway", "parentRef": {"name": "gw"}, "conditions": []})];
    let computed = statuses(&route, std::iter::once(&route), &cluster());
    let patch = status_patch(&route, &computed, "2026-12-01T00:00:00Z").expect("nothing was written yet");
    let parents = patch["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0]["controllerName"], "example.com/gateway");
    assert_eq!(parents[1]["conditions"][0]["type"], "Accepted");
    assert_eq!(parents[1]["conditions"][0]["status"], "True");
    assert_eq!(
        parents[1]["parentRef"],
        json!({"group": "", "kind": "Service", "name": "grpc", "namespace": "mesh", "port": 50051}),
        "the parentRef as the spec wrote it"
    );
    route.own_status = vec![parents[1].clone()];
    assert_eq!(
        status_patch(&route, &computed, "2026-12-02T00:00:00Z"),
        None,
        "the same conditions, an hour later, are not written again"
    );
}

#[test]
fn retry_annotations_become_the_rules_policy_and_a_bad_one_is_refused() {
    let with = |annotations: serde_json::Value| {
        let object: GrpcRoute = serde_json::from_value(json!({
            "metadata": {"namespace": "mesh", "name": "retry", "annotations": annotations},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "grpc"}],
                     "rules": [{"backendRefs": [{"name": "grpc-v1", "port": 50051}]}]},
        }))
        .unwrap();
        grpc_route(&object)
    };
    let route = with(
        json!({"retry.strait.io/grpc": "Unavailable, cancelled,4", "retry.strait.io/http": "5xx,429", "retry.strait.io/limit": "3"}),
    );
    let policy = route.rules[0].retry.clone().expect("a retry policy");
    assert_eq!(policy.grpc_codes, [14, 1, 4]);
    assert_eq!(
        policy
            .http_statuses
            .iter()
            .map(|r| (r.first, r.last))
            .collect::<Vec<_>>(),
        [(500, 599), (429, 429)]
    );
    assert_eq!(policy.limit, 3);
    assert_eq!(with(json!({})).rules[0].retry, None);
    for bad in [
        json!({"retry.strait.io/grpc": "sometimes"}),
        json!({"retry.strait.io/http": "6xx"}),
        json!({"retry.strait.io/grpc": "ok"}),
        json!({"retry.strait.io/grpc": "unavailable", "retry.strait.io/limit": "50"}),
    ] {
        let problem = with(bad.clone()).invalid.unwrap_or_else(|| panic!("{bad} is refused"));
        assert!(problem.message.contains("retry.strait.io/"), "{}", problem.message);
    }
}
