//! Connections to one upstream endpoint: a single multiplexed HTTP/2
//! connection, and a pool of HTTP/1 connections reused across requests.
//!
//! A request that could not be sent (the connection failed, or was found
//! closed before anything was written) comes back to the caller intact, so
//! it can be tried on another endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::Body;
use crate::metrics::RouteLabels;
use crate::tls::MeshTls;
use crate::transport::ConnectError;
use crate::upstream::{self, Io, Target};

/// Idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 32;
/// How long an endpoint that refused a connection is left out.
const FAILURE_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing was sent; the request is returned for another endpoint.
    #[error("could not connect: {error}")]
    NotSent {
        request: Box<Request<Body>>,
        error: ConnectError,
    },
    /// The request was, or may have been, sent.
    #[error("{0}")]
    Failed(hyper::Error),
}

/// How the proxy opens connections to upstreams.
#[derive(Clone, Debug)]
pub struct Connector {
    pub connect_timeout: Duration,
    /// This proxy's mutual TLS, when it has an identity.
    pub mesh: Option<Arc<MeshTls>>,
}

pub struct Endpoint {
    /// The application's address.
    pub addr: SocketAddr,
    /// How to reach it: the address and, when meshed, the identity there.
    pub target: Target,
    connector: Connector,
    /// The shared HTTP/2 connection; the lock is held while connecting so
    /// concurrent requests wait for one connection instead of making many.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    h1_idle: Arc<Mutex<Vec<http1::SendRequest<Body>>>>,
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

impl Endpoint {
    pub fn new(target: Target, connector: Connector) -> Self {
        Endpoint {
            addr: target.addr,
            target,
            connector,
            h2: tokio::sync::Mutex::new(None),
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

    pub fn mark_failed(&self) {
        *self.failed_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + FAILURE_BACKOFF);
    }

    /// A connection ready for a request of this HTTP version: the shared
    /// HTTP/2 connection, or an idle (else new) HTTP/1 one. A failed connect
    /// puts the endpoint in back-off.
    pub async fn connection(&self, version: Version) -> Result<Connection, ConnectError> {
        let connection = if version == Version::HTTP_2 {
            self.h2_sender().await.map(Connection::H2)
        } else {
            self.h1_sender().await.map(|sender| Connection::H1 {
                sender,
                idle: self.h1_idle.clone(),
            })
        };
        if connection.is_err() {
            self.mark_failed();
        }
        connection
    }

    /// Forgets a shared HTTP/2 connection found closed.
    pub async fn forget_h2(&self) {
        self.h2.lock().await.take();
    }

    async fn connect_io(&self) -> Result<TokioIo<Io>, ConnectError> {
        let io = upstream::connect(
            &self.target,
            self.connector.mesh.as_ref(),
            self.connector.connect_timeout,
        )
        .await?;
        Ok(TokioIo::new(io))
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

    async fn h2_sender(&self) -> Result<http2::SendRequest<Body>, ConnectError> {
        let mut shared = self.h2.lock().await;
        if let Some(sender) = shared.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.connect_io().await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|e| connect_failed(e, self.addr))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(endpoint = %addr, %error, "HTTP/2 connection ended");
            }
        });
        *shared = Some(sender.clone());
        Ok(sender)
    }

    async fn h1_sender(&self) -> Result<http1::SendRequest<Body>, ConnectError> {
        loop {
            let idle = self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            match idle {
                Some(sender) if sender.is_ready() => return Ok(sender),
                Some(_) => continue,
                None => break,
            }
        }
        let io = self.connect_io().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| connect_failed(e, self.addr))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(endpoint = %addr, %error, "HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }
}

/// An established connection to an endpoint, for one request.
pub enum Connection {
    H2(http2::SendRequest<Body>),
    H1 {
        sender: http1::SendRequest<Body>,
        /// Where the connection goes back once its response is done.
        idle: Arc<Mutex<Vec<http1::SendRequest<Body>>>>,
    },
}

impl Connection {
    /// Sends the request. If the connection turned out to be closed before
    /// anything was written, the request comes back as `NotSent`.
    pub async fn send(self, request: Request<Body>, addr: SocketAddr) -> Result<Response<Incoming>, SendError> {
        let result = match self {
            Connection::H2(mut sender) => sender.try_send_request(request).await,
            Connection::H1 { mut sender, idle } => {
                let result = sender.try_send_request(request).await;
                if result
                    .as_ref()
                    .is_ok_and(|r| r.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                {
                    reuse_when_ready(sender, idle);
                }
                result
            }
        };
        result.map_err(|mut error| match error.take_message() {
            Some(unsent) => SendError::NotSent {
                request: Box::new(unsent),
                error: connect_failed(error.into_error(), addr),
            },
            None => SendError::Failed(error.into_error()),
        })
    }
}

/// Returns an HTTP/1 connection to the pool once its response is done.
fn reuse_when_ready(mut sender: http1::SendRequest<Body>, idle: Arc<Mutex<Vec<http1::SendRequest<Body>>>>) {
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE_HTTP1 {
                idle.push(sender);
            }
        }
    });
}
