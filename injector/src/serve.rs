//! `strait-injector serve`: the control plane process. It serves the
//! admission webhook over HTTPS and the admin port, built from its
//! configuration before anything is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use strait_contract::{Setting, SettingError};

use crate::settings::InjectSettings;
use crate::webhook::{self, NamespaceLabels};

pub const WEBHOOK_ADDR: &str = "STRAIT_WEBHOOK_ADDR";
pub const WEBHOOK_CERT: &str = "STRAIT_WEBHOOK_CERT";
pub const WEBHOOK_KEY: &str = "STRAIT_WEBHOOK_KEY";
pub const ADMIN_ADDR: &str = "STRAIT_ADMIN_ADDR";
pub const IDENTITY_LISTEN: &str = "STRAIT_IDENTITY_LISTEN";
pub const DESTINATION_LISTEN: &str = "STRAIT_DESTINATION_LISTEN";
pub const ISSUER_CERT: &str = "STRAIT_ISSUER_CERT";
pub const ISSUER_KEY: &str = "STRAIT_ISSUER_KEY";
pub const CERT_LIFETIME: &str = "STRAIT_CERT_LIFETIME";
/// The control plane's own namespace (the downward API's `metadata.namespace`).
pub const NAMESPACE: &str = "STRAIT_NAMESPACE";
/// Set: the webhook CA lives in this Secret, which the control plane
/// creates if missing, and the webhook configuration's `caBundle` is kept
/// in step (see [`crate::bootstrap`]). Unset: the serving certificate is
/// read from `STRAIT_WEBHOOK_CERT`/`KEY` (cert-manager's).
pub const WEBHOOK_CA_SECRET: &str = "STRAIT_WEBHOOK_CA_SECRET";
/// The MutatingWebhookConfiguration whose `caBundle` is kept in step.
pub const WEBHOOK_CONFIGURATION: &str = "STRAIT_WEBHOOK_CONFIGURATION";
/// The DNS names of the webhook's Service, comma-separated.
pub const WEBHOOK_DNS_NAMES: &str = "STRAIT_WEBHOOK_DNS_NAMES";
/// Set: the trust anchor and issuer live in this Secret, which the control
/// plane creates (a new ten-year CA) if missing. Unset: the user's, read
/// from `STRAIT_ISSUER_CERT`/`KEY` and `STRAIT_TRUST_ANCHORS_FILE`.
pub const IDENTITY_SECRET: &str = "STRAIT_IDENTITY_SECRET";
/// After SIGTERM, how long the control plane reports not ready while it
/// still serves, so the API server and proxies stop sending to it.
pub const SHUTDOWN_DELAY: &str = "STRAIT_SHUTDOWN_DELAY";

/// AdmissionReviews are small; anything bigger is refused.
const MAX_REVIEW: usize = 8 * 1024 * 1024;

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookCertSource {
    /// Files kept by someone else (cert-manager), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Signed by the control plane's own webhook CA, kept in `secret`.
    Bootstrap {
        secret: String,
        configuration: String,
        dns_names: Vec<String>,
    },
}

/// Where the identity service's issuer and the trust anchors come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerSource {
    /// The user's, mounted from the chart's Secret.
    Files { cert: PathBuf, key: PathBuf },
    /// The control plane's own, kept in `secret`.
    Bootstrap { secret: String },
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub namespace: String,
    pub webhook_addr: SocketAddr,
    pub webhook_cert: WebhookCertSource,
    pub admin_addr: SocketAddr,
    pub inject: InjectSettings,
    pub identity_listen: SocketAddr,
    pub destination_listen: SocketAddr,
    pub issuer: IssuerSource,
    /// How long the certificates the identity service signs are valid.
    pub cert_lifetime: Duration,
    /// See [`SHUTDOWN_DELAY`].
    pub shutdown_delay: Duration,
}

impl ServeConfig {
    /// The DNS names the identity service is reached by, for its own
    /// serving certificate.
    pub fn identity_names(&self) -> Vec<String> {
        service_names(&self.inject.identity_addr)
    }

    /// The DNS names the destination service is reached by, for its own
    /// serving certificate.
    pub fn destination_names(&self) -> Vec<String> {
        service_names(&self.inject.destination_addr)
    }
}

/// The host of `addr` (host:port) and its shorter forms:
/// `name.namespace.svc.<cluster domain>`, then `name.namespace.svc` and
/// `name.namespace`, whatever the cluster's domain.
fn service_names(addr: &str) -> Vec<String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let mut names = vec![host.to_string()];
    if let Some((service, _domain)) = host.split_once(".svc.") {
        names.push(format!("{service}.svc"));
    }
    if let Some(service) = names.last().and_then(|n| n.strip_suffix(".svc")).map(str::to_string) {
        names.push(service);
    }
    names
}

