//! How the proxy decides what a connection is, on the lab: opaque ports,
//! servers that speak first, appProtocol, headless Services, malformed
//! requests, and discovery when the API server goes away.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Lab, assert_even, eventually};

const DETECTIONS: &str = "strait_protocol_detections_total";

#[test]
fn server_speaks_first_protocols_work_and_opaque_ports_are_not_inspected() {
    let Some(lab) = Lab::up("proto-opaque", &["protocols.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    // MySQL's port is opaque by default: the greeting comes with no detection.
    let mysql = lab.app(&client, &["tcp-greeting", "--to", "db:3306"]);
    assert_eq!(mysql["greeting"], "220 lab greeter ready", "{mysql}");
    assert_eq!(
        lab.metric(&client, DETECTIONS, &["outbound", "reason=\"opaque_port\""]),
        1.0
    );
    // The server side skips detection too, and nothing waited for a
    // timeout. (The kubelet's TCP probes of that port go to the proxy's
    // admin port, so the one connection is the client's.)
    let servers = lab.pods("mesh", "db-");
    let inbound: f64 = servers
        .iter()
        .map(|server| lab.metric(server, DETECTIONS, &["inbound", "reason=\"opaque_port\""]))
        .sum();
    assert_eq!(inbound, 1.0, "the client's connection, at one of {servers:?}");
    for server in &servers {
        assert_eq!(lab.metric(server, DETECTIONS, &["reason=\"timeout\""]), 0.0);
    }
    // On an ordinary port the proxy notices the server talking first.
    let banner = lab.app(&client, &["tcp-greeting", "--to", "db:7100"]);
    assert_eq!(banner["greeting"], "220 lab greeter ready", "{banner}");
    assert_eq!(
        lab.metric(&client, DETECTIONS, &["outbound", "reason=\"server_first\""]),
        1.0
    );
    // A port declared appProtocol: tcp is opaque without detection.
    let declared = lab.app(&client, &["tcp-greeting", "--to", "db:7200"]);
    assert_eq!(declared["greeting"], "220 lab greeter ready");
    assert_eq!(
        lab.metric(
            &client,
            DETECTIONS,
            &["outbound", "protocol=\"opaque\"", "reason=\"app_protocol\""]
        ),
        1.0
    );
    assert_eq!(lab.metric(&client, DETECTIONS, &["reason=\"timeout\""]), 0.0);
}

#[test]
fn h2c_app_protocol_headless_services_and_pod_ips() {
    let Some(lab) = Lab::up("proto-h2c", &["protocols.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let balanced = lab.app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc:50051",
            "--calls",
            "400",
            "--concurrency",
            "4",
        ],
    );
    assert_even(&balanced["by_pod"], 2, 0.25, "h2c Service port");
    assert_eq!(
        lab.metric(
            &client,
            DETECTIONS,
            &["outbound", "protocol=\"http2\"", "reason=\"app_protocol\""]
        ),
        1.0
    );

    // A headless Service resolves to pod IPs: each connection goes to its pod.
    let first = lab.app(
        &client,
        &["grpc-client", "--to", "grpc-headless:50051", "--calls", "50"],
    );
    assert_eq!(first["ok"], 50);
    assert_eq!(
        first["by_pod"].as_object().unwrap().len(),
        1,
        "a pod IP goes to that pod: {first}"
    );
}

#[test]
fn a_malformed_request_gets_400_and_closes_only_its_connection() {
    let Some(lab) = Lab::up("proto-malformed", &["protocols.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let run = lab.spawn_app(
        &client,
        &[
            "http-client",
            "--to",
            "web:80",
            "--requests",
            "2000",
            "--rate",
            "500",
            "--report-every",
            "500",
        ],
    );
    let garbage = lab.app(
        &client,
        &[
            "tcp-raw",
            "--to",
            "web:80",
            "--send",
            "GET / HTTP/1.1\\r\\nHost: web\\r\\nBad Header\\r\\n\\r\\n",
        ],
    );
    assert!(garbage["status_line"].as_str().unwrap().contains("400"), "{garbage}");
    assert_eq!(garbage["closed"], true);
    let result = run.finish(Duration::from_secs(30));
    assert_eq!(
        result["by_status"]["200"], 2000,
        "the other connection was untouched: {result}"
    );
}

#[test]
fn endpoints_survive_an_api_server_outage_and_changes_arrive_after_it() {
    let Some(lab) = Lab::up("proto-outage", &["protocols.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    assert_eq!(
        lab.app(&client, &["grpc-client", "--to", "grpc:50051", "--calls", "100"])["ok"],
        100
    );

    lab.cli_ok(&["apiserver", "stop"]);
    let during = lab.app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc:50051",
            "--calls",
            "400",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(during["ok"], 400, "the last known endpoints keep serving: {during}");
    assert_eq!(during["by_pod"].as_object().unwrap().len(), 2);
    // The lab's own controllers keep working; the proxies cannot see it yet.
    lab.cli_ok(&["scale", "mesh/grpc", "4"]);
    std::thread::sleep(Duration::from_secs(2));
    lab.cli_ok(&["apiserver", "start"]);

    eventually(
        Duration::from_secs(30),
        "the new endpoints reach the proxy after the outage",
        || {
            let calls = lab.app(
                &client,
                &[
                    "grpc-client",
                    "--to",
                    "grpc:50051",
                    "--calls",
                    "200",
                    "--concurrency",
                    "4",
                ],
            );
            calls["by_pod"].as_object().unwrap().len() == 4
        },
    );
}
