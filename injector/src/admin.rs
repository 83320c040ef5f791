//! The control plane's plain-HTTP admin port for the kubelet and
//! Prometheus: `/live`, `/ready` (once its caches have synced, its webhook
//! CA is trusted, and until it drains) and `/metrics`
//! (the `strait_control_*` series, then the `process_*` ones).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use strait_contract::{exposition, process};
use tokio::net::TcpListener;

/// What `/ready` still waits for: empty when ready.
pub type Pending = Arc<dyn Fn() -> Vec<&'static str> + Send + Sync>;

pub async fn serve(listener: TcpListener, registry: Arc<Registry>, pending: Pending) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (registry, pending) = (registry.clone(), pending.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let mut content_type = "text/plain; charset=utf-8";
                let (status, body) = match request.uri().path() {
                    "/live" => (StatusCode::OK, "live\n".to_string()),
                    "/ready" => match pending().join(", ") {
                        waiting if waiting.is_empty() => (StatusCode::OK, "ready\n".to_string()),
                        waiting => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {waiting}\n")),
                    },
                    "/metrics" => match exposition::encode(&[&registry, process::registry()]) {
                        Ok(encoded) => {
                            let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
                            let (body, negotiated) = exposition::negotiate(accept, encoded);
                            content_type = negotiated;
                            (StatusCode::OK, body)
                        }
                        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                    },
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
