//! Connections to one upstream endpoint: a few multiplexed HTTP/2
//! connections, and a pool of HTTP/1 connections reused across requests.
//!
//! HTTP/2: requests share a connection until it carries as many streams as
//! the server allows (its SETTINGS_MAX_CONCURRENT_STREAMS) or as the proxy
//! gives one connection (`ISOLATED_STREAMS`); then another one is
//! opened, as gRPC clients do, so callers never queue behind each other for
//! a stream. Keep-alive PINGs go only to peer proxies: applications' HTTP/2
//! servers (grpcio, grpc-go) count PINGs on a quiet connection as abuse and
//! close it, so towards them TCP keepalives watch the connection instead.
//!
//! HTTP/1: an idle connection is kept no longer than the server's own
//! keep-alive (`Keep-Alive: timeout`, else [`H1_IDLE`] for applications and
//! 10 s for peer proxies). A request that
//! died on a reused idle connection before any byte of an answer came back
//! is the server having closed that connection as the request arrived; the
//! caller may send it again on a fresh one (see [`SendError::IdleClosed`]).
//!
//! A request that could not be sent (the connection failed, or was found
//! closed before anything was written) comes back to the caller intact, so
//! it can be tried on another endpoint.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Body;
use crate::metrics::RouteLabels;
use crate::tls::MeshTls;
use crate::transport::ConnectError;
use crate::upstream::{self, Io, Target};

/// Idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 32;
/// How long an idle HTTP/1 connection to an application is kept when it
/// did not say (`Keep-Alive: timeout`). Servers close idle connections after
/// a few seconds (Node.js 5 s, gunicorn 2 s, Apache 5 s); a connection the
/// server already closed costs a retry, one the proxy closed costs a
/// handshake.
pub const H1_IDLE: Duration = Duration::from_secs(2);
/// How long an idle HTTP/1 connection to a peer proxy is kept: each new one
/// costs a mutual TLS handshake, and the peer closes a connection only once
/// no request has started on it for its header timeout (30 s by default).
const H1_IDLE_MESHED: Duration = Duration::from_secs(10);
/// Streams the proxy opens on one HTTP/2 connection to an endpoint at most.
const STREAMS_PER_CONNECTION: usize = super::ISOLATED_STREAMS as usize;
/// HTTP/2 connections to one endpoint at most; beyond, requests queue on
/// the least busy one.
const MAX_H2_CONNECTIONS: usize = 16;
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
    /// The request went out on a reused idle HTTP/1 connection, which the
    /// server closed before answering anything: it closed the idle
    /// connection as the request arrived. An idempotent request may be sent
    /// again on a fresh connection (RFC 9110 §9.2.2).
    #[error("the server closed a reused idle connection without answering: {0}")]
    IdleClosed(hyper::Error),
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
    /// The largest header list (bytes, as HTTP/2 counts them) a response
    /// may have; responses are read up to twice that, so the proxy can say
    /// which limit one broke (see `header_read_limit`).
    pub max_header_bytes: usize,
}

/// One HTTP/2 connection and how many streams it carries.
struct H2Connection {
    sender: http2::SendRequest<Body>,
    /// Streams open on it now.
    open: Arc<AtomicUsize>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS, as last seen.
    allowed: Arc<AtomicUsize>,
}

impl H2Connection {
    fn has_room(&self) -> bool {
        let limit = self.allowed.load(Ordering::Relaxed).min(STREAMS_PER_CONNECTION);
        self.open.load(Ordering::Relaxed) < limit
    }

    fn take_stream(&self) -> (http2::SendRequest<Body>, StreamSlot) {
        self.open.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), StreamSlot(self.open.clone()))
    }
}

