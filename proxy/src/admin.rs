//! The admin server on :4191: `/live`, `/ready`, `/metrics`, `/endpoints`
//! (the balancers' view of each destination, JSON) and `POST /shutdown`
//! (from localhost only). It keeps answering while the proxy
//! drains, so probes see `/ready` turn false and the last metrics are scraped.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use strait_contract::exposition;
use tokio::net::TcpListener;

use crate::drain::Drain;

/// What `/ready` waits for: named conditions that must all be met.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Readiness {
    /// Adds a condition that `/ready` waits for until [`Readiness::met`].
    pub fn require(&self, condition: &'static str) {
        self.lock().insert(condition);
    }

    pub fn met(&self, condition: &'static str) {
        self.lock().remove(condition);
    }

    /// The conditions not yet met, empty when ready.
    pub fn pending(&self) -> Vec<&'static str> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What `/endpoints` shows: the balancers' views, as JSON.
pub type EndpointsView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
pub struct Admin {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub drain: Drain,
    pub endpoints: EndpointsView,
}

pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = admin.respond(&request, peer);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    fn respond(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n".into()),
            (&Method::GET | &Method::HEAD, "/ready") => self.ready(),
            (&Method::GET | &Method::HEAD, "/metrics") => self.metrics(request.headers()),
            (&Method::GET | &Method::HEAD, "/endpoints") => json(&(self.endpoints)()),
            (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
                tracing::info!("shutdown requested over the admin API");
                self.drain.start();
                text(StatusCode::OK, "shutting down\n".into())
            }
            (_, "/shutdown") if request.method() == Method::POST => text(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from localhost\n".into(),
            ),
            (_, "/live" | "/ready" | "/metrics" | "/endpoints" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into())
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /endpoints\n".into(),
            ),
        }
    }

    fn ready(&self) -> Response<Full<Bytes>> {
        if self.drain.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n".into());
        }
        let pending = self.readiness.pending();
        if pending.is_empty() {
            text(StatusCode::OK, "ready\n".into())
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: waiting for {}\n", pending.join(", ")),
            )
        }
    }

    /// OpenMetrics for Prometheus, the classic text format for the rest.
    fn metrics(&self, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
        let mut encoded = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut encoded, &self.registry) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {error}\n"),
            );
        }
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let (body, content_type) = exposition::negotiate(accept, encoded);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        response
    }
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value:#}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
