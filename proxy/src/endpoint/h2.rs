//! HTTP/2 connections to one endpoint: requests share a connection until
//! it carries as many streams as the server allows (its
//! SETTINGS_MAX_CONCURRENT_STREAMS) or as the proxy gives one connection
//! (`ISOLATED_STREAMS`); then another one is opened, as gRPC clients do, so
//! callers never queue behind each other for a stream. Keep-alive PINGs go
//! only to peer proxies: applications' HTTP/2 servers (grpcio, grpc-go)
//! count PINGs on a quiet connection as abuse and close it, so towards them
//! TCP keepalives watch the connection instead.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use strait_contract::Chain;

use futures::task::AtomicWaker;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::io::InspectReader;

use super::{Endpoint, connect_failed};
use crate::executor::Executor;
use crate::transport::ConnectError;
use crate::wire::Body;

/// Streams the proxy opens on one HTTP/2 connection to an endpoint at most.
const STREAMS_PER_CONNECTION: usize = crate::wire::ISOLATED_STREAMS as usize;
/// Reads of a new connection that have it polled again, so it applies the
/// server's SETTINGS however the first bytes were split.
const SETTINGS_READS: u32 = 8;
/// HTTP/2 connections to one endpoint at most; beyond, requests queue on
/// the least busy one.
const MAX_H2_CONNECTIONS: usize = 16;

/// One HTTP/2 connection and how many streams it carries.
pub(super) struct H2Connection {
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

/// One stream counted on its HTTP/2 connection until dropped, which is when
/// its response has ended.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
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

    /// A stream on a connection with room for it, opening a connection
    /// when every one is full.
    pub(super) async fn h2_stream(&self) -> Result<(http2::SendRequest<Body>, StreamSlot), ConnectError> {
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
        // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) is a large
        // future that most calls never reach, and every future awaiting
        // this one would otherwise carry it and copy it on each call.
        let conn = Box::pin(self.h2_connect()).await?;
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
        // The connection's I/O, its requests' body pipes and response waits
        // all run inside the one task spawned below.
        let (executor, driver) = Executor::for_connection();
        let (heard, mut hearing) = tokio::sync::watch::channel(false);
        // Says when the server first sent something, and has the connection
        // polled on each of its first reads, so it records the stream limit
        // the SETTINGS carried even when they arrive in pieces.
        let settings_read = Arc::new(AtomicWaker::new());
        let wake_on_read = settings_read.clone();
        let mut reads = 0;
        let io = InspectReader::new(io, move |read: &[u8]| {
            if reads < SETTINGS_READS && !read.is_empty() {
                reads += 1;
                heard.send_if_modified(|heard| !std::mem::replace(heard, true));
                wake_on_read.wake();
            }
        });
        let mut builder = http2::Builder::new(executor);
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(crate::wire::STREAM_WINDOW)
            .initial_connection_window_size(crate::wire::connection_window(crate::wire::ISOLATED_STREAMS))
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
        let allowed = Arc::new(AtomicUsize::new(connection.current_max_send_streams()));
        let seen = allowed.clone();
        let addr = self.addr;
        // Polls the connection, following the server's stream limit as
        // later SETTINGS change it. The connection moves into the closure:
        // the driver drops it as soon as it has ended, which is what tells
        // the HTTP library's I/O future (run by the same driver) to close.
        let mut connection = Box::pin(connection);
        let polled = poll_fn(move |cx| {
            settings_read.register(cx.waker());
            let polled = connection.as_mut().poll(cx);
            seen.store(connection.current_max_send_streams(), Ordering::Relaxed);
            if polled.is_ready() {
                // Reads for streams that outlive it wake nothing.
                settings_read.take();
            }
            polled
        });
        tokio::spawn(async move {
            if let Err(error) = Executor::drive(polled, driver).await {
                tracing::debug!(endpoint = %addr, error = %Chain(&error), "HTTP/2 connection ended");
            }
        });
        // Once the connection has read the server's first bytes (SETTINGS)
        // and had a turn to apply them, the stream limit is known. A
        // connection that ends or stays silent fails its first request,
        // which says why.
        let heard = tokio::time::timeout(self.connector.connect_timeout, hearing.wait_for(|heard| *heard))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if heard {
            tokio::task::yield_now().await;
        }
        Ok(H2Connection {
            sender,
            open: Arc::new(AtomicUsize::new(0)),
            allowed,
        })
    }
}
