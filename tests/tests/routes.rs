//! Gateway API routes in the mesh (GAMMA), on the lab: GRPCRoutes and an
//! HTTPRoute (with curl as the client) whose parentRefs name a Service split
//! its calls by weight, match methods, paths and headers, change headers,
//! bound calls by a timeout, retry within a budget, take weight changes on
//! live traffic, yield to a consumer namespace's own route there only, and
//! one the mesh cannot carry out is refused in its status and changes
//! nothing; failure accrual takes a failing endpoint out and lets it back
//! when it recovers.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    Lab, Prometheus, assert_no_failed_calls, dashboard, dashboard_expr, eventually, merge_windows, sum_metric,
};

/// Calls by version: pods are named after their Deployment.
fn by_version(by_pod: &Value) -> (u64, u64, u64) {
    let mut counts = (0, 0, 0);
    for (pod, count) in by_pod.as_object().unwrap() {
        let count = count.as_u64().unwrap();
        if pod.starts_with("grpc-v1-") {
            counts.0 += count;
        } else if pod.starts_with("grpc-v2-") {
            counts.1 += count;
        } else {
            counts.2 += count;
        }
    }
    counts
}

/// The condition `kind` of the GRPCRoute's (`namespace/name`, or a name in
/// mesh) first parent written by strait.
fn condition(lab: &Lab, route: &str, kind: &str) -> Option<Value> {
    let (namespace, name) = route.split_once('/').unwrap_or(("mesh", route));
    let object = lab.get(&format!(
        "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/grpcroutes/{name}"
    ));
    let parents = object.pointer("/status/parents")?.as_array()?.clone();
    let ours = parents.into_iter().find(|p| p["controllerName"] == "strait.io/mesh")?;
    ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

fn wait_for_condition(lab: &Lab, route: &str, kind: &str) -> Value {
    let mut found = None;
    eventually(Duration::from_secs(10), &format!("{route}'s {kind} condition"), || {
        found = condition(lab, route, kind);
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn gateway_api_routes_split_match_time_out_retry_follow_changes_and_refuse_what_they_cannot_do() {
    let Some(lab) = Lab::up("routes", &["routes.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let prometheus = Prometheus::start(&lab);

    // The control plane accepts the routes it can carry out and says why
    // it does not accept the one it cannot.
    let accepted = wait_for_condition(&lab, "split", "Accepted");
    assert_eq!(accepted["status"], "True", "{accepted}");
    let resolved = wait_for_condition(&lab, "split", "ResolvedRefs");
    assert_eq!(resolved["status"], "True", "{resolved}");
    let refused = wait_for_condition(&lab, "mirror", "Accepted");
    assert_eq!(refused["status"], "False", "{refused}");
    assert_eq!(refused["reason"], "UnsupportedValue", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("RequestMirror"),
        "the message names what is not supported: {refused}"
    );

    // 90/10 over 10,000 calls on one connection.
    let result = lab.grpc_calls_with(&client, "grpc.mesh:50051", 10000, 8, &[]);
    assert_no_failed_calls(&result, "the split");
    let (v1, v2, other) = by_version(&result["by_pod"]);
    assert_eq!(other, 0, "{result}");
    let share = v2 as f64 / (v1 + v2) as f64;
    assert!(
        (0.08..=0.12).contains(&share),
        "v2's share is {share:.3}, not 10% ± 2%: {result}"
    );

    // The proxy counts the calls by route (bounded labels from the route
    // object).
    let metrics = lab.metrics(&client);
    let routed = sum_metric(
        &metrics,
        "strait_requests_total",
        &[
            "route_kind=\"GRPCRoute\"",
            "route_name=\"mesh/split\"",
            "dst_service=\"grpc-v2\"",
        ],
    );
    assert!(
        routed >= v2 as f64,
        "requests of route mesh/split to grpc-v2: {routed} < {v2}"
    );

    // A method match and a header match send those calls to v2 only.
    for (what, extra) in [
        ("the Admin method", ["--method", "Admin"]),
        ("x-canary: yes", ["--header", "x-canary=yes"]),
    ] {
        let matched = lab.grpc_calls_with(&client, "grpc.mesh:50051", 300, 4, &extra);
        assert_no_failed_calls(&matched, what);
        assert_eq!(by_version(&matched["by_pod"]), (0, 300, 0), "{what}: {matched}");
    }

    // A consumer route in namespace team applies to team's clients only.
    let team_client = lab.pod("team", "client-");
    let team = lab.grpc_calls(&team_client, "grpc.mesh:50051", 200);
    assert_no_failed_calls(&team, "team's calls to mesh/grpc");
    let pods: Vec<&String> = team["by_pod"].as_object().unwrap().keys().collect();
    assert!(
        pods.iter().all(|p| p.starts_with("grpc-team-")),
        "team's own route sends to its copy: {team}"
    );
    let producer = lab.grpc_calls(&client, "grpc.mesh:50051", 200);
    assert_eq!(
        by_version(&producer["by_pod"]).2,
        0,
        "mesh's clients keep the producer's routes: {producer}"
    );

    // A backendRef across namespaces needs a ReferenceGrant: until mesh
    // grants it, team's route to mesh/grpc-v2 is unresolved (its calls are
    // answered by the proxy); with the grant, they reach v2.
    let unresolved = wait_for_condition(&lab, "team/to-v2", "ResolvedRefs");
    assert_eq!(unresolved["status"], "False", "{unresolved}");
    assert_eq!(unresolved["reason"], "RefNotPermitted", "{unresolved}");
    let refused = lab.grpc_calls_with(&team_client, "grpc-v1.mesh:50051", 20, 2, &[]);
    assert_eq!(refused["ok"], 0, "{refused}");
    lab.apply("routes-grant.yaml");
    eventually(Duration::from_secs(10), "team/to-v2 resolved once granted", || {
        condition(&lab, "team/to-v2", "ResolvedRefs").is_some_and(|c| c["status"] == "True")
    });
    let mut granted = Value::Null;
    eventually(Duration::from_secs(5), "team's calls to mesh/grpc-v1 reach v2", || {
        granted = lab.grpc_calls_with(&team_client, "grpc-v1.mesh:50051", 100, 2, &[]);
        granted["ok"] == 100
    });
    assert_eq!(by_version(&granted["by_pod"]), (0, 100, 0), "{granted}");

    // A backend failing 20% of calls: with the retry policy no call fails,
    // and the retries stay within the budget; without one, the failures
    // reach the client. 20% failures take 0.25 retries per call (a retry
    // fails 20% of the time too); at 50 calls/s that is about 12.5/s, well
    // within the budget (20% of 50/s plus 10/s = 20/s).
    let retried = lab.grpc_calls_with(&client, "flaky.mesh:50051", 400, 4, &["--rate", "50"]);
    let metrics = lab.metrics(&client);
    let retry_lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("strait_retries")).collect();
    assert_no_failed_calls(
        &retried,
        &format!("calls to a flaky backend with retries ({retry_lines:?})"),
    );
    let retries = sum_metric(
        &metrics,
        "strait_retries_total",
        &["route_name=\"mesh/flaky\"", "outcome=\"retried\""],
    );
    let exhausted = sum_metric(
        &metrics,
        "strait_retries_total",
        &["route_name=\"mesh/flaky\"", "outcome=\"budget_exhausted\""],
    );
    assert!(
        (50.0..=160.0).contains(&retries),
        "about a quarter of 400 calls retried: {retries}"
    );
    assert_eq!(exhausted, 0.0, "the budget (20% + 10/s) covers this load");
    let raw = lab.grpc_calls(&client, "flaky-raw.mesh:50051", 500);
    let failed = raw["by_status"]["Unavailable"].as_u64().unwrap_or(0);
    assert!(
        (50..=150).contains(&failed),
        "about 20% of 500 calls fail without retries: {raw}"
    );

    // An HTTPRoute, with curl as the client: a path and header match sends
    // to v2 with the rule's header changes, a path prefix is bounded by its
    // timeout (504 from the proxy, long before the server's 1 s), anything
    // else goes to v1.
    let curl = |args: &[&str]| lab.exec_ok(&client, &[&["curl", "-sS", "--max-time", "10"], args].concat());
    let headers: Value = serde_json::from_str(&curl(&["-H", "x-version: v2", "http://web.mesh/headers"])).unwrap();
    assert_eq!(headers["x-route"], "canary", "the rule's header is set: {headers}");
    assert!(
        headers.get("x-version").is_none(),
        "and the removed one gone: {headers}"
    );
    let pod_of = |args: &[&str]| {
        let out = curl(&[&["-D", "-", "-o", "/dev/null"], args].concat());
        out.lines()
            .find_map(|l| l.strip_prefix("x-pod: "))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("no x-pod in {out}"))
    };
    assert!(pod_of(&["-H", "x-version: v2", "http://web.mesh/headers"]).starts_with("web-v2-"));
    assert!(
        pod_of(&["http://web.mesh/headers"]).starts_with("web-v1-"),
        "no header, no match"
    );
    assert!(pod_of(&["http://web.mesh/"]).starts_with("web-v1-"));
    let timed_out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "http://web.mesh/sleep/1000",
    ]);
    let (code, seconds) = timed_out.split_once(' ').unwrap();
    assert_eq!(code, "504", "{timed_out}");
    assert!(
        seconds.parse::<f64>().unwrap() < 1.0,
        "the request ended before the server's 1 s: {timed_out}"
    );

    // The route the mesh cannot carry out changes nothing: grpc-v1's calls
    // stay on v1.
    let direct = lab.grpc_calls(&client, "grpc-v1.mesh:50051", 200);
    assert_no_failed_calls(&direct, "calls to grpc-v1 beside a refused route");
    assert_eq!(by_version(&direct["by_pod"]), (200, 0, 0), "{direct}");

    // A timeout of 100 ms on calls that take 1 s: DEADLINE_EXCEEDED, long
    // before the server would have answered.
    let slow = lab.grpc_calls_with(&client, "slow.mesh:50051", 4, 2, &[]);
    assert_eq!(slow["ok"], 0, "{slow}");
    assert_eq!(slow["by_status"]["DeadlineExceeded"], 4, "{slow}");
    assert!(
        slow["p99_ms"].as_f64().unwrap() < 1000.0,
        "the calls ended before the server's 1 s: {slow}"
    );

    // New weights apply to live traffic on the open connection.
    let live = lab.spawn_app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc.mesh:50051",
            "--duration",
            "20s",
            "--rate",
            "200",
            "--concurrency",
            "4",
            "--report-every",
            "50",
        ],
    );
    live.next(Duration::from_secs(10)).expect("the client reports");
    lab.apply("routes-shift.yaml");
    let applied = Instant::now();
    let mut shifted = Vec::new();
    // Within 2 s of the change, plus two report windows (0.25 s each).
    eventually(
        Duration::from_millis(2500),
        "all calls on v2 after the weights moved",
        || {
            let window = live.next(Duration::from_secs(5)).expect("the client reports");
            let only_v2 = matches!(by_version(&window["by_pod"]), (0, n, 0) if n > 0);
            if only_v2 {
                shifted.push(window);
            } else {
                shifted.clear();
            }
            shifted.len() >= 2
        },
    );
    eprintln!("the new weights applied within {:?}", applied.elapsed());
    let after = merge_windows(&shifted);
    assert_eq!(by_version(&after).0, 0, "{after}");
    drop(live);

    // Failure accrual: an endpoint failing every call is ejected and the
    // others carry the load; once it recovers it gets traffic again.
    let failing_pod = lab.pod("mesh", "accrual-");
    let failing = failing_pod.rsplit('/').next().unwrap().to_string();
    let marker = format!("/tmp/strait-lab-fail-{failing}");
    let steady = lab.spawn_app(
        &client,
        &[
            "grpc-client",
            "--to",
            "accrual.mesh:50051",
            "--duration",
            "40s",
            "--rate",
            "100",
            "--concurrency",
            "4",
            "--report-every",
            "50",
        ],
    );
    steady.next(Duration::from_secs(10)).expect("the client reports");
    lab.exec_ok(&failing_pod, &["touch", &marker]);
    let failing_windows: Vec<Value> = (0..8)
        .map(|_| steady.next(Duration::from_secs(10)).expect("the client reports"))
        .collect();
    let during = merge_windows(&failing_windows);
    let errors = during["error"].as_u64().unwrap_or(0);
    assert!(
        errors <= 20,
        "an endpoint failing every call is ejected after a few: {errors} failed of 400"
    );
    let others: u64 = during
        .as_object()
        .unwrap()
        .iter()
        .filter(|(pod, _)| *pod != "error" && **pod != failing)
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    // The first window may hold calls the endpoint answered before it failed.
    assert!(others >= 350, "the other endpoints carry the load: {during}");
    let ejections = sum_metric(
        &lab.metrics(&client),
        "strait_balancer_ejections_total",
        &["dst_service=\"accrual\""],
    );
    assert!(ejections >= 1.0, "the ejection is counted");
    lab.exec_ok(&failing_pod, &["rm", &marker]);
    eventually(
        Duration::from_secs(30),
        "the recovered endpoint gets traffic again",
        || {
            let window = steady.next(Duration::from_secs(10)).expect("the client reports");
            window["by_pod"].get(&failing).is_some_and(|n| n.as_u64().unwrap() > 0)
        },
    );
    drop(steady);

    // The canary demo runs on this lab too, and shows what it says.
    let demo = lab.cli_ok(&["demo", "canary"]);
    assert!(
        demo.contains("grpc-v2") && demo.contains("100.0%"),
        "Admin calls all on v2:\n{demo}"
    );
    assert!(
        demo.contains("with retry.strait.io/grpc: unavailable: 0 of") && demo.contains(", 0 refused by the budget"),
        "retries hide the failing canary:\n{demo}"
    );

    // The dashboard's route panels show the routes, from a real Prometheus.
    prometheus.wait_for_targets(12);
    let panels = dashboard()["panels"].as_array().unwrap().clone();
    for title in [
        "Requests by route and backend",
        "Success rate by route and backend",
        "Retries by route",
    ] {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"));
        let expr = dashboard_expr(&panel["targets"][0], "1m");
        let mut answer = Vec::new();
        eventually(Duration::from_secs(15), &format!("data in the panel {title}"), || {
            answer = prometheus.query(&expr);
            !answer.is_empty()
        });
        if title == "Requests by route and backend" {
            let routes: Vec<&str> = answer
                .iter()
                .filter_map(|s| s["metric"]["route_name"].as_str())
                .collect();
            assert!(
                routes.contains(&"canary/canary") && routes.contains(&"mesh/split"),
                "{answer:?}"
            );
        }
    }
    lab.down();
}
