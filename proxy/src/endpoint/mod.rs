//! One upstream endpoint, the bottom of a request's way through the proxy
//! (`http` → `balance` → `endpoint`): its connections, a few multiplexed HTTP/2
//! connections (`h2`) and a pool of HTTP/1 connections reused across
//! requests (`h1`).
//!
//! A request that could not be sent (the connection failed, or was found
//! closed before anything was written) comes back to the caller intact, so
//! it can be tried on another endpoint. A request that died on a reused idle
//! HTTP/1 connection before any byte of an answer came back is the server
//! having closed that connection as the request arrived; the caller may send
//! it again on a fresh one (see [`SendError::IdleClosed`]).

mod h1;
mod h2;
pub mod replay;

use h1::{H1_IDLE, H1_IDLE_MESHED, IdlePool, keep_alive_timeout, reuse_when_ready};
use h2::H2Connection;
pub use h2::StreamSlot;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use crate::metrics::RouteLabels;
use crate::tls::MeshTls;
use crate::transport::ConnectError;
use crate::upstream::{self, Address, Io};
use crate::wire::Body;

/// How long an endpoint that refused a connection is left out.
const FAILURE_BACKOFF: Duration = Duration::from_millis(500);

/// Why a request to one endpoint was not answered; says whether it may go to
/// another endpoint or again.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing was sent; the request is returned for another endpoint.
    #[error("could not connect")]
    NotSent {
        /// The request, untouched.
        request: Box<Request<Body>>,
        /// Why no connection could be had.
        #[source]
        error: ConnectError,
    },
    /// The request went out on a reused idle HTTP/1 connection, which the
    /// server closed before answering anything: it closed the idle
    /// connection as the request arrived. An idempotent request may be sent
    /// again on a fresh connection (RFC 9110 §9.2.2).
    #[error("the server closed a reused idle connection without answering")]
    IdleClosed(#[source] hyper::Error),
    /// The request was, or may have been, sent.
    #[error("the request failed")]
    Failed(#[source] hyper::Error),
}

/// How the proxy opens connections to upstreams.
#[derive(Clone, Debug)]
pub struct Connector {
    /// How long opening a connection may take, a mutual TLS handshake included
    /// (`STRAIT_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// This proxy's mutual TLS, when it has an identity.
    pub mesh: Option<Arc<MeshTls>>,
    /// The largest header list (bytes, as HTTP/2 counts them) a response
    /// may have; responses are read up to twice that, so the proxy can say
    /// which limit one broke (see `header_read_limit`).
    pub max_header_bytes: usize,
}

/// One upstream endpoint (`ip:port`) and its connections: HTTP/2 connections
/// shared by concurrent streams, and a pool of idle HTTP/1 connections.
pub struct Endpoint {
    /// The application's address.
    pub addr: SocketAddr,
    /// How to reach it: the address and, when meshed, the identity there.
    pub target: Address,
    connector: Connector,
    /// The HTTP/2 connections; the lock is held while connecting so
    /// concurrent requests wait for one new connection instead of making many.
    h2: tokio::sync::Mutex<Vec<H2Connection>>,
    h1_idle: IdlePool,
    /// Set when a connect attempt failed: until then the balancer skips it.
    failed_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("addr", &self.addr).finish()
    }
}

fn connect_failed(error: hyper::Error, addr: SocketAddr) -> ConnectError {
    ConnectError::Other {
        addr,
        source: std::io::Error::other(error),
    }
}

