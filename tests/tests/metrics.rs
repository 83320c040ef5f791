//! The proxies' Prometheus metrics, on the lab: valid for promtool, exact,
//! bounded in cardinality whatever clients send, and answering the questions
//! of the chart's dashboard on a real Prometheus.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Lab, Prometheus, assert_even, dashboard, dashboard_expr, sum_metric};

const GRPC: &str = "server.secure.svc.cluster.local:50051";
const WEB: &str = "server.secure.svc.cluster.local:80";
const ECHO: &str = "server.secure.svc.cluster.local:7000";

/// Runs `promtool check metrics` on a scrape; fails with its complaints.
fn promtool_check(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; scripts/deps.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The number of series (sample lines) in a scrape.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

#[test]
fn promtool_accepts_the_metrics_after_grpc_http_and_opaque_traffic() {
    let Some(lab) = Lab::up("metrics_promtool", &["mtls.yaml"]) else {
        return;
    };
    let client = lab.pod("secure", "client-");
    let server = lab.pod("secure", "server-");
    assert_eq!(
        lab.app(&client, &["grpc-client", "--to", GRPC, "--calls", "50"])["ok"],
        50
    );
    lab.app(&client, &["http-client", "--to", WEB, "--requests", "20"]);
    lab.app(
        &client,
        &["http-client", "--to", WEB, "--path", "/status/503", "--requests", "5"],
    );
    lab.app(&client, &["tcp-send", "--to", ECHO, "--bytes", "100000"]);

    for pod in [&client, &server] {
        let text = lab.metrics(pod);
        for family in [
            "strait_requests_total",
            "strait_tcp_read_bytes_total",
            "strait_identity_cert_expiry",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(family), "{pod} has no {family}:\n{text}");
        }
        promtool_check(&text, pod);
    }
    let injector = lab.pod("strait-system", "strait-injector-");
    let control_plane = lab.debug(&injector, "injector", &["http-get", "http://127.0.0.1:9990/metrics"]);
    promtool_check(&control_plane, "the control plane");
    // Named series with values, not just a body promtool accepts: both
    // pods were injected by the webhook and got certificates.
    let value = |series: &str| {
        control_plane
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("the control plane has no {series}:\n{control_plane}"))
    };
    assert!(value("strait_control_webhook_admissions_total{result=\"injected\"}") >= 2.0);
    assert!(value("strait_control_identity_certificates_total{outcome=\"issued\"}") >= 2.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_max_fds") > 0.0);

    // Prometheus asks for OpenMetrics, and gets it.
    let openmetrics = lab.exec_ok(
        &client,
        &[
            "curl",
            "-sS",
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "http://127.0.0.1:4191/metrics",
        ],
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
}

#[test]
fn counts_are_exact_with_the_right_status_split() {
    let Some(lab) = Lab::up("metrics_exact", &["mtls.yaml"]) else {
        return;
    };
    let client = lab.pod("secure", "client-");
    let server = lab.pod("secure", "server-");
    let grpc = ["dst_service=\"server\"", "direction=\"outbound\""];
    let responses = |pod: &str, labels: &[&str]| lab.metric(pod, "strait_responses_total", labels);

    let ok = lab.app(
        &client,
        &["grpc-client", "--to", GRPC, "--calls", "700", "--concurrency", "8"],
    );
    assert_eq!(ok["ok"], 700, "{ok}");
    let failed = lab.app(
        &client,
        &[
            "grpc-client",
            "--to",
            GRPC,
            "--calls",
            "300",
            "--concurrency",
            "8",
            "--fail-code",
            "5",
        ],
    );
    assert_eq!(failed["by_status"]["NotFound"], 300, "{failed}");
    lab.app(&client, &["http-client", "--to", WEB, "--requests", "250"]);
    lab.app(
        &client,
        &["http-client", "--to", WEB, "--path", "/status/503", "--requests", "50"],
    );

    // The client's proxy, outbound.
    assert_eq!(lab.metric(&client, "strait_requests_total", &grpc), 1300.0);
    let success = ["grpc_status=\"0\"", "classification=\"success\""];
    assert_eq!(responses(&client, &[&grpc[..], &success].concat()), 700.0);
    let not_found = ["grpc_status=\"5\"", "classification=\"failure\""];
    assert_eq!(responses(&client, &[&grpc[..], &not_found].concat()), 300.0);
    let http_ok = ["status_code=\"200\"", "grpc_status=\"\"", "classification=\"success\""];
    assert_eq!(responses(&client, &[&grpc[..], &http_ok].concat()), 250.0);
    let http_503 = ["status_code=\"503\"", "classification=\"failure\""];
    assert_eq!(responses(&client, &[&grpc[..], &http_503].concat()), 50.0);
    let latency = sum_metric(&lab.metrics(&client), "strait_response_latency_seconds_count", &grpc);
    assert_eq!(latency, 1300.0, "one latency observation per response");

    // The server's proxy, inbound, labelled with the client's identity.
    let inbound = [
        "direction=\"inbound\"",
        "client_id=\"spiffe://cluster.local/ns/secure/sa/client\"",
    ];
    assert_eq!(lab.metric(&server, "strait_requests_total", &inbound), 1300.0);
    assert_eq!(responses(&server, &[&inbound[..], &not_found].concat()), 300.0);
    assert_eq!(responses(&server, &[&inbound[..], &http_503].concat()), 50.0);
}

#[test]
fn ten_thousand_distinct_paths_leave_the_number_of_series_unchanged() {
    let Some(lab) = Lab::up("metrics_cardinality", &["mtls.yaml"]) else {
        return;
    };
    let client = lab.pod("secure", "client-");
    let server = lab.pod("secure", "server-");
    let request = |n: &str| {
        let answer = lab.app(
            &client,
            &[
                "http-client",
                "--to",
                WEB,
                "--path",
                "/headers",
                "--random-paths",
                "--requests",
                n,
            ],
        );
        assert_eq!(answer["by_status"]["200"], n.parse::<u64>().unwrap(), "{answer}");
    };
    request("100");
    let (client_before, server_before) = (series(&lab.metrics(&client)), series(&lab.metrics(&server)));
    request("10000");
    let (client_text, server_text) = (lab.metrics(&client), lab.metrics(&server));
    assert_eq!(series(&client_text), client_before, "client proxy:\n{client_text}");
    assert_eq!(series(&server_text), server_before, "server proxy:\n{server_text}");
    assert!(
        !client_text.contains("/headers/") && !client_text.contains("x-random"),
        "request data leaked into labels"
    );
    assert_eq!(
        lab.metric(
            &client,
            "strait_requests_total",
            &["direction=\"outbound\"", "dst_service=\"server\""]
        ),
        10100.0
    );
}

#[test]
fn a_real_prometheus_sees_even_per_pod_shares_and_the_dashboard_queries_answer() {
    let Some(lab) = Lab::up("metrics_prometheus", &["grpc.yaml"]) else {
        return;
    };
    let prometheus = Prometheus::start(&lab);
    // client, 3 grpc and 3 web pods in the mesh namespace.
    prometheus.wait_for_targets(7);
    let client = lab.pod("mesh", "client-");
    let load = lab.spawn_app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc:50051",
            "--duration",
            "20s",
            "--rate",
            "300",
            "--concurrency",
            "4",
        ],
    );
    let _web = lab.spawn_app(
        &client,
        &["http-client", "--to", "web:80", "--requests", "2000", "--rate", "100"],
    );
    std::thread::sleep(Duration::from_secs(15));

    let shares = prometheus.query(
        "sum by (dst_pod) (rate(strait_requests_total{direction=\"outbound\",dst_namespace=\"mesh\",dst_service=\"grpc\"}[10s]))",
    );
    let by_pod: serde_json::Map<String, Value> = shares
        .iter()
        .filter(|s| s["metric"]["dst_pod"].as_str().is_some_and(|p| !p.is_empty()))
        .map(|s| {
            let rate: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"]["dst_pod"].as_str().unwrap().to_string(), Value::from(rate))
        })
        .collect();
    assert_even(&Value::Object(by_pod), 3, 0.15, "per-pod request rate from PromQL");

    // Every query of the chart's dashboard is valid PromQL over what the
    // proxies export, and the traffic panels have data.
    let mut empty = Vec::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = dashboard_expr(target, "10s");
            if prometheus.query(&expr).is_empty() {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    // Nothing failed to connect, was refused, turned away or hit a limit,
    // no watch failed, and no route is bound to these Services (no route
    // labels, retries or ejections): those are empty.
    let allowed_empty = [
        "connect_errors",
        "inbound_refusals",
        "requests_turned_away",
        "limit_refusals",
        "watch_errors",
        "route_name!=",
        "strait_retries_total",
        "ejections_total",
        "failed_open_total",
    ];
    empty.retain(|e| !allowed_empty.iter().any(|a| e.contains(a)));
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    let done = load.finish(Duration::from_secs(30));
    assert!(done["ok"].as_u64().unwrap() > 4000, "{done}");
}
