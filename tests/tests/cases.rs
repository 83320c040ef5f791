//! What real users' traffic looks like, through the mesh, with peers we did
//! not write: curl, ncat, grpcio and raw sockets (`tests/cases`, from the
//! bug reports of other meshes' and proxies' users; `../shared/cases`).
//! Each case asserts what the same peers get without the mesh, and each kind
//! of fault is tried with at least one more input than the reported one.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Lab, eventually, last_json};

const PY: &str = "/opt/strait-cases/venv/bin/python";
const HTTP: &str = "/opt/strait-cases/edge_http.py";
const GRPC: &str = "/opt/strait-cases/edge_grpc.py";
const TCP: &str = "/opt/strait-cases/edge_tcp.py";

/// The lab's client pod and how to run the case peers from it.
struct Client<'a> {
    lab: &'a Lab,
    pod: String,
}

impl<'a> Client<'a> {
    /// The `client-` pod of `namespace`.
    fn of(lab: &'a Lab, namespace: &str) -> Self {
        Client {
            lab,
            pod: lab.pod(namespace, "client-"),
        }
    }

    fn run(&self, command: &[&str]) -> String {
        self.lab.exec_ok(&self.pod, command)
    }

    /// A case script's JSON answer (the last line it prints).
    fn script(&self, script: &str, args: &[&str]) -> Value {
        let command = [&[PY, script], args].concat();
        last_json(&self.run(&command), args)
    }

    /// A case script run in the background; its output when joined.
    fn script_in_background(&self, script: &str, args: &[&str]) -> std::thread::JoinHandle<String> {
        let (lab, pod) = (self.lab.name.clone(), self.pod.clone());
        let command: Vec<String> = ["exec", &pod, "--", PY, script]
            .into_iter()
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect();
        std::thread::spawn(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait-lab"))
                .args(&command)
                .env("STRAIT_LAB_NAME", lab)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    }

    fn curl(&self, args: &[&str]) -> String {
        self.run(&[&["curl", "-sS", "--max-time", "10"], args].concat())
    }
}

/// A lab with `manifest` applied, once the case peers are installed.
fn lab_with_peers(test: &str, manifest: &str) -> Option<Lab> {
    support::require(
        test,
        std::path::Path::new(PY).exists() && std::path::Path::new(GRPC).exists(),
        "needs the case peers in /opt/strait-cases (scripts/deps.sh installs them)",
    )?;
    Lab::up(test, &[manifest])
}

/// The last JSON line a watching server logged.
fn last_logged(lab: &Lab, pod: &str, container: &str) -> Value {
    let logs = lab.cli_ok(&["logs", pod, "-c", container]);
    let line = logs.lines().rev().find(|l| l.starts_with('{')).unwrap_or("{}");
    serde_json::from_str(line).unwrap()
}

#[test]
fn real_world_traffic_passes_the_mesh_as_it_would_without_it() {
    let Some(lab) = lab_with_peers("cases", "cases.yaml") else {
        return;
    };
    let client = Client::of(&lab, "cases");
    // Case 7 needs 100 s of silence on a stream: it runs while the others do.
    std::thread::scope(|scope| {
        scope.spawn(|| quiet_streams_survive(&client));
        http1_is_passed_unchanged(&client);
        connect_tunnels(&client);
        idle_connections_closed_by_the_app_are_retried(&client);
        resets_propagate_both_ways(&lab, &client);
        servers_stream_limits_open_more_connections(&client);
        stalled_readers_starve_nobody(&client);
        large_trailers_keep_their_status(&client);
    });
}

/// Cases 1, 2, 3 and 6: header names keep their case both ways, no header is
/// added, hundreds of fields within the byte limit pass, absolute-form
/// targets reach the application as sent, and a client that half-closes
/// after its request gets its answer.
fn http1_is_passed_unchanged(client: &Client) {
    let response = client.curl(&["-i", "-H", "X-Request-ID: Abc-123", "http://web.cases:8080/"]);
    assert!(response.contains("\r\nX-Mixed-Case: Yes\r\n"), "{response}");
    assert!(
        response.contains("\r\nX-Request-ID: Abc-123\r\n"),
        "the app saw the name as sent: {response}"
    );
    assert!(
        !response.to_ascii_lowercase().contains("\r\ndate:"),
        "no header the app did not send: {response}"
    );
    let raw = client.script(
        HTTP,
        &[
            "raw",
            "web.cases",
            "8080",
            r"GET /x HTTP/1.1\r\nHost: web\r\nX-ALL-CAPS: 1\r\nx-lower-case: 2\r\nCamelCase-Name: 3\r\n\r\n",
        ],
    );
    let seen = raw["response"].as_str().unwrap();
    for name in ["X-ALL-CAPS: 1", "x-lower-case: 2", "CamelCase-Name: 3"] {
        assert!(seen.contains(name), "{name} reached the app as sent: {seen}");
    }

    for (service, fields) in [("many", 150), ("many1000", 1000)] {
        let got = client.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_headers}",
            &format!("http://{service}.cases:8080/"),
        ]);
        assert_eq!(
            got,
            format!("200 {}", fields + 1),
            "{fields} header fields and Content-Length"
        );
    }

    for (target, line) in [
        (
            "http://anything.invalid/abs?q=1",
            "GET http://anything.invalid/abs?q=1 HTTP/1.1",
        ),
        (
            "http://other.example:81/p/q?a=b&c",
            "GET http://other.example:81/p/q?a=b&c HTTP/1.1",
        ),
    ] {
        let seen = client.curl(&["-x", "http://web.cases:8080", target]);
        assert_eq!(seen.lines().next().unwrap(), line, "{seen}");
    }

    let answer = client.run(&[
        "sh",
        "-c",
        r"printf 'GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n' | ncat web.cases 8080",
    ]);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n"),
        "ncat half-closed: {answer:?}"
    );
    assert!(answer.contains("GET / HTTP/1.1"), "{answer:?}");
    let post = client.script(
        HTTP,
        &[
            "raw",
            "web.cases",
            "8080",
            r"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
            "--half-close",
        ],
    );
    let response = post["response"].as_str().unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n") && response.contains("POST /upload"),
        "{post}"
    );
}

