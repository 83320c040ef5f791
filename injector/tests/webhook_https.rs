//! The webhook over real HTTPS, with real AdmissionReview JSON, in-process
//! on an ephemeral port with a certificate made for the test.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use strait_injector::InjectSettings;
use strait_injector::serve::{WebhookMetrics, serve_webhook};
use strait_injector::tls::FileCert;
use strait_injector::webhook::NamespaceLabels;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct Labelled;

impl NamespaceLabels for Labelled {
    fn injection_enabled(&self, namespace: &str) -> Option<bool> {
        Some(namespace == "demo")
    }
}

/// Starts the webhook with a fresh certificate; returns its address and CA.
async fn webhook() -> (SocketAddr, CertificateDer<'static>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["strait-injector.strait-system.svc".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("strait-webhook-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let tls = FileCert::new(dir.join("tls.crt"), dir.join("tls.key"))
        .unwrap()
        .server_config(&[b"http/1.1"])
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_webhook(
        listener,
        tls,
        Arc::new(Labelled),
        Arc::new(InjectSettings::default()),
        WebhookMetrics::default(),
        tokio::sync::watch::channel(false).1,
    ));
    (addr, cert.der().clone())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn post(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("strait-injector.strait-system.svc").unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "strait-injector.strait-system.svc")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn review(namespace: &str) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3a1b9f0e-2c1d-4a8e-9a55-0f6c1f3c7d21",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "web-7d9f8b6c5d-", "labels": {"app": "web"}},
                "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "web:1"}]},
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_review_over_https_gets_the_injection_patch() {
    let (addr, ca) = webhook().await;
    let (status, body) = post(addr, &ca, "POST", "/inject", review("demo")).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "3a1b9f0e-2c1d-4a8e-9a55-0f6c1f3c7d21");
    assert_eq!(answer["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert!(
        patch
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/spec/initContainers")
    );

    let (status, body) = post(addr, &ca, "POST", "/inject", review("elsewhere")).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(
        answer["response"].get("patch").is_none(),
        "no patch outside labelled namespaces"
    );
}

#[tokio::test]
async fn malformed_requests_get_a_400_with_a_message_and_the_webhook_carries_on() {
    let (addr, ca) = webhook().await;
    let bad: [(&[u8], &str); 4] = [
        (
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"",
            "the body is not JSON",
        ),
        (b"\x00\xff\xfe garbage", "the body is not JSON"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":{}}}"#,
            "request.uid is missing",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Pod"}"#,
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview",
        ),
    ];
    for (body, expected) in bad {
        let (status, text) = post(addr, &ca, "POST", "/inject", body.to_vec()).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(expected), "{text}");
    }
    assert_eq!(post(addr, &ca, "GET", "/inject", Vec::new()).await.0, 405);
    assert_eq!(post(addr, &ca, "POST", "/elsewhere", review("demo")).await.0, 404);
    assert_eq!(
        post(addr, &ca, "POST", "/inject", review("demo")).await.0,
        200,
        "still serving after bad input"
    );
}
