//! Serving one client connection as HTTP/1 or HTTP/2, every request through
//! the router. On drain, HTTP/2 clients get a GOAWAY and HTTP/1 connections
//! close after their current request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::route::Router;
use crate::detect::Protocol;
use crate::drain::Drain;

/// Streams one client may have open at once on an HTTP/2 connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

pub async fn serve<I>(io: I, protocol: Protocol, router: Arc<Router>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.handle(request).await) }
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .keep_alive_interval(Duration::from_secs(20))
                .serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                _ = drain.started() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
        _ => {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(io, service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                _ = drain.started() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
}
