//! Per-request balancing of gRPC and HTTP/1 across a Service's endpoints,
//! shown on the lab with tonic and hyper applications.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lab, Streaming, assert_even, merge_windows};

const EVEN: f64 = 0.15;

/// Reads report windows until `pods` distinct pods have answered in one.
fn windows_until_pods(client: &Streaming, pods: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let window = client
            .next(deadline.saturating_duration_since(Instant::now()))
            .expect("the client stopped reporting");
        let answered = window["by_pod"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|p| *p != "error")
            .count();
        seen.push(window);
        if answered >= pods {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{pods} pods did not all take traffic within {within:?}: {seen:?}"
        );
    }
}

fn windows(client: &Streaming, count: usize) -> Vec<Value> {
    (0..count)
        .map(|_| {
            client
                .next(Duration::from_secs(30))
                .expect("the client stopped reporting")
        })
        .collect()
}

/// One client connection: 3000 calls spread evenly over 3 pods; after the
/// Deployment scales to 5, the new pods get traffic within 5 s and the next
/// 5000 calls spread evenly over all 5.
fn balances_and_follows_scaling(lab: &Lab, client_args: &[&str], report: usize) {
    let client = lab.pod("mesh", "client-");
    let run = lab.spawn_app(&client, client_args);
    let first = windows(&run, 3000 / report);
    assert_even(&merge_windows(&first), 3, EVEN, "3000 calls over 3 pods");

    let deployment = if client_args[0] == "grpc-client" {
        "mesh/grpc"
    } else {
        "mesh/web"
    };
    lab.cli_ok(&["scale", deployment, "5"]);
    windows_until_pods(&run, 5, Duration::from_secs(5));
    let next = windows(&run, 5000 / report);
    assert_even(&merge_windows(&next), 5, EVEN, "5000 calls over 5 pods");
}

