//! HTTP/1 connections to one endpoint: a pool of idle connections, each
//! kept no longer than the server's own keep-alive (`Keep-Alive: timeout`,
//! else [`H1_IDLE`] for applications and 10 s for peer proxies).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use strait_contract::Chain;

use futures::FutureExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::{Endpoint, connect_failed};
use crate::transport::ConnectError;
use crate::wire::Body;

/// Idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 32;
/// How long an idle HTTP/1 connection to an application is kept when it
/// did not say (`Keep-Alive: timeout`). Servers close idle connections after
/// a few seconds (Node.js 5 s, gunicorn 2 s, Apache 5 s); a connection the
/// server already closed costs a retry, one the proxy closed costs a
/// handshake.
pub(super) const H1_IDLE: Duration = Duration::from_secs(2);
/// How long an idle HTTP/1 connection to a peer proxy is kept: each new one
/// costs a mutual TLS handshake, and the peer closes a connection only once
/// no request has started on it for its header timeout (30 s by default).
pub(super) const H1_IDLE_MESHED: Duration = Duration::from_secs(10);
/// An idle HTTP/1 connection and until when it may be reused.
pub struct IdleH1 {
    sender: http1::SendRequest<Body>,
    until: Instant,
}

pub type IdlePool = Arc<Mutex<Vec<IdleH1>>>;

/// How long the server keeps an idle connection by its `Keep-Alive:
/// timeout=N` header (RFC 2068 §19.7.1.1), if it says.
pub(super) fn keep_alive_timeout(headers: &http::HeaderMap) -> Option<Duration> {
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
    pub(super) async fn h1_sender(&self, fresh: bool) -> Result<(http1::SendRequest<Body>, bool), ConnectError> {
        if !fresh && let Some(sender) = self.idle_h1() {
            return Ok((sender, true));
        }
        // Boxed, as the HTTP/2 connect: a large future only some calls reach.
        Ok((Box::pin(self.h1_connect()).await?, false))
    }

    /// A new HTTP/1 connection, its I/O driven by a task of its own.
    async fn h1_connect(&self) -> Result<http1::SendRequest<Body>, ConnectError> {
        let io = TokioIo::new(self.connect_io().await?);
        let fields = crate::wire::max_header_fields(self.connector.max_header_bytes);
        let (sender, connection) = http1::Builder::new()
            .preserve_header_case(true)
            .max_headers(fields)
            .max_buf_size(self.header_read_limit())
            .handshake(io)
            .await
            .map_err(|e| connect_failed(e, self.addr))?;
        let addr = self.addr;
        tokio::spawn(connection.with_upgrades().map(move |ended| {
            if let Err(error) = ended {
                tracing::debug!(endpoint = %addr, error = %Chain(&error), "HTTP/1 connection ended");
            }
        }));
        Ok(sender)
    }
}
/// Returns an HTTP/1 connection to the pool once its response is done, to
/// be reused for at most `keep`.
pub(super) fn reuse_when_ready(mut sender: http1::SendRequest<Body>, idle: IdlePool, keep: Duration) {
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
}