/// A connection that says when the server first sent something.
struct Heard<T> {
    inner: T,
    heard: tokio::sync::watch::Sender<bool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.send_if_modified(|heard| !std::mem::replace(heard, true));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One stream counted on its HTTP/2 connection until dropped, which is when
/// its response has ended.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An idle HTTP/1 connection and until when it may be reused.
pub struct IdleH1 {
    sender: http1::SendRequest<Body>,
    until: Instant,
}

type IdlePool = Arc<Mutex<Vec<IdleH1>>>;

pub struct Endpoint {
    /// The application's address.
    pub addr: SocketAddr,
    /// How to reach it: the address and, when meshed, the identity there.
    pub target: Target,
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

/// Whether a method is idempotent (RFC 9110 §9.2.2): sending it twice has
/// the effect of sending it once, so a request that may have reached a
/// server that closed without answering can be sent again.
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Whether the answer to `method` hands the connection over to another
/// protocol: a 101, or a 2xx to CONNECT (RFC 9110 §9.3.6), after which the
/// connection is an opaque tunnel both ways.
pub fn switches_protocols(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

/// How long the server keeps an idle connection by its `Keep-Alive:
/// timeout=N` header (RFC 2068 §19.7.1.1), if it says.
fn keep_alive_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("keep-alive")?.to_str().ok()?;
    value.split(',').find_map(|parameter| {
        let (name, seconds) = parameter.split_once('=')?;
        let seconds: u64 = seconds.trim().parse().ok()?;
        name.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| Duration::from_secs(seconds))
    })
}

impl Endpoint {
    pub fn new(target: Target, connector: Connector) -> Self {
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

    /// Forgets the HTTP/2 connections found closed.
    pub async fn forget_closed_h2(&self) {
        self.h2.lock().await.retain(|c| !c.sender.is_closed());
    }

    /// HTTP/2 connections open to this endpoint and the streams on each,
    /// for the admin view.
    pub fn h2_streams(&self) -> Vec<usize> {
        self.h2
            .try_lock()
            .map(|conns| conns.iter().map(|c| c.open.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
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
        super::header_read_limit(self.connector.max_header_bytes)
    }

    /// A stream on a connection with room for it, opening a connection
    /// when every one is full.
    async fn h2_stream(&self) -> Result<(http2::SendRequest<Body>, StreamSlot), ConnectError> {
        let mut conns = self.h2.lock().await;
        conns.retain(|c| !c.sender.is_closed());
        if let Some(conn) = conns.iter().find(|c| c.has_room()) {
            return Ok(conn.take_stream());
        }
        if conns.len() >= MAX_H2_CONNECTIONS
            && let Some(least) = conns.iter().min_by_key(|c| c.open.load(Ordering::Relaxed))
        {
            return Ok(least.take_stream());
        }
        let conn = self.h2_connect().await?;
        let stream = conn.take_stream();
        conns.push(conn);
        Ok(stream)
    }

    /// Opens an HTTP/2 connection and waits (within the connect timeout)
    /// until the server's SETTINGS, the first thing a server sends, have
    /// been read, as gRPC clients wait for the server preface: until then
    /// its limit on concurrent streams is unknown, and requests beyond it
    /// would queue on this connection instead of opening another.
    async fn h2_connect(&self) -> Result<H2Connection, ConnectError> {
        let io = self.connect_io().await?;
        let (heard, mut hearing) = tokio::sync::watch::channel(false);
        let io = Heard { inner: io, heard };
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::connection_window(super::ISOLATED_STREAMS))
            .max_header_list_size(u32::try_from(self.header_read_limit()).unwrap_or(u32::MAX));
        if self.is_meshed() {
            builder
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10));
        }
        let (sender, connection) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| connect_failed(e, self.addr))?;
        // The HTTP library reads the connection in a task of its own; once
        // it has read the server's first bytes (SETTINGS) and had a turn to
        // apply them, the stream limit is known. A connection that ends or
        // stays silent fails its first request, which says why.
        let heard = tokio::time::timeout(self.connector.connect_timeout, hearing.wait_for(|heard| *heard))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if heard {
            tokio::task::yield_now().await;
        }
        let allowed = Arc::new(AtomicUsize::new(connection.current_max_send_streams()));
        let seen = allowed.clone();
        let addr = self.addr;
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // Polls the connection, following the server's stream limit as
            // later SETTINGS change it.
            let ended = poll_fn(|cx| {
                let polled = connection.as_mut().poll(cx);
                seen.store(connection.current_max_send_streams(), Ordering::Relaxed);
                polled
            })
            .await;
            if let Err(error) = ended {
                tracing::debug!(endpoint = %addr, %error, "HTTP/2 connection ended");
            }
        });
        Ok(H2Connection {
            sender,
            open: Arc::new(AtomicUsize::new(0)),
            allowed,
        })
    }

    /// The most recently idle HTTP/1 connection still open and within its
    /// keep-alive; the others found on the way are dropped.
    fn idle_h1(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(connection) = idle.pop() {
            if connection.sender.is_ready() && now < connection.until {
                return Some(connection.sender);
            }
        }
        None
    }

    /// An idle HTTP/1 connection still within its keep-alive (unless
    /// `fresh`), else a new one; and whether it was reused.
    async fn h1_sender(&self, fresh: bool) -> Result<(http1::SendRequest<Body>, bool), ConnectError> {
        if !fresh && let Some(sender) = self.idle_h1() {
            return Ok((sender, true));
        }
        let io = TokioIo::new(self.connect_io().await?);
        let fields = super::max_header_fields(self.connector.max_header_bytes);
        let (sender, connection) = http1::Builder::new()
            .preserve_header_case(true)
            .max_headers(fields)
            .max_buf_size(self.header_read_limit())
            .handshake(io)
            .await
            .map_err(|e| connect_failed(e, self.addr))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(endpoint = %addr, %error, "HTTP/1 connection ended");
            }
        });
        Ok((sender, false))
    }
}

/// An established connection to an endpoint, for one request.
pub enum Connection {
    /// A stream's room on a shared connection, counted until the response
    /// ends.
    H2(http2::SendRequest<Body>, StreamSlot),
    H1 {
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
    pub async fn send(
        self,
        request: Request<Body>,
        addr: SocketAddr,
    ) -> Result<(Response<Incoming>, Option<StreamSlot>), SendError> {
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

/// Returns an HTTP/1 connection to the pool once its response is done, to
/// be reused for at most `keep`.
fn reuse_when_ready(mut sender: http1::SendRequest<Body>, idle: IdlePool, keep: Duration) {
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            idle.retain(|c| now < c.until);
            if idle.len() < MAX_IDLE_HTTP1 {
                idle.push(IdleH1 {
                    sender,
                    until: now + keep,
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_keep_alive_timeout_is_read() {
        let mut headers = http::HeaderMap::new();
        headers.insert("keep-alive", "timeout=5, max=1000".parse().unwrap());
        assert_eq!(keep_alive_timeout(&headers), Some(Duration::from_secs(5)));
        headers.insert("keep-alive", "max=3".parse().unwrap());
        assert_eq!(keep_alive_timeout(&headers), None);
    }

    #[test]
    fn connect_successes_and_101_switch_protocols() {
        assert!(switches_protocols(&Method::CONNECT, StatusCode::OK));
        assert!(switches_protocols(&Method::GET, StatusCode::SWITCHING_PROTOCOLS));
        assert!(!switches_protocols(&Method::CONNECT, StatusCode::FORBIDDEN));
        assert!(!switches_protocols(&Method::GET, StatusCode::OK));
        assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
    }
}
