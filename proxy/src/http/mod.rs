//! HTTP/1 and HTTP/2 proxying: per-request routing, upstream connections,
//! protocol-shaped errors, and response observation for metrics and load.

pub mod body;
pub mod client;
pub mod errors;
pub mod headers;
pub mod replay;
pub mod route;
pub mod server;
pub mod upgrade;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// HTTP/2 flow-control windows, on both sides of the proxy: what a peer may
/// send on one stream, and on one connection, before the proxy reads it.
/// The connection window bounds what a connection can make the proxy hold.
///
/// They are fixed rather than adaptive because the HTTP/2 library also bounds
/// the framing overhead of small DATA frames waiting to be read, at half the
/// connection window, and closes the connection with ENHANCE_YOUR_CALM
/// beyond it, failing every call on it. Adaptive windows start at 64 KiB,
/// which allows only about 200 waiting gRPC messages: a burst of calls
/// reaches that. 2 MiB allows thousands, more than the streams a connection
/// may have open.
pub const STREAM_WINDOW: u32 = 256 * 1024;
pub const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// The body type inside the proxy, for requests and responses alike.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Whether a request is a gRPC call (errors then speak gRPC).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