impl ServeConfig {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let addr = |name: &'static str, default: &str| -> Result<SocketAddr, SettingError> {
            let value = env(name).unwrap_or_else(|| default.to_string());
            value
                .parse()
                .map_err(|_| SettingError::new(name, value, "expected an address and port"))
        };
        let path = |name: &str, default: &str| PathBuf::from(env(name).unwrap_or_else(|| default.to_string()));
        let set = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let inject = InjectSettings::from_env(&env)?;
        let webhook_cert = match set(WEBHOOK_CA_SECRET) {
            Some(secret) => WebhookCertSource::Bootstrap {
                secret,
                configuration: set(WEBHOOK_CONFIGURATION).ok_or_else(|| {
                    SettingError::new(
                        WEBHOOK_CONFIGURATION,
                        "",
                        format!("required when {WEBHOOK_CA_SECRET} is set"),
                    )
                })?,
                dns_names: set(WEBHOOK_DNS_NAMES)
                    .map(|names| {
                        names
                            .split(',')
                            .map(|n| n.trim().to_string())
                            .filter(|n| !n.is_empty())
                            .collect()
                    })
                    .filter(|names: &Vec<String>| !names.is_empty())
                    .ok_or_else(|| {
                        SettingError::new(
                            WEBHOOK_DNS_NAMES,
                            "",
                            format!("required when {WEBHOOK_CA_SECRET} is set"),
                        )
                    })?,
            },
            None => WebhookCertSource::Files {
                cert: path(WEBHOOK_CERT, "/var/run/strait/webhook/tls.crt"),
                key: path(WEBHOOK_KEY, "/var/run/strait/webhook/tls.key"),
            },
        };
        let issuer = match set(IDENTITY_SECRET) {
            Some(secret) => IssuerSource::Bootstrap { secret },
            None => IssuerSource::Files {
                cert: path(ISSUER_CERT, "/var/run/strait/identity/tls.crt"),
                key: path(ISSUER_KEY, "/var/run/strait/identity/tls.key"),
            },
        };
        Ok(ServeConfig {
            namespace: set(NAMESPACE).unwrap_or_else(|| "strait-system".into()),
            webhook_addr: addr(WEBHOOK_ADDR, "0.0.0.0:8443")?,
            webhook_cert,
            admin_addr: addr(ADMIN_ADDR, "0.0.0.0:9990")?,
            identity_listen: addr(IDENTITY_LISTEN, "0.0.0.0:8083")?,
            destination_listen: addr(DESTINATION_LISTEN, "0.0.0.0:8086")?,
            issuer,
            cert_lifetime: Setting::new(CERT_LIFETIME, env(CERT_LIFETIME)).duration(Duration::from_secs(24 * 3600))?,
            shutdown_delay: Setting::new(SHUTDOWN_DELAY, env(SHUTDOWN_DELAY)).duration(Duration::from_secs(5))?,
            inject,
        })
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    /// `injected`, `skipped` (admitted unchanged) or `malformed` (a 400).
    result: &'static str,
}

/// `strait_control_webhook_admissions_total{result}`: AdmissionReviews
/// answered, by result.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    admissions: Family<AdmissionLabels, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WebhookMetrics::default();
        registry.register(
            "webhook_admissions",
            "AdmissionReviews answered, by result: injected, skipped or malformed",
            metrics.admissions.clone(),
        );
        metrics
    }

    fn count(&self, result: &'static str) {
        self.admissions.get_or_create(&AdmissionLabels { result }).inc();
    }
}

/// Answers one webhook request: POST /inject with an AdmissionReview.
pub async fn handle(
    request: Request<Incoming>,
    namespaces: &dyn NamespaceLabels,
    settings: &InjectSettings,
    metrics: &WebhookMetrics,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/inject" {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the webhook is at /inject\n",
        );
    }
    if request.method() != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "POST an AdmissionReview to /inject\n",
        );
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("cannot read the body: {error}\n"),
            );
        }
    };
    match webhook::review(&body, namespaces, settings) {
        Ok(answer) => {
            let injected = answer.pointer("/response/patch").is_some();
            metrics.count(if injected { "injected" } else { "skipped" });
            respond(StatusCode::OK, "application/json", answer.to_string())
        }
        Err(error) => {
            metrics.count("malformed");
            tracing::warn!(%error, "rejecting a webhook request");
            respond(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n"))
        }
    }
}

/// Serves the webhook on `listener` until `stop`, then lets open
/// connections finish (see [`crate::tls::serve_https`]).
pub async fn serve_webhook(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    namespaces: Arc<dyn NamespaceLabels>,
    settings: Arc<InjectSettings>,
    metrics: WebhookMetrics,
    stop: crate::tls::Stop,
) {
    crate::tls::serve_https(
        listener,
        tls,
        "webhook",
        move |request| {
            let (namespaces, settings, metrics) = (namespaces.clone(), settings.clone(), metrics.clone());
            async move { handle(request, namespaces.as_ref(), &settings, &metrics).await }
        },
        stop,
    )
    .await
}