/// Case 4: CONNECT goes on with its authority-form target, and a 2xx turns
/// the connection into a tunnel both ways: through ncat's HTTP proxy to a
/// Service, and to a proxy whose tunnel echoes (its 200 carries a
/// Content-Length: 0, which a tunnel must ignore).
fn connect_tunnels(client: &Client) {
    let through = client.curl(&[
        "-i",
        "-p",
        "-x",
        "http://fwd.cases:3128",
        "http://web.cases.svc.cluster.local:8080/",
    ]);
    let mut heads = through.split("\r\n\r\n");
    let connect = heads.next().unwrap();
    assert!(connect.contains(" 200 "), "the proxy's answer to CONNECT: {through}");
    let tunnelled = heads.next().unwrap();
    assert!(
        tunnelled.starts_with("HTTP/1.1 200 OK\r\n") && tunnelled.contains("X-Mixed-Case: Yes"),
        "the request through the tunnel: {through}"
    );
    let echo = client.script(HTTP, &["connect", "tunnel.cases", "3129", "db.internal:5432"]);
    assert_eq!(echo["status_line"], "HTTP/1.1 200 Connection established", "{echo}");
    assert_eq!(echo["echoed"], "through-the-tunnel\n", "{echo}");
}

/// Case 5: the app answers the first request on a connection and closes on
/// the second. A request that got no byte back on a reused idle connection
/// is sent again on a fresh one, for GET and for other idempotent methods.
fn idle_connections_closed_by_the_app_are_retried(client: &Client) {
    for method in ["GET", "PUT", "DELETE", "HEAD"] {
        let codes: Vec<String> = (0..6)
            .map(|_| {
                let method_flag = if method == "HEAD" { "-I" } else { "-X" };
                let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", method_flag];
                if method != "HEAD" {
                    args.push(method);
                }
                args.push("http://stale.cases:8080/");
                client.curl(&args)
            })
            .collect();
        assert!(codes.iter().all(|c| c == "200"), "{method}: {codes:?}");
    }
}

/// Case 11: a reset from either side reaches the other as a reset, on an
/// opaque port (5432) and on ports where the proxy detects the protocol.
fn resets_propagate_both_ways(lab: &Lab, client: &Client) {
    for (service, port, container) in [("watch", "5432", "watch"), ("watch7000", "7000", "watch7000")] {
        let sent = client.script(TCP, &["client-rst", &format!("{service}.cases"), port]);
        assert_eq!(sent["closed_with"], "RST");
        let server = lab.pod("cases", &format!("{service}-"));
        let mut seen = Value::Null;
        eventually(Duration::from_secs(10), "the server saw the connection end", || {
            seen = last_logged(lab, &server, container);
            seen.get("end").is_some()
        });
        assert_eq!(seen["end"], "RESET", "port {port}: {seen}");
        assert_eq!(seen["bytes"], 10, "the bytes before the reset arrived: {seen}");
    }
    let read = client.script(TCP, &["client-read", "rst.cases", "7100"]);
    assert_eq!(read["data"], "hello\n", "{read}");
    assert_eq!(read["end"], "RESET", "the server's reset reached the client: {read}");
}

