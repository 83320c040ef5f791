//! The transparent TCP path through the sidecar pair, on the lab.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Lab, eventually};

const OUTBOUND_OPENS: &str = "strait_tcp_open_total";

#[test]
fn sixty_four_mib_pass_the_sidecar_pair_intact_with_half_close() {
    let Some(lab) = Lab::up("tcp-64mib", &["tcp-echo.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let sent = lab.app(
        &client,
        &["tcp-send", "--to", "echo.mesh:80", "--bytes", &(64 << 20).to_string()],
    );
    // tcp-send half-closes after sending and reads until the server's
    // half-close, so both directions of half-close were carried.
    assert_eq!(sent["match"], true, "{sent}");
    assert_eq!(sent["received"], 64 << 20);
    assert_eq!(
        lab.metric(&client, "strait_tcp_read_bytes_total", &["outbound"]),
        (64 << 20) as f64
    );
    let inbound: f64 = lab
        .pods("mesh", "echo-")
        .iter()
        .map(|p| lab.metric(p, "strait_tcp_read_bytes_total", &["inbound"]))
        .sum();
    assert_eq!(inbound, (64 << 20) as f64, "the server side sidecar carried the bytes");
}

#[test]
fn five_hundred_concurrent_connections_complete_and_descriptors_return() {
    let Some(lab) = Lab::up("tcp-500", &["tcp-echo.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let proxy = lab.container_pid(&client, "strait-proxy");
    // The first connection to a Service starts its discovery watch, which
    // keeps its connection to the API server: the baseline comes after it.
    assert_eq!(
        lab.app(&client, &["tcp-send", "--to", "echo:80", "--bytes", "10"])["match"],
        true
    );
    let baseline = lab.open_fds(proxy);
    let result = lab.app(
        &client,
        &[
            "tcp-many",
            "--to",
            "echo:80",
            "--connections",
            "500",
            "--bytes",
            "4096",
            "--hold",
        ],
    );
    assert_eq!(result["ok"], 500, "{result}");
    assert_eq!(lab.metric(&client, OUTBOUND_OPENS, &["outbound"]), 501.0);
    eventually(Duration::from_secs(10), "proxy descriptors back to baseline", || {
        lab.open_fds(proxy) <= baseline
    });
    assert_eq!(lab.metric(&client, "strait_tcp_open_connections", &["outbound"]), 0.0);
}

#[test]
fn the_proxy_is_not_redirected_into_itself_and_skipped_ports_bypass_it() {
    let Some(lab) = Lab::up("tcp-bypass", &["tcp-echo.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    for _ in 0..3 {
        assert_eq!(
            lab.app(&client, &["tcp-send", "--to", "echo:80", "--bytes", "1000"])["match"],
            true
        );
    }
    // Each client connection is one accepted connection: had the proxy's own
    // upstream connection been redirected, it would have come back to it.
    assert_eq!(lab.metric(&client, OUTBOUND_OPENS, &["outbound"]), 3.0);

    assert_eq!(
        lab.app(&client, &["tcp-send", "--to", "echo:81", "--bytes", "1000"])["match"],
        true
    );
    assert_eq!(
        lab.metric(&client, OUTBOUND_OPENS, &["outbound"]),
        3.0,
        "port 81 is skipped: the proxy must not see it"
    );
}

#[test]
fn a_port_where_nothing_listens_fails_fast_and_leaks_nothing() {
    let Some(lab) = Lab::up("tcp-closed", &["tcp-echo.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let proxy = lab.container_pid(&client, "strait-proxy");
    assert_eq!(
        lab.app(&client, &["tcp-send", "--to", "echo:80", "--bytes", "10"])["match"],
        true
    );
    let baseline = lab.open_fds(proxy);
    for _ in 0..5 {
        let probe = lab.app(&client, &["tcp-probe", "--to", "echo:82", "--timeout", "3s"]);
        let outcome = probe["outcome"].as_str().unwrap();
        assert!(["refused", "reset", "closed"].contains(&outcome), "{probe}");
        assert!(probe["seconds"].as_f64().unwrap() < 1.0, "{probe}");
    }
    eventually(Duration::from_secs(5), "no connection left open", || {
        lab.metric(&client, "strait_tcp_open_connections", &["outbound"]) == 0.0 && lab.open_fds(proxy) <= baseline
    });
}