#[test]
fn grpc_calls_on_one_connection_spread_over_pods_and_follow_scaling() {
    let Some(lab) = Lab::up("balance-grpc", &["grpc.yaml"]) else {
        return;
    };
    let args = [
        "grpc-client",
        "--to",
        "grpc.mesh:50051",
        "--calls",
        "20000",
        "--concurrency",
        "4",
        "--rate",
        "1000",
        "--report-every",
        "250",
    ];
    balances_and_follows_scaling(&lab, &args, 250);

    // The control, in the same test: without the mesh one connection is one pod.
    let plain = lab.pod("plain", "client-");
    let result = lab.app(
        &plain,
        &[
            "grpc-client",
            "--to",
            "grpc.plain:50051",
            "--calls",
            "300",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(result["ok"], 300);
    assert_eq!(result["by_pod"].as_object().unwrap().len(), 1, "unmeshed: {result}");

    // The Service deleted and made again gets a new ClusterIP, as in
    // Kubernetes: the meshed client's calls to it reach every pod again
    // (the proxy's balancer for the name's old address must not stand in).
    let cluster_ip = |lab: &Lab| lab.get("/api/v1/namespaces/mesh/services/grpc")["spec"]["clusterIP"].clone();
    let old_ip = cluster_ip(&lab);
    lab.cli_ok(&["delete", "/api/v1/namespaces/mesh/services/grpc"]);
    lab.apply("grpc.yaml");
    let new_ip = cluster_ip(&lab);
    assert_ne!(new_ip, old_ip, "a Service made again has a new ClusterIP");
    let client = lab.pod("mesh", "client-");
    let result = lab.grpc_calls(&client, "grpc.mesh:50051", 600);
    assert_eq!(result["ok"], 600, "{result}");
    assert!(result["by_pod"].as_object().unwrap().len() >= 3, "{result}");
}

#[test]
fn http1_keep_alive_requests_spread_over_pods_and_follow_scaling() {
    let Some(lab) = Lab::up("balance-http1", &["grpc.yaml"]) else {
        return;
    };
    let args = [
        "http-client",
        "--to",
        "web.mesh:80",
        "--requests",
        "20000",
        "--rate",
        "1000",
        "--report-every",
        "250",
    ];
    balances_and_follows_scaling(&lab, &args, 250);
}

#[test]
fn streaming_large_messages_and_statuses_pass_intact() {
    let Some(lab) = Lab::up("balance-streams", &["grpc.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let grpc = |args: &[&str]| {
        let mut all = vec!["grpc-client", "--to", "grpc:50051"];
        all.extend_from_slice(args);
        lab.app(&client, &all)
    };
    let streamed = grpc(&["--mode", "server-stream", "--calls", "1000", "--payload", "64"]);
    assert_eq!(streamed["ok"], 1, "1000 server-streamed messages in order: {streamed}");
    let sixteen_mib = (16 << 20).to_string();
    let echoed = grpc(&["--mode", "bidi", "--calls", "2", "--payload", &sixteen_mib]);
    assert_eq!(echoed["ok"], 1, "16 MiB messages echoed both ways: {echoed}");
    let uploaded = grpc(&["--mode", "client-stream", "--calls", "2", "--payload", &sixteen_mib]);
    assert_eq!(uploaded["ok"], 1, "{uploaded}");
    let failed = grpc(&[
        "--calls",
        "3",
        "--fail-code",
        "5",
        "--fail-message",
        "no such widget: ünïcode %",
    ]);
    assert_eq!(failed["by_status"]["NotFound"], 3, "{failed}");
    assert_eq!(failed["messages"][0], "no such widget: ünïcode %");
    let timed = grpc(&["--calls", "20", "--deadline", "5s"]);
    assert_eq!(timed["ok"], 20, "calls with a deadline: {timed}");
}

#[test]
fn websocket_echo_and_http_bodies_pass_through_the_mesh() {
    let Some(lab) = Lab::up("balance-ws", &["grpc.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let ws = lab.app(&client, &["ws-client", "--to", "web:80", "--messages", "100"]);
    assert_eq!(ws["echoed"], 100, "{ws}");
    for extra in [&["--chunked"][..], &["--expect-continue"], &[]] {
        let mut args = vec![
            "http-client",
            "--to",
            "web:80",
            "--path",
            "/echo",
            "--requests",
            "5",
            "--post-bytes",
            "300000",
        ];
        args.extend_from_slice(extra);
        let posted = lab.app(&client, &args);
        assert_eq!(posted["echo_mismatches"], 0, "{extra:?}: {posted}");
    }
    let statuses = lab.app(
        &client,
        &[
            "http-client",
            "--to",
            "web:80",
            "--path",
            "/status/503",
            "--requests",
            "3",
        ],
    );
    assert_eq!(
        statuses["by_status"]["503"], 3,
        "an application's 503 passes through: {statuses}"
    );
}

#[test]
fn a_pod_killed_under_load_costs_only_its_calls_in_flight() {
    let Some(lab) = Lab::up("balance-kill", &["grpc.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let concurrency = 4;
    let run = lab.spawn_app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc:50051",
            "--duration",
            "8s",
            "--concurrency",
            &concurrency.to_string(),
            "--rate",
            "400",
            "--report-every",
            "200",
        ],
    );
    let before = windows(&run, 3);
    assert_eq!(merge_windows(&before).as_object().unwrap().len(), 3);
    let victim = lab.pod("mesh", "grpc-");
    lab.cli_ok(&["kill", &victim]);
    let result = run.finish(Duration::from_secs(20));
    let failed = result["calls"].as_u64().unwrap() - result["ok"].as_u64().unwrap();
    assert!(
        failed <= concurrency as u64,
        "only calls in flight on the killed pod may fail: {result}"
    );
    let victim_name = victim.split('/').nth(1).unwrap();
    let survivors: Vec<&String> = result["by_pod"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|p| *p != victim_name)
        .collect();
    assert!(survivors.len() >= 2, "traffic moved to the other pods: {result}");
    assert!(result["p99_ms"].as_f64().unwrap() < 30_000.0, "no call hung: {result}");
}

#[test]
fn a_ten_times_slower_pod_gets_a_clearly_smaller_share() {
    let Some(lab) = Lab::up("balance-slow", &["grpc-slow.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let result = lab.app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc:50051",
            "--calls",
            "4000",
            "--concurrency",
            "8",
        ],
    );
    assert_eq!(result["ok"], 4000, "{result}");
    let slow_pod = lab.pod("mesh", "grpc-slow-");
    let slow_name = slow_pod.split('/').nth(1).unwrap();
    let slow = result["by_pod"][slow_name].as_f64().unwrap_or(0.0);
    let even = 4000.0 / 5.0;
    assert!(
        slow < even * 0.5,
        "the slow pod took {slow} of 4000 calls (even share {even}): {result}"
    );
}
