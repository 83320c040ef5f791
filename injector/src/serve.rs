//! `strait-injector serve`: the control plane process. It serves the
//! admission webhook over HTTPS and the admin port, built from its
//! configuration before anything is bound.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::settings::InjectSettings;
use crate::webhook::{self, NamespaceLabels};

pub const WEBHOOK_ADDR: &str = "STRAIT_WEBHOOK_ADDR";
pub const WEBHOOK_CERT: &str = "STRAIT_WEBHOOK_CERT";
pub const WEBHOOK_KEY: &str = "STRAIT_WEBHOOK_KEY";
pub const ADMIN_ADDR: &str = "STRAIT_ADMIN_ADDR";

/// AdmissionReviews are small; anything bigger is refused.
const MAX_REVIEW: usize = 8 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub webhook_addr: SocketAddr,
    pub webhook_cert: PathBuf,
    pub webhook_key: PathBuf,
    pub admin_addr: SocketAddr,
    pub inject: InjectSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub problem: String,
}

impl ServeConfig {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let addr = |name: &'static str, default: &str| -> Result<SocketAddr, ConfigError> {
            let value = env(name).unwrap_or_else(|| default.to_string());
            value.parse().map_err(|_| ConfigError {
                name,
                value,
                problem: "expected an address and port".into(),
            })
        };
        let inject = InjectSettings::from_env(&env).map_err(|e| ConfigError {
            name: e.name,
            value: e.value,
            problem: e.problem,
        })?;
        Ok(ServeConfig {
            webhook_addr: addr(WEBHOOK_ADDR, "0.0.0.0:8443")?,
            webhook_cert: env(WEBHOOK_CERT)
                .unwrap_or_else(|| "/var/run/strait/webhook/tls.crt".into())
                .into(),
            webhook_key: env(WEBHOOK_KEY)
                .unwrap_or_else(|| "/var/run/strait/webhook/tls.key".into())
                .into(),
            admin_addr: addr(ADMIN_ADDR, "0.0.0.0:9990")?,
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
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (acceptor, namespaces, settings) = (acceptor.clone(), namespaces.clone(), settings.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let (namespaces, settings) = (namespaces.clone(), settings.clone());
                async move { Ok::<_, Infallible>(handle(request, namespaces.as_ref(), &settings).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
