//! Mutual TLS between meshed pods, on the lab: what goes over the wire,
//! who may talk to whom, where identities come from, and what happens when
//! certificates expire or the identity service is away.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use support::{Lab, eventually};

const ECHO: &str = "server.secure.svc.cluster.local:7000";
const GRPC: &str = "server.secure.svc.cluster.local:50051";
const WEB: &str = "http://server.secure.svc.cluster.local";
const STRICT: &str = "strict.secure.svc.cluster.local:7000";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/secure/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/secure/sa/server";
const TOKEN: &str = "/var/run/secrets/tokens/strait-identity/token";
const DESTINATION: &str = "strait-destination.strait-system.svc.cluster.local:8086";

/// tcpdump on a pod's eth0, writing to a file until stopped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, pod: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("strait-capture-{}-{}.pcap", lab.name, std::process::id()));
        let _ = std::fs::remove_file(&file);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.netns(pod),
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-U",
                "-s",
                "0",
            ])
            .args(["-Z", "root", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump runs (scripts/deps.sh installs it)");
        let mut capture = Capture { child, file };
        // tcpdump says "listening on eth0" once packets are being captured.
        let stderr = capture.child.stderr.take().unwrap();
        let (sender, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = sender.send(());
                }
            }
        });
        listening
            .recv_timeout(Duration::from_secs(10))
            .expect("tcpdump started listening");
        capture
    }

    /// Stops the capture and returns the raw pcap bytes.
    fn stop(mut self) -> Vec<u8> {
        // Let the last packets reach the file, then stop tcpdump cleanly.
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Sends `payload` to the echo server and returns what came back.
fn echo(lab: &Lab, client: &str, to: &str, payload: &str) -> Value {
    lab.app(client, &["tcp-raw", "--to", to, "--send", payload])
}

#[test]
fn meshed_traffic_is_encrypted_on_the_wire_and_plaintext_is_the_control() {
    let Some(lab) = Lab::up("mtls_wire", &["mtls.yaml"]) else {
        return;
    };
    let server = lab.pod("secure", "server-");
    let meshed = lab.pod("secure", "client-");
    let plain = lab.pod("plain", "client-");

    let capture = Capture::start(&lab, &server);
    let secret = "strait-capture-opaque-2f9c41";
    assert_eq!(echo(&lab, &meshed, ECHO, secret)["response"], secret);
    let http_secret = "strait-capture-http-8e1d07";
    let body = lab.exec_ok(&meshed, &["curl", "-sS", "--data", http_secret, &format!("{WEB}/echo")]);
    assert_eq!(body, http_secret);
    let wire = capture.stop();
    // The capture did see the meshed connections: their TLS ClientHellos
    // name the server's identity in clear.
    assert!(
        contains(&wire, "server.secure.serviceaccount.identity.cluster.local"),
        "no mesh handshake in the capture ({} bytes)",
        wire.len()
    );
    assert!(!contains(&wire, secret), "the opaque payload crossed eth0 in clear");
    assert!(!contains(&wire, http_secret), "the HTTP body crossed eth0 in clear");

    // The control: the same payload from an unmeshed client is visible.
    let capture = Capture::start(&lab, &server);
    let visible = "strait-capture-control-5a3b66";
    assert_eq!(echo(&lab, &plain, ECHO, visible)["response"], visible);
    let wire = capture.stop();
    assert!(contains(&wire, visible), "the control payload is not in the capture");

    // Both ends count the connection as TLS, the server with the client's identity.
    let client_id = format!("client_id=\"{CLIENT_ID}\"");
    assert!(
        lab.metric(
            &server,
            "strait_tcp_open_total",
            &["direction=\"inbound\"", &client_id, "tls=\"true\""]
        ) >= 2.0
    );
    assert!(
        lab.metric(
            &meshed,
            "strait_tcp_open_total",
            &["direction=\"outbound\"", "tls=\"true\""]
        ) >= 1.0
    );
}

#[test]
fn the_app_learns_the_verified_client_identity_and_forged_ones_are_dropped() {
    let Some(lab) = Lab::up("mtls_client_id", &["mtls.yaml"]) else {
        return;
    };
    let meshed = lab.pod("secure", "client-");
    let plain = lab.pod("plain", "client-");
    let headers = |client: &str, forged: bool| -> Value {
        let mut command = vec!["curl", "-sS"];
        if forged {
            command.extend(["-H", "strait-client-id: spiffe://cluster.local/ns/kube-system/sa/admin"]);
        }
        let url = format!("{WEB}/headers");
        command.push(&url);
        serde_json::from_str(&lab.exec_ok(client, &command)).unwrap()
    };
    assert_eq!(headers(&meshed, false)["strait-client-id"], CLIENT_ID);
    assert_eq!(
        headers(&meshed, true)["strait-client-id"],
        CLIENT_ID,
        "a forged header replaced"
    );
    assert!(headers(&plain, false)["strait-client-id"].is_null());
    assert!(
        headers(&plain, true)["strait-client-id"].is_null(),
        "a header that did not come over mTLS is stripped"
    );

    // gRPC rides inside mTLS as well, balanced per call, labelled with both identities.
    let calls = lab.app(&meshed, &["grpc-client", "--to", GRPC, "--calls", "50"]);
    assert_eq!(calls["ok"], 50, "{calls}");
    let server_id = format!("server_id=\"{SERVER_ID}\"");
    assert_eq!(
        lab.metric(
            &meshed,
            "strait_requests_total",
            &["dst_service=\"server\"", &server_id, "tls=\"true\""]
        ),
        52.0,
        "50 gRPC calls and 2 HTTP requests to the server went over mTLS"
    );
}

#[test]
fn strict_mode_refuses_plaintext_clients_and_permissive_accepts_them() {
    let Some(lab) = Lab::up("mtls_strict", &["mtls.yaml"]) else {
        return;
    };
    let strict = lab.pod("secure", "strict-");
    let meshed = lab.pod("secure", "client-");
    let plain = lab.pod("plain", "client-");
    // The strict pod became ready: the kubelet's probes, from the node, pass.
    // Its Service's rules may lag its readiness a moment (a connection
    // refused then never reached the pod); then the proxy resets a
    // plaintext client.
    let mut probe = Value::Null;
    eventually(Duration::from_secs(10), "the strict Service reaches its pod", || {
        probe = lab.app(&plain, &["tcp-probe", "--to", STRICT]);
        probe["outcome"] != "refused"
    });
    assert_eq!(probe["outcome"], "reset", "a plaintext client is refused: {probe}");
    assert_eq!(
        lab.metric(&strict, "strait_tcp_inbound_refusals_total", &["reason=\"plaintext\""]),
        1.0
    );
    assert_eq!(echo(&lab, &meshed, STRICT, "over mTLS")["response"], "over mTLS");
    assert_eq!(echo(&lab, &plain, ECHO, "permissive")["response"], "permissive");
}

#[test]
fn the_identity_service_signs_only_what_the_token_proves() {
    let Some(lab) = Lab::up("mtls_identity_service", &["mtls.yaml"]) else {
        return;
    };
    let client = lab.pod("secure", "client-");
    // The proxy container holds the identity token and the trust anchors;
    // the requests are made beside it, as its user.
    let request = |extra: &[&str]| -> Value {
        let mut args = vec!["identity-request"];
        args.extend_from_slice(extra);
        lab.debug_app(&client, "strait-proxy", &args)
    };
    let token = lab.container_path(&client, "strait-proxy", TOKEN);
    let own = request(&["--token-file", &token, "--identity", CLIENT_ID]);
    assert_eq!(own["status"], 200, "{own}");
    assert_eq!(own["uris"], serde_json::json!([CLIENT_ID]));

    // Whatever the CSR asks for, the certificate names the token's owner.
    let greedy = request(&["--token-file", &token, "--identity", CLIENT_ID, "--csr-uri", SERVER_ID]);
    assert_eq!(greedy["status"], 200, "{greedy}");
    assert_eq!(greedy["uris"], serde_json::json!([CLIENT_ID]));

    let other = request(&["--token-file", &token, "--identity", SERVER_ID]);
    assert_eq!(other["status"], 403, "{other}");
    assert!(other["error"].as_str().unwrap().contains("secure/client"), "{other}");
    assert_eq!(other["uris"], serde_json::json!([]));

    let garbage_csr = request(&[
        "--token-file",
        &token,
        "--identity",
        CLIENT_ID,
        "--csr-text",
        "not a CSR",
    ]);
    assert_eq!(garbage_csr["status"], 400, "{garbage_csr}");
    assert!(garbage_csr["error"].as_str().unwrap().contains("CSR"), "{garbage_csr}");

    let garbage_token = request(&["--token", "garbage", "--identity", CLIENT_ID]);
    assert_eq!(garbage_token["status"], 401, "{garbage_token}");

    // The pod's API token is not for the identity service's audience.
    let api_token = lab.container_path(
        &client,
        "strait-proxy",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    );
    let wrong_audience = request(&["--token-file", &api_token, "--identity", CLIENT_ID]);
    assert_eq!(wrong_audience["status"], 401, "{wrong_audience}");
    for refused in [&other, &garbage_csr, &garbage_token, &wrong_audience] {
        assert_eq!(refused["uris"], serde_json::json!([]), "no certificate with a refusal");
    }
}

#[test]
fn peers_that_cannot_prove_their_identity_are_refused() {
    let Some(lab) = Lab::up("mtls_refusals", &["mtls.yaml"]) else {
        return;
    };
    let server = lab.pod("secure", "server-");
    let client = lab.pod("secure", "client-");
    let injector = lab.pod("strait-system", "strait-injector-");
    let to = format!("{}:4143", lab.pod_ip(&server));

    // The server proxy: a probe holding the mesh issuer's key (in the
    // injector's pod) is let through with a valid certificate only.
    let handshake = |extra: &[&str]| -> Value {
        let mut args = vec![
            "mesh-handshake",
            "--to",
            &to,
            "--server-id",
            SERVER_ID,
            "--client-id",
            CLIENT_ID,
            "--port",
            "7000",
        ];
        args.extend_from_slice(extra);
        lab.debug_app(&injector, "injector", &args)
    };
    // The issuer the control plane made for itself, from its Secret.
    let secret = lab.get("/api/v1/namespaces/strait-system/secrets/strait-identity-generated");
    let dir = std::env::temp_dir().join(format!("strait-issuer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |key: &str| {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().unwrap())
            .unwrap();
        let path = dir.join(key);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (issuer_cert, issuer_key) = (file("tls.crt"), file("tls.key"));
    let issuer = [
        "--issuer-cert",
        issuer_cert.as_str(),
        "--issuer-key",
        issuer_key.as_str(),
    ];
    let valid = handshake(&issuer);
    assert_eq!(valid["accepted"], true, "a certificate from the mesh issuer: {valid}");
    let foreign = handshake(&[]);
    assert_eq!(foreign["accepted"], false, "a certificate from another CA: {foreign}");
    let expired = handshake(&[&issuer[..], &["--expired"]].concat());
    assert_eq!(expired["accepted"], false, "an expired certificate: {expired}");

    // The destination service tells only the mesh's own proxies where
    // things are: a certificate from the mesh issuer naming an identity of
    // its trust domain. The same probe, with other certificates or none,
    // learns nothing.
    let service = lab.get("/api/v1/namespaces/secure/services/server");
    let address = format!("{}:50051", service["spec"]["clusterIP"].as_str().unwrap());
    let destination_of = |address: &str, certificate: &[&str]| -> Value {
        let mut args = vec!["destination-get", "--to", DESTINATION, "--address", address];
        args.extend_from_slice(certificate);
        lab.debug_app(&injector, "injector", &args)
    };
    let destination = |certificate: &[&str]| destination_of(&address, certificate);
    let proxy = destination(&[&issuer[..], &["--client-id", CLIENT_ID]].concat());
    assert_eq!(proxy["code"], "Ok", "a proxy's certificate: {proxy}");
    assert_eq!(proxy["first"], "snapshot", "{proxy}");
    assert_eq!(proxy["service"], "secure/server:50051", "{proxy}");
    assert_eq!(
        proxy["endpoints"],
        serde_json::json!([format!("{}:50051", lab.pod_ip(&server))]),
        "{proxy}"
    );
    let other_domain = destination(
        &[
            &issuer[..],
            &["--client-id", "spiffe://other.example/ns/secure/sa/client"],
        ]
        .concat(),
    );
    assert_eq!(
        other_domain["code"], "PermissionDenied",
        "another trust domain: {other_domain}"
    );
    let not_spiffe = destination(&[&issuer[..], &["--client-id", "https://secure.example/client"]].concat());
    assert_eq!(
        not_spiffe["code"], "Unauthenticated",
        "a URI that is no SPIFFE ID: {not_spiffe}"
    );
    let refused_in_tls = [
        (
            "a certificate from another CA",
            destination(&["--client-id", CLIENT_ID]),
        ),
        (
            "an expired certificate",
            destination(&[&issuer[..], &["--client-id", CLIENT_ID, "--expired"]].concat()),
        ),
        ("no certificate", destination(&["--anonymous"])),
    ];
    for (what, answer) in &refused_in_tls {
        assert!(answer["code"] != "Ok" && answer["first"].is_null(), "{what}: {answer}");
    }
    let injector_log = lab.cli_ok(&["logs", &injector, "-c", "injector"]);
    assert!(
        injector_log.matches("destination service: connection refused").count() >= refused_in_tls.len(),
        "the destination service logs each refused handshake: {injector_log}"
    );
    let refusals = lab.metric(
        &server,
        "strait_tcp_inbound_refusals_total",
        &["reason=\"tls_handshake\""],
    );
    assert_eq!(refusals, 2.0);

    // A pod that claims another identity by annotation gains nothing: the
    // identity clients require of it is its ServiceAccount's, which its
    // proxy proves, so calls go on over mutual TLS with that identity. (The
    // destination service's index checks the same without timing:
    // `a_meshed_pods_identity_is_its_service_accounts_whatever_its_annotation_says`.)
    let other = "spiffe://cluster.local/ns/secure/sa/other";
    lab.cli_ok(&["annotate", &server, &format!("strait.io/identity={other}")]);
    // The destination service reads pod events in order: once a later
    // change to another pod shows (the client's proxy no longer says it has
    // an identity), the server's new annotation has been read too.
    lab.cli_ok(&["annotate", &client, "strait.io/identity-"]);
    let client_address = format!("{}:8080", lab.pod_ip(&client));
    eventually(
        Duration::from_secs(10),
        "the destination service reads the pods' changes",
        || {
            destination_of(&client_address, &[&issuer[..], &["--client-id", CLIENT_ID]].concat())["identities"]
                == serde_json::json!([""])
        },
    );
    let snapshot = destination(&[&issuer[..], &["--client-id", CLIENT_ID]].concat());
    assert_eq!(
        snapshot["identities"],
        serde_json::json!([SERVER_ID]),
        "the server's endpoint keeps its ServiceAccount's identity: {snapshot}"
    );
    let server_id = format!("server_id=\"{SERVER_ID}\"");
    let before = lab.metric(&client, "strait_requests_total", &[&server_id, "tls=\"true\""]);
    let calls = lab.app(&client, &["grpc-client", "--to", GRPC, "--calls", "5"]);
    assert_eq!(calls["ok"], 5, "{calls}");
    assert_eq!(
        lab.metric(&client, "strait_requests_total", &[&server_id, "tls=\"true\""]),
        before + 5.0,
        "the calls went over mutual TLS to the server's own identity"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn long_lived_streams_survive_three_certificate_renewals() {
    let Some(lab) = Lab::up_with(
        "mtls_renewal",
        &["mtls.yaml"],
        &[("STRAIT_LAB_CHART_VALUES", "identity.certLifetime=30s")],
    ) else {
        return;
    };
    let server = lab.pod("secure", "server-");
    let client = lab.pod("secure", "client-");
    let issued = |pod: &str| {
        lab.metric(
            pod,
            "strait_identity_certificate_requests_total",
            &["outcome=\"issued\""],
        )
    };
    let (client_before, server_before) = (issued(&client), issued(&server));
    // Renewal comes at 70% of 30 s, so 75 s of streaming spans three.
    let grpc = lab.spawn_app(
        &client,
        &[
            "grpc-client",
            "--to",
            GRPC,
            "--mode",
            "bidi",
            "--calls",
            "75",
            "--rate",
            "1",
        ],
    );
    let tcp = lab.spawn_app(
        &client,
        &["tcp-chat", "--to", ECHO, "--messages", "75", "--interval", "1s"],
    );
    let grpc = grpc.finish(Duration::from_secs(120));
    let tcp = tcp.finish(Duration::from_secs(60));
    assert_eq!(grpc["ok"], 1, "the bidi stream ended cleanly: {grpc}");
    assert_eq!(tcp["ok"], true, "the TCP stream ended cleanly: {tcp}");
    assert!(
        issued(&client) - client_before >= 3.0,
        "the client proxy renewed three times"
    );
    assert!(
        issued(&server) - server_before >= 3.0,
        "the server proxy renewed three times"
    );
    // And new connections use the renewed certificates.
    assert_eq!(echo(&lab, &client, ECHO, "after")["response"], "after");
}

/// Cuts the identity service (port 8083 of the control plane pod) off with
/// `-I`, or brings it back with `-D`; the webhook stays up.
fn cut_identity_service(lab: &Lab, injector: &str, action: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.netns(injector), "iptables", action, "INPUT"])
        .args([
            "-p",
            "tcp",
            "--dport",
            "8083",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "iptables {action}");
}

#[test]
fn the_identity_service_gone_at_renewal_time_leaves_certificates_in_use_and_renewal_retried() {
    // Certificates live 60 s and are renewed at 60-70% of that.
    let Some(lab) = Lab::up_with(
        "mtls_renewal_outage",
        &["mtls.yaml"],
        &[("STRAIT_LAB_CHART_VALUES", "identity.certLifetime=60s")],
    ) else {
        return;
    };
    let client = lab.pod("secure", "client-");
    let injector = lab.pod("strait-system", "strait-injector-");
    let requests = |outcome: &str| {
        lab.metric(
            &client,
            "strait_identity_certificate_requests_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    let issued_before = requests("issued");
    cut_identity_service(&lab, &injector, "-I");
    eventually(
        Duration::from_secs(60),
        "the client's proxy tries to renew and fails",
        || requests("failed") > 0.0,
    );
    // The certificate it holds still serves, over mutual TLS.
    assert_eq!(echo(&lab, &client, ECHO, "during")["response"], "during");
    std::thread::sleep(Duration::from_secs(6));
    let attempts = requests("failed");
    // Retries back off from 100 ms, doubling (with jitter) up to 10 s:
    // about eight attempts in the first 6 s of the outage, where a loop
    // without back-off would make thousands.
    assert!(
        (3.0..=15.0).contains(&attempts),
        "{attempts} failed attempts within about 6 s: retried, and backing off"
    );
    assert!(lab.is_ready(&client), "a proxy holding a valid certificate stays ready");

    cut_identity_service(&lab, &injector, "-D");
    eventually(
        Duration::from_secs(15),
        "renewal succeeds once the identity service is back",
        || requests("issued") > issued_before,
    );
    assert_eq!(echo(&lab, &client, ECHO, "after")["response"], "after");
}

#[test]
fn a_pod_started_while_the_identity_service_is_down_gets_ready_when_it_returns() {
    let Some(lab) = Lab::up("mtls_identity_outage", &["mtls.yaml"]) else {
        return;
    };
    let client = lab.pod("secure", "client-");
    let injector = lab.pod("strait-system", "strait-injector-");
    assert_eq!(echo(&lab, &client, ECHO, "before")["response"], "before");

    // Cut the identity service (port 8083) off; the webhook stays up.
    let block = |action: &str| cut_identity_service(&lab, &injector, action);
    let first = lab.pod("secure", "server-");
    block("-I");
    lab.cli_ok(&["scale", "secure/server", "2"]);
    let started = Instant::now();
    let newcomer = loop {
        if let Some(pod) = lab.pods("secure", "server-").into_iter().find(|p| *p != first) {
            break pod;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the second server pod never appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !lab.is_ready(&newcomer),
        "a proxy without a certificate must not be ready"
    );
    // Proxies holding certificates keep serving, over mTLS.
    let tls_before = lab.metric(
        &client,
        "strait_tcp_open_total",
        &["direction=\"outbound\"", "tls=\"true\""],
    );
    assert_eq!(echo(&lab, &client, ECHO, "during")["response"], "during");
    let tls_after = lab.metric(
        &client,
        "strait_tcp_open_total",
        &["direction=\"outbound\"", "tls=\"true\""],
    );
    assert_eq!(tls_after, tls_before + 1.0);

    block("-D");
    eventually(Duration::from_secs(60), "the new pod becomes ready", || {
        lab.is_ready(&newcomer)
    });
    let calls = lab.app(&client, &["grpc-client", "--to", GRPC, "--calls", "200"]);
    assert_eq!(calls["ok"], 200, "{calls}");
    assert_eq!(
        calls["by_pod"].as_object().unwrap().len(),
        2,
        "both pods answer: {calls}"
    );
}
