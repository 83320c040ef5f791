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
use crate::transport::{self, ConnectError};

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
}

pub struct Endpoint {
    pub addr: SocketAddr,
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
    pub fn new(addr: SocketAddr, connector: Connector) -> Self {
        Endpoint {
            addr,
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

    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let result = if request.version() == Version::HTTP_2 {
            self.send_h2(request).await
        } else {
            self.send_h1(request).await
        };
        if matches!(result, Err(SendError::NotSent { .. })) {
            self.mark_failed();
        }
        result
    }

    async fn connect_io(&self) -> Result<TokioIo<tokio::net::TcpStream>, ConnectError> {
        let stream = transport::connect(self.addr, self.connector.connect_timeout).await?;
        Ok(TokioIo::new(stream))
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<Body>, ConnectError> {
        let mut shared = self.h2.lock().await;
        if let Some(sender) = shared.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.connect_io().await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
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

    async fn send_h2(&self, request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let mut request = request;
        // A cached connection may turn out to be closed; then one fresh try.
        for attempt in 0..2 {
            let mut sender = match self.h2_sender().await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(SendError::NotSent {
                        request: Box::new(request),
                        error,
                    });
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if attempt == 0 => {
                        self.h2.lock().await.take();
                        request = unsent;
                    }
                    Some(unsent) => {
                        let error = connect_failed(error.into_error(), self.addr);
                        return Err(SendError::NotSent {
                            request: Box::new(unsent),
                            error,
                        });
                    }
                    None => return Err(SendError::Failed(error.into_error())),
                },
            }
        }
        unreachable!("the loop returns on its second attempt")
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

    async fn send_h1(&self, request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let mut request = request;
        for attempt in 0..2 {
            let mut sender = match self.h1_sender().await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(SendError::NotSent {
                        request: Box::new(request),
                        error,
                    });
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        self.reuse_when_ready(sender);
                    }
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if attempt == 0 => request = unsent,
                    Some(unsent) => {
                        let error = connect_failed(error.into_error(), self.addr);
                        return Err(SendError::NotSent {
                            request: Box::new(unsent),
                            error,
                        });
                    }
                    None => return Err(SendError::Failed(error.into_error())),
                },
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Returns an HTTP/1 connection to the pool once its response is done.
    fn reuse_when_ready(&self, mut sender: http1::SendRequest<Body>) {
        let idle = self.h1_idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_HTTP1 {
                    idle.push(sender);
                }
            }
        });
    }
}
