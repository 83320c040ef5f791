//! Serving one client connection as HTTP/1 or HTTP/2, every request through
//! the router. On drain, HTTP/2 clients get a GOAWAY and HTTP/1 connections
//! close after their current request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use strait_contract::Chain;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::route::Router;
use crate::config::Limits;
use crate::detect::Protocol;
use crate::drain::Drain;
use crate::executor::Executor;
use crate::throttle::LogThrottle;

static CONNECTION_ERRORS: LogThrottle = LogThrottle::new(5);

/// A future serving `connection` (an HTTP/1 or HTTP/2 connection of the
/// HTTP library, which share no trait for it) to its end, shut down
/// gracefully once `drain` starts: HTTP/2 clients get a GOAWAY, HTTP/1
/// connections close after their current request.
///
/// `connection` is an expression the future evaluates and pins in place, so
/// the connection (over 1 KiB) is held once: a connection made outside and
/// moved in would keep its place in the future as well as its pinned copy
/// (rust-lang/rust#62958), for as long as the client stays connected.
macro_rules! until_drained {
    ($connection:expr, $drain:expr) => {
        async {
            let mut connection = std::pin::pin!($connection);
            tokio::select! {
                result = connection.as_mut() => result,
                _ = $drain.started() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
}

/// Serves one client connection within `limits`. Header lists up to twice
/// the limit are read (see `header_read_limit`), so the router can answer a
/// request over it in the request's own protocol (431, or
/// RESOURCE_EXHAUSTED for gRPC); beyond that the HTTP library answers 431
/// itself without buffering more.
pub async fn serve<I>(io: I, protocol: Protocol, router: Arc<Router>, limits: &Limits, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = drain.requests();
    let service = service_fn(move |request| {
        requests.received();
        let router = router.clone();
        // Boxed once here: the HTTP library moves a request's future
        // several times on its way to the executor, and this one is
        // kilobytes (the router's retries, routes and upstream call), so
        // each move was a copy of all of it (bench/: "profile").
        Box::pin(async move { Ok::<_, Infallible>(router.handle(request).await) })
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            // The streams' service calls run inside this connection's task.
            let (executor, driver) = Executor::for_connection();
            // Built inside the future: the connection is held once (see
            // `until_drained`), and the builder goes once it is made.
            let connection = until_drained!(
                {
                    let mut builder = http2::Builder::new(executor);
                    builder
                        .timer(TokioTimer::new())
                        .initial_stream_window_size(crate::wire::STREAM_WINDOW)
                        .initial_connection_window_size(crate::wire::connection_window(limits.max_concurrent_streams))
                        .max_concurrent_streams(limits.max_concurrent_streams)
                        .max_header_list_size(
                            u32::try_from(crate::wire::header_read_limit(limits.max_header_bytes)).unwrap_or(u32::MAX),
                        )
                        .keep_alive_interval(Duration::from_secs(20))
                        // A sidecar adds no header the application did not send.
                        .auto_date_header(false);
                    builder.serve_connection(io, service)
                },
                drain
            );
            Executor::drive(connection, driver).await
        }
        _ => {
            let connection = until_drained!(
                {
                    let mut builder = http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        // What one side sends is what the other receives: header
                        // names keep their case, no Date is added, any number of
                        // fields within the byte limit, and a client that
                        // half-closes after its request still gets its answer.
                        .preserve_header_case(true)
                        .auto_date_header(false)
                        .max_headers(crate::wire::max_header_fields(limits.max_header_bytes))
                        .half_close(true)
                        .header_read_timeout(limits.header_timeout)
                        .max_buf_size(crate::wire::header_read_limit(limits.max_header_bytes));
                    builder.serve_connection(io, service).with_upgrades()
                },
                drain
            );
            connection.await
        }
    };
    if let Err(error) = result
        && let Some(suppressed) = CONNECTION_ERRORS.allow()
    {
        tracing::info!(error = %Chain(&error), suppressed, "client connection ended with an error");
    }
}
