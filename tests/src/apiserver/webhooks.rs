//! Mutating admission webhooks, called as the Kubernetes API server calls
//! them: every MutatingWebhookConfiguration whose rules, namespaceSelector
//! and objectSelector match a new pod gets an AdmissionReview over HTTPS
//! (verified against its caBundle, addressed to its Service), and its JSON
//! patch is applied; a webhook that fails follows its failurePolicy.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::admission::{Mutated, PodMutator};
use super::error::ApiError;
use super::resource::Resource;
use super::selector::LabelSelector;
use super::store::{Store, name_of, namespace_of};

pub struct Webhooks {
    pub store: Arc<Store>,
}

fn matches_rules(webhook: &Value) -> bool {
    webhook
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|rule| {
            let has = |field: &str, wanted: &str| {
                rule.get(field)
                    .and_then(Value::as_array)
                    .is_some_and(|items| items.iter().any(|v| v == wanted || v == "*"))
            };
            has("operations", "CREATE") && has("apiGroups", "") && has("apiVersions", "v1") && has("resources", "pods")
        })
}

fn selects(webhook: &Value, field: &str, object: &Value) -> Result<bool, String> {
    match webhook.get(field) {
        None | Some(Value::Null) => Ok(true),
        Some(selector) => LabelSelector::from_object(selector)
            .map(|s| s.matches(object))
            .map_err(|e| e.to_string()),
    }
}

impl Webhooks {
    /// Where a webhook's Service is: its ClusterIP and port, the DNS name
    /// its certificate must carry, and the request path.
    fn service_of(&self, webhook: &Value) -> Result<(String, u16, String, String), String> {
        let config = webhook.get("clientConfig").ok_or("clientConfig is missing")?;
        let service = config
            .get("service")
            .ok_or("only service clientConfigs are supported by the lab")?;
        let (namespace, name) = (
            service["namespace"].as_str().unwrap_or_default(),
            service["name"].as_str().unwrap_or_default(),
        );
        let port = service.get("port").and_then(Value::as_u64).unwrap_or(443) as u16;
        let path = service.get("path").and_then(Value::as_str).unwrap_or("/").to_string();
        let found = self
            .store
            .get(Resource::named("services"), namespace, name)
            .map_err(|e| e.message)?;
        let ip = found
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .ok_or("the webhook's Service has no ClusterIP")?;
        Ok((ip.to_string(), port, format!("{name}.{namespace}.svc"), path))
    }

    /// Every configured webhook, and whether its Service takes connections
    /// (its endpoints are ready and the Service's rules are in place).
    pub async fn reachability(&self) -> Vec<(String, Result<(), String>)> {
        let (configurations, _) = self.store.list(Resource::named("mutatingwebhookconfigurations"), None);
        let mut answers = Vec::new();
        for webhook in configurations
            .iter()
            .flat_map(|c| c.get("webhooks").and_then(Value::as_array).into_iter().flatten())
        {
            let name = webhook
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let reachable = match self.service_of(webhook) {
                Ok((ip, port, ..)) => {
                    match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((ip.as_str(), port))).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(error)) => Err(format!("connect to {ip}:{port}: {error}")),
                        Err(_) => Err(format!("connect to {ip}:{port}: no answer within 1s")),
                    }
                }
                Err(problem) => Err(problem),
            };
            answers.push((name, reachable));
        }
        answers
    }

    /// Calls one webhook and returns its (decoded) patch and warnings.
    async fn call(&self, webhook: &Value, review: &Value) -> Result<(Option<Vec<Value>>, Vec<String>), String> {
        let config = webhook.get("clientConfig").ok_or("clientConfig is missing")?;
        let (ip, port, host, path) = self.service_of(webhook)?;
        let ca = config
            .get("caBundle")
            .and_then(Value::as_str)
            .ok_or("caBundle is missing")?;
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .map_err(|e| format!("caBundle: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(cert.map_err(|e| format!("caBundle: {e}"))?)
                .map_err(|e| format!("caBundle: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = TcpStream::connect((ip.as_str(), port))
            .await
            .map_err(|e| format!("connect to {ip}:{port}: {e}"))?;
        let stream = TlsConnector::from(Arc::new(tls))
            .connect(server_name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::post(path)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(review.to_string())))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the webhook answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the webhook's answer is not JSON: {e}"))?;
        let response = answer.get("response").ok_or("the webhook's answer has no response")?;
        if response.get("uid") != review.pointer("/request/uid") {
            return Err("the webhook answered another request's uid".into());
        }
        if response.get("allowed") != Some(&Value::Bool(true)) {
            let message = response
                .pointer("/status/message")
                .and_then(Value::as_str)
                .unwrap_or("denied");
            return Err(format!("denied: {message}"));
        }
        let warnings: Vec<String> = response
            .get("warnings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect();
        let patch = match response.get("patch").and_then(Value::as_str) {
            None => None,
            Some(encoded) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| format!("patch: {e}"))?;
                Some(serde_json::from_slice(&bytes).map_err(|e| format!("patch: {e}"))?)
            }
        };
        Ok((patch, warnings))
    }

    async fn admit(&self, mut pod: Value, namespace: &Value) -> Result<Mutated, ApiError> {
        let (configurations, _) = self.store.list(Resource::named("mutatingwebhookconfigurations"), None);
        let mut warnings = Vec::new();
        for configuration in &configurations {
            for webhook in configuration
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let webhook_name = webhook.get("name").and_then(Value::as_str).unwrap_or_default();
                let selected = matches_rules(webhook)
                    && selects(webhook, "namespaceSelector", namespace).unwrap_or(false)
                    && selects(webhook, "objectSelector", &pod).unwrap_or(false);
                if !selected {
                    continue;
                }
                let review = json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {
                        "uid": format!("{}-{}", name_of(configuration), super::store::random_suffix(12)),
                        "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                        "name": name_of(&pod),
                        "namespace": name_of(namespace),
                        "operation": "CREATE",
                        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                        "object": pod,
                        "dryRun": false,
                        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
                    },
                });
                let timeout = Duration::from_secs(webhook.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(10));
                let outcome = match tokio::time::timeout(timeout, self.call(webhook, &review)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
                };
                let fail = webhook.get("failurePolicy").and_then(Value::as_str) != Some("Ignore");
                match outcome {
                    Ok((patch, webhook_warnings)) => {
                        warnings.extend(webhook_warnings);
                        if let Some(patch) = patch {
                            let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch))
                                .map_err(|e| ApiError::internal(format!("webhook {webhook_name:?}: bad patch: {e}")))?;
                            json_patch::patch(&mut pod, &patch.0).map_err(|e| {
                                ApiError::internal(format!("webhook {webhook_name:?}: the patch does not apply: {e}"))
                            })?;
                        }
                    }
                    Err(problem) if fail => {
                        return Err(ApiError::internal(format!(
                            "failed calling webhook {webhook_name:?}: {problem}"
                        )));
                    }
                    Err(problem) => {
                        tracing::warn!(webhook = webhook_name, pod = %format!("{}/{}", namespace_of(&pod), name_of(&pod)), %problem, "webhook failed; admitting the pod unchanged (failurePolicy Ignore)");
                    }
                }
            }
        }
        Ok(Mutated { pod, warnings })
    }
}

impl PodMutator for Webhooks {
    fn mutate<'a>(&'a self, pod: Value, namespace: &'a Value) -> BoxFuture<'a, Result<Mutated, ApiError>> {
        Box::pin(self.admit(pod, namespace))
    }
}
