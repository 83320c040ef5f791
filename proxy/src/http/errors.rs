//! Errors shaped for the protocol: where a request failed decides the
//! answer (503 when no application took it, 502 when the upstream failed
//! it, 504 on timeout), and gRPC callers get a gRPC status instead.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use strait_contract::Chain;

use super::Body;
use crate::balance::DispatchError;
use crate::routes::RouteError;
use crate::wire::{GRPC_MESSAGE, GRPC_STATUS};

/// The header that says an answer came from the proxy, not the application.
pub const PROXY_ERROR_HEADER: HeaderName = HeaderName::from_static("strait-proxy-error");

/// Why the proxy answers a request itself instead of passing on the
/// application's response; [`respond`] turns it into that answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No endpoint took the request, or the one that did failed it.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The Service port's routes did not send the request anywhere, or
    /// their timeout passed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The request was not valid HTTP for this hop.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request's header list is over the proxy's limit.
    #[error("request headers of {size} bytes are over the proxy's limit of {limit} (STRAIT_MAX_HEADER_BYTES)")]
    HeadersTooLarge {
        /// The request's header list size, in bytes as HTTP/2 counts it
        /// (RFC 9113 §6.5.2).
        size: usize,
        /// The limit, in bytes (`STRAIT_MAX_HEADER_BYTES`).
        limit: usize,
    },
    /// The response's header list is over the proxy's limit.
    #[error("response headers of {size} bytes are over the proxy's limit of {limit} (STRAIT_MAX_HEADER_BYTES)")]
    ResponseHeadersTooLarge {
        /// The response's header list size, in bytes as HTTP/2 counts it
        /// (RFC 9113 §6.5.2).
        size: usize,
        /// The limit, in bytes (`STRAIT_MAX_HEADER_BYTES`).
        limit: usize,
    },
}

impl ProxyError {
    /// The HTTP status of the proxy's answer: 503 when the request reached no
    /// application (no ready endpoint, none reachable, or the endpoint's
    /// HTTP/2 server turned the stream away), 504 when the upstream or the route's
    /// timeout passed, 502 when it failed the request or its response headers
    /// were over the limit, 400 for an invalid request, 431 for request
    /// headers over the limit; for routes (Gateway API): 404 when none
    /// matches, 500 when the rule's backend is unusable.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Dispatch(error) if error.is_unprocessed() => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Dispatch(DispatchError::Upstream { source, .. }) if source.is_timeout() => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Dispatch(_) | ProxyError::ResponseHeadersTooLarge { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Route(RouteError::NoMatch { .. }) => StatusCode::NOT_FOUND,
            ProxyError::Route(RouteError::NoBackend { .. } | RouteError::Unresolved { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::Route(RouteError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Whether the request reached no application (see
    /// [`crate::balance::DispatchError::is_unprocessed`]).
    pub fn is_unprocessed(&self) -> bool {
        matches!(self, ProxyError::Dispatch(error) if error.is_unprocessed())
    }

    /// The gRPC status code: UNAVAILABLE for what a retry may fix,
    /// INTERNAL for a request the proxy cannot forward, RESOURCE_EXHAUSTED
    /// for one over a limit, UNIMPLEMENTED when no route matches,
    /// DEADLINE_EXCEEDED when the route's timeout or the call's
    /// `grpc-timeout` passed.
    pub fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::Route(RouteError::NoMatch { .. }) => 12,
            ProxyError::Route(RouteError::Timeout { .. }) => 4,
            ProxyError::BadRequest(_) => 13,
            ProxyError::HeadersTooLarge { .. } | ProxyError::ResponseHeadersTooLarge { .. } => 8,
            _ => 14,
        }
    }
}

/// The response the proxy sends for an error: its message is the error's
/// whole chain of causes.
pub fn respond(error: &ProxyError, grpc: bool) -> Response<Body> {
    let message = Chain(error).to_string();
    let header =
        HeaderValue::from_str(&message.replace(['\r', '\n'], " ")).unwrap_or(HeaderValue::from_static("proxy error"));
    let body = |text: String| Body::boxed(Full::new(Bytes::from(text)).map_err(|never| match never {}));
    let mut response = if grpc {
        // A trailers-only gRPC response: status and message in the headers.
        let mut response = Response::new(body(String::new()));
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, HeaderValue::from(error.grpc_status()));
        headers.insert(GRPC_MESSAGE, percent_encode(&message));
        response
    } else {
        let mut response = Response::new(body(format!("{message}\n")));
        *response.status_mut() = error.status();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    response.headers_mut().insert(PROXY_ERROR_HEADER, header);
    response
}

/// gRPC's percent-encoding of `grpc-message`.
pub fn percent_encode(text: &str) -> HeaderValue {
    let mut out = String::new();
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("proxy error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_the_right_status_for_each_protocol() {
        let none = ProxyError::Dispatch(DispatchError::NoEndpoints {
            target: "demo/web:80".into(),
            wait: std::time::Duration::from_secs(1),
        });
        let http = respond(&none, false);
        assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(http.headers().contains_key(PROXY_ERROR_HEADER));
        let grpc = respond(&none, true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(
            grpc.headers()["grpc-message"],
            "no ready endpoint for demo/web:80 after waiting 1s"
        );
        assert_eq!(percent_encode("100% ünicode"), "100%25 %C3%BCnicode");
        let large = ProxyError::HeadersTooLarge {
            size: 70000,
            limit: 65536,
        };
        assert_eq!(
            respond(&large, false).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(respond(&large, true).headers()["grpc-status"], "8");
    }
}
