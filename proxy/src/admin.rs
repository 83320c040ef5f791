//! The admin server on :4191: `/live`, `/ready`, `/metrics`, `/endpoints`
//! (the balancers' view of each destination, JSON), `/app-probe/tcp/<port>`
//! (the application's TCP probes, see [`AppProbes`]) and `POST /shutdown`
//! (from localhost only). It keeps answering while the proxy
//! drains, so probes see `/ready` turn false and the last metrics are scraped.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use strait_contract::{Chain, PortSet, exposition, process};
use tokio::net::{TcpListener, TcpStream};

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

    /// Marks `condition` as met, so `/ready` no longer waits for it; a condition
    /// never required is ignored.
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

/// The application's `tcpSocket` probes, which the injector rewrote to
/// `GET /app-probe/tcp/<port>` here: behind the inbound redirect the
/// kubelet's own TCP connection would reach the proxy, which accepts it
/// whether or not the application listens. The proxy opens the connection
/// to the application's port in its place: 200 when it opens within
/// `timeout`, 503 naming the error when not, 404 for a port not in `ports`
/// (the admin port probes no others).
#[derive(Clone, Debug)]
pub struct AppProbes {
    /// The ports the application's probes name (`STRAIT_APP_PROBE_PORTS`, written
    /// by the injector); any other port is answered 404.
    pub ports: PortSet,
    /// The pod's address, where the kubelet's probe would connect.
    pub ip: IpAddr,
    /// How long the connection to the application's port may take to open
    /// before the probe is answered 503.
    pub timeout: std::time::Duration,
}

const APP_PROBE: &str = "/app-probe/tcp/";

impl AppProbes {
    async fn probe(&self, port: &str) -> Response<Full<Bytes>> {
        let canonical = !port.is_empty() && !port.starts_with('0') && port.bytes().all(|b| b.is_ascii_digit());
        let probed = port
            .parse::<u16>()
            .ok()
            .filter(|port| canonical && self.ports.contains(*port));
        let Some(port) = probed else {
            return text(
                StatusCode::NOT_FOUND,
                format!("not a probed port: {port:?} (probed: {})\n", self.ports),
            );
        };
        let addr = SocketAddr::new(self.ip, port);
        match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => text(StatusCode::OK, format!("{addr} accepts connections\n")),
            Ok(Err(error)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{addr}: {error}\n")),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{addr}: no connection within {:?}\n", self.timeout),
            ),
        }
    }
}

/// What the admin server answers from; each connection gets a clone.
#[derive(Clone)]
pub struct Admin {
    /// The proxy's `strait_*` metrics, encoded for `/metrics` ahead of the
    /// `process_*` series.
    pub registry: Arc<Registry>,
    /// The conditions `/ready` waits for.
    pub readiness: Readiness,
    /// The proxy's drain: `/ready` answers 503 once the stop is announced,
    /// and a `POST /shutdown` from localhost starts the drain.
    pub drain: Drain,
    /// Renders the balancers' view of each destination for `/endpoints`.
    pub endpoints: EndpointsView,
    /// Answers `/app-probe/tcp/<port>`.
    pub app_probes: AppProbes,
}

/// Serves the admin API over HTTP/1.1 on `listener` until the task is
/// aborted. A failed accept is logged and retried after 50 ms; a client has
/// 10 seconds to send its request headers.
pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(&request, peer).await) }
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
    async fn respond(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if let Some(port) = path.strip_prefix(APP_PROBE) {
            return match *request.method() {
                Method::GET | Method::HEAD => self.app_probes.probe(port).await,
                _ => not_allowed("GET, HEAD"),
            };
        }
        match (request.method(), path) {
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
            (_, "/shutdown") => not_allowed("POST"),
            (_, "/live" | "/ready" | "/metrics" | "/endpoints") => not_allowed("GET, HEAD"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /endpoints, /app-probe/tcp/<port>\n".into(),
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

    /// OpenMetrics for Prometheus, the classic text format for the rest: the
    /// `strait_*` series, then the `process_*` ones.
    fn metrics(&self, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
        let encoded = match exposition::encode(&[&self.registry, process::registry()]) {
            Ok(encoded) => encoded,
            Err(error) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode metrics: {error}\n"),
                );
            }
        };
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

/// A 405 with the `Allow` header RFC 9110 §15.5.6 asks for.
fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(admin: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.lines().next().unwrap_or_default().to_string();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string();
        format!("{status} | {body}")
    }

    #[tokio::test]
    async fn an_application_probe_passes_only_while_the_application_listens_and_only_on_its_ports() {
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listening = app.local_addr().unwrap().port();
        let closed = {
            let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
            gone.local_addr().unwrap().port()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ports = PortSet::parse(&format!("{listening},{closed}")).unwrap();
        tokio::spawn(serve(
            listener,
            Admin {
                registry: Arc::new(Registry::default()),
                readiness: Readiness::default(),
                drain: Drain::new(),
                endpoints: Arc::new(|| serde_json::json!({})),
                app_probes: AppProbes {
                    ports,
                    ip: IpAddr::from([127, 0, 0, 1]),
                    timeout: Duration::from_secs(1),
                },
            },
        ));
        let ok = get(addr, &format!("/app-probe/tcp/{listening}")).await;
        assert_eq!(
            ok,
            format!("HTTP/1.1 200 OK | 127.0.0.1:{listening} accepts connections")
        );
        let refused = get(addr, &format!("/app-probe/tcp/{closed}")).await;
        assert!(
            refused.starts_with(&format!(
                "HTTP/1.1 503 Service Unavailable | 127.0.0.1:{closed}: Connection refused"
            )),
            "{refused}"
        );
        let other = get(addr, "/app-probe/tcp/22").await;
        assert!(
            other.starts_with("HTTP/1.1 404 Not Found | not a probed port: \"22\""),
            "{other}"
        );
        for garbage in ["x%00", "", "+80", &format!("0{listening}"), "99999999999"] {
            let answer = get(addr, &format!("/app-probe/tcp/{garbage}")).await;
            assert!(answer.starts_with("HTTP/1.1 404 Not Found"), "{garbage}: {answer}");
        }
        drop(app);
        let gone = get(addr, &format!("/app-probe/tcp/{listening}")).await;
        assert!(gone.starts_with("HTTP/1.1 503"), "{gone}");
    }
}