/// Whether the answer to `method` hands the connection over to another
/// protocol: a 101, or a 2xx to CONNECT (RFC 9110 §9.3.6), after which the
/// connection is an opaque tunnel both ways.
pub fn switches_protocols(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

impl Endpoint {
    /// An endpoint reached at `target` through `connector`, with no connections yet.
    pub fn new(target: Address, connector: Connector) -> Self {
        Endpoint {
            addr: target.addr,
            target,
            connector,
            h2: tokio::sync::Mutex::new(Vec::new()),
            h1_idle: Arc::new(Mutex::new(Vec::new())),
            failed_until: Mutex::new(None),
        }
    }

    /// Whether a recent connect failure keeps this endpoint out.
    pub fn in_backoff(&self) -> bool {
        self.failed_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Puts the endpoint in back-off: the balancer skips it for the next 500 ms.
    pub fn mark_failed(&self) {
        *self.failed_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + FAILURE_BACKOFF);
    }

    /// A connection ready for a request of this HTTP version: an HTTP/2
    /// connection with room for a stream, or an idle (else new) HTTP/1 one;
    /// with `fresh`, never an idle one. A failed connect puts the endpoint
    /// in back-off.
    pub async fn connection(&self, version: Version, fresh: bool) -> Result<Connection, ConnectError> {
        let connection = if version == Version::HTTP_2 {
            self.h2_stream()
                .await
                .map(|(sender, slot)| Connection::H2(sender, slot))
        } else {
            self.h1_sender(fresh).await.map(|(sender, reused)| Connection::H1 {
                sender,
                reused,
                idle: self.h1_idle.clone(),
                keep: if self.is_meshed() { H1_IDLE_MESHED } else { H1_IDLE },
            })
        };
        if connection.is_err() {
            self.mark_failed();
        }
        connection
    }

    async fn connect_io(&self) -> Result<Io, ConnectError> {
        upstream::connect(
            &self.target,
            self.connector.mesh.as_ref(),
            self.connector.connect_timeout,
        )
        .await
    }

    /// Whether requests to this endpoint travel over mutual TLS.
    pub fn is_meshed(&self) -> bool {
        self.target.peer.is_some() && self.connector.mesh.is_some()
    }

    /// `route` with this endpoint's server identity and TLS labels.
    pub fn labelled(&self, mut route: RouteLabels) -> RouteLabels {
        route.tls = self.is_meshed();
        route.server_id = match (&self.target.peer, route.tls) {
            (Some(peer), true) => peer.to_string(),
            _ => String::new(),
        };
        route
    }

    fn header_read_limit(&self) -> usize {
        crate::wire::header_read_limit(self.connector.max_header_bytes)
    }
}

/// An established connection to an endpoint, for one request.
pub enum Connection {
    /// A stream's room on a shared connection, counted until the response
    /// ends.
    H2(http2::SendRequest<Body>, StreamSlot),
    /// An HTTP/1 connection, for this request alone until its response is done.
    H1 {
        /// Sends the request on the connection.
        sender: http1::SendRequest<Body>,
        /// Whether it served a request before and waited idle since.
        reused: bool,
        /// Where the connection goes back once its response is done.
        idle: IdlePool,
        /// How long it may wait idle there unless the server says shorter.
        keep: Duration,
    },
}

impl Connection {
    /// Whether this is an HTTP/1 connection that sat idle in the pool.
    pub fn is_reused_h1(&self) -> bool {
        matches!(self, Connection::H1 { reused: true, .. })
    }

    /// Sends the request. If the connection turned out to be closed before
    /// anything was written, the request comes back as `NotSent`. The
    /// stream's slot, for HTTP/2, is to be held until the response ends.
    ///
    /// The future holds the request once (see [`crate::balance::Backend::send`]).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its request twice (rust-lang/rust#62958)"
    )]
    pub fn send(
        self,
        request: Request<Body>,
        addr: SocketAddr,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<StreamSlot>), SendError>> {
        async move {
            let method = request.method().clone();
            let (result, slot, reused) = match self {
                Connection::H2(mut sender, slot) => (sender.try_send_request(request).await, Some(slot), false),
                Connection::H1 {
                    mut sender,
                    reused,
                    idle,
                    keep,
                } => {
                    let result = sender.try_send_request(request).await;
                    if let Ok(response) = &result
                        && !switches_protocols(&method, response.status())
                    {
                        let keep = keep_alive_timeout(response.headers()).map_or(keep, |server| server.min(keep));
                        reuse_when_ready(sender, idle, keep);
                    }
                    (result, None, reused)
                }
            };
            match result {
                Ok(response) => Ok((response, slot)),
                Err(mut error) => Err(match error.take_message() {
                    Some(unsent) => SendError::NotSent {
                        request: Box::new(unsent),
                        error: connect_failed(error.into_error(), addr),
                    },
                    None if reused && closed_without_answer(error.error()) => SendError::IdleClosed(error.into_error()),
                    None => SendError::Failed(error.into_error()),
                }),
            }
        }
    }
}

/// Whether the server ended the connection before any byte of a response:
/// an end of stream where a response should start, or a reset.
fn closed_without_answer(error: &hyper::Error) -> bool {
    let reset = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        });
    error.is_incomplete_message() || reset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_successes_and_101_switch_protocols() {
        assert!(switches_protocols(&Method::CONNECT, StatusCode::OK));
        assert!(switches_protocols(&Method::GET, StatusCode::SWITCHING_PROTOCOLS));
        assert!(!switches_protocols(&Method::CONNECT, StatusCode::FORBIDDEN));
        assert!(!switches_protocols(&Method::GET, StatusCode::OK));
    }
}