/// Case 7: a server stream quiet for 100 s (grpcio's default ping policy
/// closes connections that get PINGs while it sends nothing), on two
/// servers at once.
fn quiet_streams_survive(client: &Client) {
    let run = |target: &str| client.script_in_background(GRPC, &["quiet", target, "100"]);
    let calls = [run("grpc.cases:50061"), run("limited.cases:50062")];
    for call in calls {
        let quiet = last_json(&call.join().unwrap(), &["quiet"]);
        assert_eq!(quiet["status"], "OK", "{quiet}");
        let messages: Vec<&str> = quiet["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[0].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["first", "second"], "{quiet}");
    }
}

/// Case 8: a server that allows few streams per connection, and more
/// clients than that: every call starts at once.
fn servers_stream_limits_open_more_connections(client: &Client) {
    for (target, clients) in [("limited.cases:50062", "8"), ("limited2.cases:50064", "6")] {
        // Each call holds its stream for 10 s: a call queued behind
        // another would get its first message only once that one ended.
        let hold = client.script(GRPC, &["hold", target, clients, "10"]);
        let firsts = hold["first_message_seconds"].as_array().unwrap();
        assert_eq!(firsts.len().to_string(), clients, "{hold}");
        assert!(
            firsts.iter().all(|s| s.as_f64().unwrap() < 10.0),
            "no call waited for another to end: {hold}"
        );
        assert_eq!(hold["final"]["OK"].to_string(), clients, "{hold}");
    }
}

/// Case 9: clients that stop reading a streaming response never block
/// another client of the same pod, however many stall.
fn stalled_readers_starve_nobody(client: &Client) {
    for stalled in ["10", "24"] {
        let stall = client.script_in_background(GRPC, &["stall", "firehose.cases:50063", stalled, "25"]);
        std::thread::sleep(Duration::from_secs(5));
        let ping = client.script(GRPC, &["ping", "firehose.cases:50063", "100"]);
        assert_eq!(ping["ok"], 100, "{stalled} streams stalled: {ping}");
        stall.join().unwrap();
    }
}

/// Case 10: a gRPC error with large detail trailers keeps its status and
/// trailers; trailers over the proxy's header limit (64 KiB, counted as on
/// the wire: binary values are base64) end the call with
/// RESOURCE_EXHAUSTED naming that limit, not with UNAVAILABLE. grpcio sends
/// these errors as Trailers-Only responses, so they are header lists too.
fn large_trailers_keep_their_status(client: &Client) {
    for bytes in [32768, 40000] {
        let call = client.script(GRPC, &["trailers", "grpc.cases:50061", &bytes.to_string()]);
        assert_eq!(call["code"], "INVALID_ARGUMENT", "{call}");
        assert_eq!(call["trailers"]["x-details-bin"], bytes, "{call}");
    }
    let over = client.script(GRPC, &["trailers", "grpc.cases:50061", "70000"]);
    assert_eq!(over["code"], "RESOURCE_EXHAUSTED", "{over}");
    let details = over["details"].as_str().unwrap();
    assert!(details.contains("STRAIT_MAX_HEADER_BYTES"), "{over}");
}

/// Ten times: three fresh grpcio servers, 3000 sequential unary calls from
/// one grpcio channel; every run within ±15% of even, no call failed. The
/// client's proxy shows why in its balancer view.
#[test]
fn grpcio_calls_spread_evenly_over_fresh_pods() {
    let Some(lab) = lab_with_peers("cases-balance", "cases-balance.yaml") else {
        return;
    };
    let client = Client::of(&lab, "spread");
    for run in 0..10 {
        lab.cli_ok(&["scale", "spread/who", "0"]);
        eventually(Duration::from_secs(60), "the old pods gone", || {
            lab.pods("spread", "who-").is_empty()
        });
        lab.cli_ok(&["scale", "spread/who", "3"]);
        eventually(Duration::from_secs(120), "three fresh pods ready", || {
            let pods = lab.pods("spread", "who-");
            pods.len() == 3 && pods.iter().all(|p| lab.is_ready(p))
        });
        let calls = client.script(GRPC, &["who", "who.spread:50070", "3000"]);
        assert_eq!(calls["errors"], serde_json::json!({}), "run {run}: {calls}");
        eprintln!("run {run}: {}", calls["by_pod"]);
        support::assert_even(
            &calls["by_pod"],
            3,
            0.15,
            &format!("run {run}: 3000 calls over 3 fresh pods"),
        );
    }
    let view: Value = serde_json::from_str(&client.curl(&["http://127.0.0.1:4191/endpoints"])).unwrap();
    let who = view["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == "spread/who:50070")
        .unwrap_or_else(|| panic!("{view:#}"));
    let endpoints = who["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{who:#}");
    for endpoint in endpoints {
        assert_eq!(endpoint["state"], "ready", "{who:#}");
        assert_eq!(endpoint["meshed"], true, "{who:#}");
        assert_eq!(endpoint["in_flight"], 0, "{who:#}");
        assert!(endpoint["latency_ms"].as_f64().unwrap() > 0.0, "{who:#}");
        assert!(endpoint["pod"].as_str().unwrap().starts_with("who-"), "{who:#}");
    }
}
