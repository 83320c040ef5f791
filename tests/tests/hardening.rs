//! Bad input, abandoned and idle connections, and an API server outage,
//! shown on the lab: each bad input gets a clean close or an error status,
//! the proxies let go of everything a client abandoned, and a well-behaved
//! gRPC client running alongside sees no error at all.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Lab, eventually};

const PROXY: &str = "strait-proxy";

/// A gRPC client calling at a steady rate for `seconds`, over one connection.
fn abuse(lab: &Lab, pod: &str, to: &str, kind: &str) -> Value {
    lab.app(pod, &["abuse", "--to", to, "--kind", kind])
}

fn raw_http(lab: &Lab, pod: &str, to: &str, request: &str) -> Value {
    lab.app(pod, &["tcp-raw", "--to", to, "--send", request])
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// The resident memory of a process that is its own (its heap and stacks,
/// not the binary's pages), in bytes.
fn private_rss(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:") * 1024
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap()
}

#[test]
fn bad_input_gets_a_clean_answer_and_other_clients_see_no_errors() {
    let Some(lab) = Lab::up("hard-bad-input", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let outside = lab.pod("plain", "client-");
    let web = lab.pod("mesh", "web-");
    let web_ip = lab.pod_ip(&web);
    let calls = support::steady_grpc(&lab, &client, "grpc.mesh:50051", 50);
    // A client trickling its headers, alongside everything else.
    let slow = lab.spawn_app(
        &client,
        &[
            "abuse",
            "--to",
            "web.mesh:80",
            "--kind",
            "slowloris",
            "--seconds",
            "45s",
        ],
    );

    // Through the client's own proxy (outbound) and, from an unmeshed pod,
    // straight at the server's (inbound).
    let inbound_http = format!("{web_ip}:8080");
    for (pod, to) in [(&client, "web.mesh:80"), (&outside, inbound_http.as_str())] {
        let garbage = abuse(&lab, pod, to, "garbage");
        assert_eq!(
            garbage["closed"], true,
            "random bytes to {to} end in a close: {garbage}"
        );
        for (request, what) in [
            (
                "GET /a\u{1}b HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n",
                "a control byte in the request line",
            ),
            (
                "POST / HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 5\\r\\nContent-Length: 6\\r\\n\\r\\nhello",
                "conflicting Content-Length",
            ),
            (
                "GET / HTTP/1.1\\r\\nHost: web\\r\\nX-Note: a\\rInjected: yes\\r\\n\\r\\n",
                "a bare CR in a header value",
            ),
        ] {
            let answer = raw_http(&lab, pod, to, request);
            assert!(
                answer["status_line"].as_str().unwrap().starts_with("HTTP/1.1 400"),
                "{what} to {to} is a 400: {answer}"
            );
        }
        let big = format!(
            "GET / HTTP/1.1\\r\\nHost: web\\r\\nX-Big: {}\\r\\n\\r\\n",
            "b".repeat(80 * 1024)
        );
        let answer = raw_http(&lab, pod, to, &big);
        assert!(
            answer["status_line"].as_str().unwrap().starts_with("HTTP/1.1 431"),
            "80 KiB of headers to {to} is a 431: {answer}"
        );
        assert!(
            answer["response"].as_str().unwrap().contains("STRAIT_MAX_HEADER_BYTES"),
            "the 431 says which limit: {answer}"
        );
    }

    let frame = abuse(&lab, &client, "grpc.mesh:50051", "bad-h2-frame");
    assert_eq!(frame["goaway"], true, "a malformed HTTP/2 frame gets a GOAWAY: {frame}");
    assert_eq!(frame["closed"], true, "{frame}");
    let metadata = abuse(&lab, &client, "grpc.mesh:50051", "huge-grpc-metadata");
    assert_eq!(
        metadata["grpc_status"], "8",
        "gRPC metadata over the limit is RESOURCE_EXHAUSTED: {metadata}"
    );

    let mesh_port = format!("{web_ip}:4143");
    for kind in ["truncated-hello", "huge-sni"] {
        let answer = abuse(&lab, &outside, &mesh_port, kind);
        assert_eq!(
            answer["closed"], true,
            "{kind} to the mesh port ends in a close: {answer}"
        );
    }

    let slow = slow.finish(Duration::from_secs(90));
    assert_eq!(slow["closed"], true, "the slow client is cut off: {slow}");
    assert!(
        slow["trickled_bytes"].as_u64().unwrap() < 45,
        "cut off before it finished trickling: {slow}"
    );

    support::assert_no_failed_calls(&calls.finish(Duration::from_secs(120)), "gRPC alongside bad input");
    for pod in [&client, &web] {
        assert!(lab.is_ready(pod), "{pod} is still ready");
    }
}

#[test]
fn ten_thousand_abandoned_connections_leave_nothing_behind() {
    let Some(lab) = Lab::up("hard-abandon", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let web = lab.pod("mesh", "web-");
    let proxies = [lab.container_pid(&client, PROXY), lab.container_pid(&web, PROXY)];
    // Warm up: the pools and the first connections' allocations.
    abuse_many(&lab, &client, 200);
    std::thread::sleep(Duration::from_secs(2));
    let fds: Vec<usize> = proxies.iter().map(|pid| lab.open_fds(*pid)).collect();
    let mut settled: Vec<u64> = proxies.iter().map(|pid| rss(*pid)).collect();
    let calls = support::steady_grpc(&lab, &client, "grpc.mesh:50051", 45);

    // Two rounds of 10,000: after each every file is closed again, and the
    // memory is back within 4 MiB of where the round found it. What the
    // allocator keeps of a round's peak varies with the machine's load (up
    // to 3.1 MiB seen in CI beside another lab, either way), so one round
    // against 2 MiB was a coin toss there; a leak of 400 bytes a
    // connection adds 4 MiB a round, and the second round starts from the
    // first's level, so a leak still shows.
    for round in 1..=2 {
        let abandoned = abuse_many(&lab, &client, 10_000);
        assert_eq!(abandoned["opened"], 10_000, "{abandoned}");
        let baseline = settled.clone();
        for (i, pid) in proxies.iter().enumerate() {
            eventually(
                Duration::from_secs(30),
                "the proxies' open files return to where they were",
                || lab.open_fds(*pid) <= fds[i] + 4,
            );
            let what = format!("round {round}: the proxies' memory returns to within 4 MiB");
            eventually(Duration::from_secs(30), &what, || {
                let now = rss(*pid);
                // Each new reading once, not every poll.
                if now != settled[i] {
                    eprintln!(
                        "round {round}: proxy {pid}: {} KiB before, {} KiB now",
                        baseline[i] / 1024,
                        now / 1024
                    );
                }
                settled[i] = now;
                now <= baseline[i] + (4 << 20)
            });
        }
    }
    support::assert_no_failed_calls(
        &calls.finish(Duration::from_secs(90)),
        "gRPC alongside abandoned connections",
    );

    let log = lab.cli_ok(&["logs", &client, "-c", PROXY]);
    assert!(
        log.lines().count() < 500,
        "the proxy logs at a bounded rate: {} lines",
        log.lines().count()
    );
}

fn abuse_many(lab: &Lab, pod: &str, connections: usize) -> Value {
    let count = connections.to_string();
    lab.app(
        pod,
        &[
            "abuse",
            "--to",
            "web.mesh:80",
            "--kind",
            "abandon",
            "--connections",
            &count,
            "--concurrency",
            "200",
        ],
    )
}

/// The documented bound (README, "Limits"): idle connections through a
/// proxy cost it at most 64 KiB each (mutual TLS included), above its idle
/// footprint.
const IDLE_CONNECTION_BYTES: u64 = 64 * 1024;

#[test]
fn two_thousand_idle_connections_stay_under_the_memory_bound() {
    let Some(lab) = Lab::up("hard-idle", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let echo = lab.pod("mesh", "echo-");
    let proxies = [
        ("client", lab.container_pid(&client, PROXY)),
        ("server", lab.container_pid(&echo, PROXY)),
    ];
    let idle: Vec<u64> = proxies.iter().map(|(_, pid)| private_rss(*pid)).collect();
    let holder = lab.spawn_app(
        &client,
        &[
            "abuse",
            "--to",
            "echo.mesh:7000",
            "--kind",
            "hold",
            "--connections",
            "2000",
            "--seconds",
            "20s",
        ],
    );
    let held = holder.next(Duration::from_secs(60)).expect("the connections open");
    assert_eq!(held["held"], 2000);
    std::thread::sleep(Duration::from_secs(1));
    for (i, (side, pid)) in proxies.iter().enumerate() {
        let now = private_rss(*pid);
        let per_connection = now.saturating_sub(idle[i]) / 2000;
        eprintln!(
            "{side} proxy: {} KiB idle, {} KiB with 2,000 connections held, {per_connection} bytes each",
            idle[i] / 1024,
            now / 1024
        );
        assert!(
            per_connection <= IDLE_CONNECTION_BYTES,
            "the {side} proxy holds {per_connection} bytes per idle connection"
        );
    }
}

#[test]
fn the_api_server_gone_for_a_minute_under_grpc_load_loses_no_call() {
    let Some(lab) = Lab::up("hard-apiserver", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let calls = support::steady_grpc(&lab, &client, "grpc.mesh:50051", 80);
    std::thread::sleep(Duration::from_secs(5));
    lab.cli_ok(&["apiserver", "stop"]);
    std::thread::sleep(Duration::from_secs(60));
    lab.cli_ok(&["apiserver", "start"]);
    support::assert_no_failed_calls(&calls.finish(Duration::from_secs(120)), "gRPC through a 60 s outage");

    // The watches resumed: a new pod gets traffic.
    scale_and_reach(&lab, &client, 3);
}

/// Whether a run of calls from `client` reaches `pods` gRPC pods.
fn calls_reach(lab: &Lab, client: &str, pods: usize) -> bool {
    let result = lab.grpc_calls(client, "grpc.mesh:50051", 300);
    result["by_pod"].as_object().unwrap().len() == pods
}

/// Scales mesh/grpc to `replicas` and waits until calls reach them all:
/// the change went from the API server through the destination service to
/// the client's proxy.
fn scale_and_reach(lab: &Lab, client: &str, replicas: usize) {
    lab.cli_ok(&["scale", "mesh/grpc", &replicas.to_string()]);
    eventually(Duration::from_secs(60), &format!("calls reach {replicas} pods"), || {
        calls_reach(lab, client, replicas)
    });
}

/// The destination service (two control-plane replicas) crashed under gRPC
/// load, one replica and then both at once: proxies keep their last known
/// endpoints, follow from the replica left or from the new ones once they
/// are up (jittered back-off), and no call fails; after each crash a
/// scale-up reaches the client's proxy.
#[test]
fn the_destination_service_killed_under_grpc_load_loses_no_call_and_updates_resume() {
    let Some(lab) = Lab::up_with(
        "hard-destination",
        &["hardening.yaml"],
        &[("STRAIT_LAB_CHART_VALUES", "injector.replicas=2")],
    ) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let calls = support::steady_grpc(&lab, &client, "grpc.mesh:50051", 90);
    std::thread::sleep(Duration::from_secs(3));
    let ready_injectors = |not: &[String]| {
        let pods = lab.pods("strait-system", "strait-injector-");
        pods.len() == 2 && pods.iter().all(|p| !not.contains(p) && lab.is_ready(p))
    };
    let first = lab.pods("strait-system", "strait-injector-");
    assert_eq!(first.len(), 2, "two replicas: {first:?}");

    lab.cli_ok(&["kill", &first[0]]);
    scale_and_reach(&lab, &client, 3);

    eventually(Duration::from_secs(60), "two replicas ready again", || {
        ready_injectors(&[])
    });
    let both = lab.pods("strait-system", "strait-injector-");
    for pod in &both {
        lab.cli_ok(&["kill", pod]);
    }
    // No replica answers for a while: calls go on over the known endpoints.
    std::thread::sleep(Duration::from_secs(3));
    eventually(Duration::from_secs(60), "two new replicas ready", || {
        ready_injectors(&both)
    });
    scale_and_reach(&lab, &client, 4);

    support::assert_no_failed_calls(
        &calls.finish(Duration::from_secs(150)),
        "gRPC while the destination service was killed",
    );
}

#[test]
fn a_rolling_restart_under_grpc_load_loses_no_call() {
    let Some(lab) = Lab::up("hard-rollout", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    lab.cli_ok(&["scale", "mesh/grpc", "5"]);
    eventually(Duration::from_secs(60), "5 gRPC pods are ready", || {
        let pods = lab.pods("mesh", "grpc-");
        pods.len() == 5 && pods.iter().all(|p| lab.is_ready(p))
    });
    let old = lab.pods("mesh", "grpc-");
    let calls = support::steady_grpc(&lab, &client, "grpc.mesh:50051", 60);
    std::thread::sleep(Duration::from_secs(3));
    lab.apply("hardening-rollout.yaml");
    eventually(Duration::from_secs(120), "every pod is replaced, one by one", || {
        let pods = lab.pods("mesh", "grpc-");
        pods.len() == 5 && pods.iter().all(|p| !old.contains(p) && lab.is_ready(p))
    });
    support::assert_no_failed_calls(
        &calls.finish(Duration::from_secs(120)),
        "gRPC through a rolling restart",
    );
    // How often an old pod turned a call away and it went elsewhere: timing
    // decides, so it is shown, not asserted.
    for reason in ["connect_failed", "application_gone", "stream_refused"] {
        let label = format!("reason=\"{reason}\"");
        let count = lab.metric(&client, "strait_requests_turned_away_total", &[&label]) as u64;
        eprintln!("calls turned away by a terminating pod ({reason}), each sent elsewhere: {count}");
    }
}

#[test]
fn a_burst_of_a_thousand_concurrent_calls_answered_at_once_loses_none() {
    let Some(lab) = Lab::up("hard-burst", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    // A thousand calls in flight on one connection, each answered after a
    // second, so each server's answers arrive together: a thousand small
    // messages waiting at once on the proxies' HTTP/2 connections, through
    // the client's proxy and each server's.
    let result = lab.app(
        &client,
        &[
            "grpc-client",
            "--to",
            "slow.mesh:50051",
            "--calls",
            "3000",
            "--concurrency",
            "1000",
        ],
    );
    support::assert_no_failed_calls(&result, "3000 calls, 1000 at a time, answered in bursts");
    assert_eq!(result["calls"].as_u64(), Some(3000), "{result}");
}

#[test]
fn sigterm_lets_calls_in_flight_finish_and_the_proxy_exits_cleanly() {
    let Some(lab) = Lab::up("hard-sigterm", &["hardening.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let server = lab.pod("mesh", "slow-");
    // Calls that take a second each, 8 in flight at any time.
    let calls = lab.spawn_app(
        &client,
        &[
            "grpc-client",
            "--to",
            "slow.mesh:50051",
            "--duration",
            "15s",
            "--concurrency",
            "8",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    let proxy = lab.container_pid(&server, PROXY);
    send_signal(proxy, "TERM");
    support::assert_no_failed_calls(&calls.finish(Duration::from_secs(60)), "calls in flight at SIGTERM");
    let log = lab.cli_ok(&["logs", &server, "-c", PROXY]);
    assert!(log.contains("draining"), "the proxy drained: {log}");
    assert!(log.contains("stopped"), "and stopped on its own: {log}");
}

#[test]
fn without_native_sidecars_the_proxy_serves_the_application_until_it_has_stopped() {
    let Some(lab) = Lab::up_with(
        "hard-legacy-stop",
        &["hardening-legacy.yaml"],
        &[("STRAIT_LAB_CHART_VALUES", "proxy.nativeSidecar=false")],
    ) else {
        return;
    };
    let server = lab.pod("mesh", "grpc-");
    let finisher = lab.pod("mesh", "finisher-");
    let answered = || {
        lab.metric(
            &server,
            "strait_responses_total",
            &["direction=\"inbound\"", "classification=\"success\""],
        )
    };
    let before = answered();
    // The proxy and the application get SIGTERM together; the application
    // then makes its last 20 calls, through the proxy.
    lab.cli_ok(&["scale", "mesh/finisher", "0"]);
    // Gone from the API, not only terminating: the kubelet removes it once
    // the application (and so its last calls) and the proxy have stopped.
    eventually(Duration::from_secs(60), "the finisher pod is gone", || {
        !lab.pod_exists(&finisher)
    });
    assert_eq!(
        answered() - before,
        20.0,
        "the calls the application made while stopping all reached the server"
    );
}

/// Calls at 200/s for 20 s, each with a 1 s deadline.
fn calls_with_deadlines(lab: &Lab, client: &str) -> Value {
    lab.app(
        client,
        &[
            "grpc-client",
            "--to",
            "grpc.mesh:50051",
            "--duration",
            "20s",
            "--concurrency",
            "4",
            "--rate",
            "200",
            "--deadline",
            "1s",
        ],
    )
}

/// The calls that failed, after checking that each failed on its deadline.
fn failed_on_deadline(result: &Value) -> u64 {
    let calls = result["calls"].as_u64().unwrap();
    let failed = calls - result["ok"].as_u64().unwrap();
    let deadlines = ["Cancelled", "DeadlineExceeded"]
        .iter()
        .filter_map(|status| result["by_status"][status].as_u64())
        .sum::<u64>();
    assert_eq!(failed, deadlines, "every failed call failed on its deadline: {result}");
    failed
}

#[test]
fn an_endpoint_that_never_answers_is_bounded_by_deadlines_and_left_alone() {
    let Some(lab) = Lab::up("hard-blackhole", &["hardening-blackhole.yaml"]) else {
        return;
    };
    let client = lab.pod("mesh", "client-");
    let servers = lab.pods("mesh", "grpc-");

    // One of three endpoints accepts calls and never answers. A fair share
    // would be a third of the calls; the load estimate leaves it alone after
    // a call's wait, trying it again only once that wait has decayed.
    let result = calls_with_deadlines(&lab, &client);
    let failed = failed_on_deadline(&result);
    let calls = result["calls"].as_u64().unwrap();
    println!("application black hole: {failed} of {calls} calls failed on their deadline");
    assert!(failed * 100 < calls, "under 1% of calls reach the black hole: {result}");
    assert_eq!(
        result["by_pod"].as_object().unwrap().len(),
        2,
        "the other two pods answer: {result}"
    );

    // Then one of the answering pods drops every packet, as a vanished node
    // does: its connections hang rather than close.
    let vanished = &servers[0];
    let status = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns(vanished),
            "iptables",
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "-j",
            "DROP",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let result = calls_with_deadlines(&lab, &client);
    let failed = failed_on_deadline(&result);
    let calls = result["calls"].as_u64().unwrap();
    println!("network black hole too: {failed} of {calls} calls failed on their deadline");
    assert!(failed * 100 < calls, "under 1% of calls reach a black hole: {result}");
    let remaining = servers[1].trim_start_matches("mesh/");
    assert_eq!(
        result["by_pod"].as_object().unwrap().keys().collect::<Vec<_>>(),
        [remaining],
        "the one pod left answers everything else: {result}"
    );
}

fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
