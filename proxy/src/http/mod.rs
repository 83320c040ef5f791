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

/// The body type inside the proxy, for requests and responses alike.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Whether a request is a gRPC call (errors then speak gRPC).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
