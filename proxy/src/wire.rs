//! What both sides of an HTTP hop agree on: the body type inside the proxy,
//! HTTP/2 flow-control windows, header list limits and the gRPC header names
//! the proxy reads and writes. Shared by the server side (`http`), the client
//! side (`endpoint`) and the routes, below all three.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderName;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// gRPC's status header or trailer (gRPC over HTTP/2). Header names as
/// constants: a name given as a string that is not a standard HTTP header
/// is copied to the heap on every insert.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC's status message, percent-encoded (gRPC over HTTP/2).
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// A gRPC call's deadline: at most 8 digits and a unit (gRPC over HTTP/2).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// HTTP/2 flow-control windows, on both sides of the proxy: what a peer may
/// send on one stream before the proxy reads it (256 KiB), and on one
/// connection (see [`connection_window`]).
///
/// They are fixed rather than adaptive because the HTTP/2 library also bounds
/// the framing overhead of small DATA frames waiting to be read, at half the
/// connection window, and closes the connection with ENHANCE_YOUR_CALM
/// beyond it, failing every call on it. Adaptive windows start at 64 KiB,
/// which allows only about 200 waiting gRPC messages: a burst of calls
/// reaches that.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// Streams on one connection whose stalls never block each other, and the
/// most streams the proxy opens on one upstream connection: 100.
pub const ISOLATED_STREAMS: u32 = 100;

/// The connection window for a connection carrying up to `streams` streams
/// at once: a stream window for each, up to [`ISOLATED_STREAMS`] (25 MiB).
/// Streams whose readers stopped then never use up the connection's window
/// and block the others on it: one gRPC client that stops reading must not
/// starve every other client of the same pod, whose calls share the
/// connections between proxies. It is also what one connection can make
/// the proxy hold at most, when that many of its streams stall.
pub fn connection_window(streams: u32) -> u32 {
    STREAM_WINDOW * streams.clamp(8, ISOLATED_STREAMS)
}

/// The header list sizes the HTTP libraries read, in bytes: twice the
/// proxy's limit, so a message over the limit but within this is read and
/// answered in its own protocol (431, RESOURCE_EXHAUSTED) rather than cut.
pub fn header_read_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).max(8192)
}

/// The most HTTP/1 header fields read in one message head: as many as a
/// header list within [`header_read_limit`] can hold when each field counts
/// its name, value and 32 bytes as in HTTP/2 (RFC 9113 §6.5.2). The limit
/// is thus the byte limit, never a count of fields a valid message reaches.
pub fn max_header_fields(max_header_bytes: usize) -> usize {
    header_read_limit(max_header_bytes) / 32
}

/// The body type inside the proxy, for requests and responses alike: a
/// body as hyper received it, passed on as it is, or any other body boxed
/// (the proxy's own answers, a retry's recording and replay). Every
/// proxied request carries a received body: kept unboxed, it costs no
/// allocation of its own. Not `http_body_util::Either`: that one's error
/// is boxed, and the endpoint side reads `hyper::Error`s.
#[derive(Debug)]
pub enum Body {
    /// A body as hyper received it from a peer.
    Received(Incoming),
    /// Any other body.
    Boxed(UnsyncBoxBody<Bytes, hyper::Error>),
}

impl Body {
    /// `body`, boxed.
    pub fn boxed<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        Body::Boxed(UnsyncBoxBody::new(body))
    }
}

impl Default for Body {
    /// An empty body; a boxed empty body allocates nothing.
    fn default() -> Body {
        Body::Boxed(UnsyncBoxBody::default())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Received(body) => Pin::new(body).poll_frame(cx),
            Body::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Received(body) => body.is_end_stream(),
            Body::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Received(body) => body.size_hint(),
            Body::Boxed(body) => body.size_hint(),
        }
    }
}
