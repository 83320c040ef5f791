//! HTTP/1 and HTTP/2 proxying, the server side: per-request routing,
//! protocol-shaped errors, and response observation for metrics and load.
//! Requests go on through `balance` to an `endpoint`.

pub mod body;
pub mod errors;
pub mod headers;
pub mod route;
pub mod server;
pub mod upgrade;

pub use crate::wire::Body;

/// Whether a request is a gRPC call (errors then speak gRPC).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
