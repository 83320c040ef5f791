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

use strait_contract::{Setting, SettingError};

use crate::settings::InjectSettings;
use crate::webhook::{self, NamespaceLabels};

pub const WEBHOOK_ADDR: &str = "STRAIT_WEBHOOK_ADDR";
pub const WEBHOOK_CERT: &str = "STRAIT_WEBHOOK_CERT";
pub const WEBHOOK_KEY: &str = "STRAIT_WEBHOOK_KEY";
pub const ADMIN_ADDR: &str = "STRAIT_ADMIN_ADDR";
pub const IDENTITY_LISTEN: &str = "STRAIT_IDENTITY_LISTEN";
pub const ISSUER_CERT: &str = "STRAIT_ISSUER_CERT";
pub const ISSUER_KEY: &str = "STRAIT_ISSUER_KEY";
pub const CERT_LIFETIME: &str = "STRAIT_CERT_LIFETIME";

/// AdmissionReviews are small; anything bigger is refused.
const MAX_REVIEW: usize = 8 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub webhook_addr: SocketAddr,
    pub webhook_cert: PathBuf,
    pub webhook_key: PathBuf,
    pub admin_addr: SocketAddr,
    pub inject: InjectSettings,
    pub identity_listen: SocketAddr,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    /// How long the certificates the identity service signs are valid.
    pub cert_lifetime: Duration,
}

impl ServeConfig {
    /// The DNS names the identity service is reached by, for its own
    /// serving certificate: the configured host and its shorter forms.
    pub fn identity_names(&self) -> Vec<String> {
        let host = self
            .inject
            .identity_addr
            .rsplit_once(':')
            .map_or(self.inject.identity_addr.as_str(), |(h, _)| h);
        let mut names = vec![host.to_string()];
        for suffix in [".cluster.local", ".svc"] {
            if let Some(shorter) = names.last().and_then(|n| n.strip_suffix(suffix)).map(str::to_string) {
                names.push(shorter);
            }
        }
        names
    }
}

impl ServeConfig {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let addr = |name: &'static str, default: &str| -> Result<SocketAddr, SettingError> {
            let value = env(name).unwrap_or_else(|| default.to_string());
            value
                .parse()
                .map_err(|_| SettingError::new(name, value, "expected an address and port"))
        };
        let inject = InjectSettings::from_env(&env)?;
        Ok(ServeConfig {
            webhook_addr: addr(WEBHOOK_ADDR, "0.0.0.0:8443")?,
            webhook_cert: env(WEBHOOK_CERT)
                .unwrap_or_else(|| "/var/run/strait/webhook/tls.crt".into())
                .into(),
            webhook_key: env(WEBHOOK_KEY)
                .unwrap_or_else(|| "/var/run/strait/webhook/tls.key".into())
                .into(),
            admin_addr: addr(ADMIN_ADDR, "0.0.0.0:9990")?,
            identity_listen: addr(IDENTITY_LISTEN, "0.0.0.0:8083")?,
            issuer_cert: env(ISSUER_CERT)
                .unwrap_or_else(|| "/var/run/strait/identity/tls.crt".into())
                .into(),
            issuer_key: env(ISSUER_KEY)
                .unwrap_or_else(|| "/var/run/strait/identity/tls.key".into())
                .into(),
            cert_lifetime: Setting::new(CERT_LIFETIME, env(CERT_LIFETIME)).duration(Duration::from_secs(24 * 3600))?,
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

/// Answers one webhook request: POST /inject with an AdmissionReview.
pub async fn handle(
    request: Request<Incoming>,
    namespaces: &dyn NamespaceLabels,
    settings: &InjectSettings,
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
        Ok(answer) => respond(StatusCode::OK, "application/json", answer.to_string()),
        Err(error) => {
            tracing::warn!(%error, "rejecting a webhook request");
            respond(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n"))
        }
    }
}

/// Serves the webhook on `listener` until the task is dropped.
pub async fn serve_webhook(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    namespaces: Arc<dyn NamespaceLabels>,
    settings: Arc<InjectSettings>,
) {
    crate::tls::serve_https(listener, tls, "webhook", move |request| {
        let (namespaces, settings) = (namespaces.clone(), settings.clone());
        async move { handle(request, namespaces.as_ref(), &settings).await }
    })
    .await
}
