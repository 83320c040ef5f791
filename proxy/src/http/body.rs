//! The response body on its way back: frames pass untouched (no buffering,
//! trailers verbatim); when it ends, the response is counted with its gRPC
//! status from the trailers, and the endpoint's load handle is released.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::balance::load::InFlight;
use crate::endpoint::StreamSlot;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::errors::percent_encode;
use super::headers::field_list_size;
use crate::metrics::RouteMetrics;

use crate::wire::{GRPC_MESSAGE, GRPC_STATUS};

const GRPC_CANCELLED: u32 = 1;
const GRPC_UNKNOWN: u32 = 2;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;

/// The call's gRPC status from headers or trailers; out-of-range values
/// count as UNKNOWN so a misbehaving server cannot grow the label set.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get(GRPC_STATUS)?;
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(GRPC_UNKNOWN);
    Some(if code <= 16 { code } else { GRPC_UNKNOWN })
}

/// What to record when the response ends.
pub struct Completion {
    /// The request's route, where the response is counted.
    pub metrics: RouteMetrics,
    /// The HTTP status to record; 502 for a body that fails (gRPC aside).
    pub status: u16,
    /// Whether the request is a gRPC call (`content-type: application/grpc…`),
    /// so the gRPC status is recorded too.
    pub grpc: bool,
    /// The gRPC status seen so far, in the headers or then the trailers.
    pub grpc_status: Option<u32>,
    /// When the proxy received the request, for the response duration.
    pub started: Instant,
    /// The endpoint's in-flight load, released when the body ends.
    pub load: Option<InFlight>,
    /// The stream's room on its HTTP/2 connection, released when the body ends.
    pub stream: Option<StreamSlot>,
}

impl Completion {
    fn finish(self, ended: bool) {
        let grpc_status = match (self.grpc, self.grpc_status, ended) {
            (false, _, _) => None,
            (true, Some(code), _) => Some(code),
            // The body ended without a status trailer, or was dropped
            // before its end: the call did not complete.
            (true, None, true) => Some(GRPC_UNKNOWN),
            (true, None, false) => Some(GRPC_CANCELLED),
        };
        self.metrics.response(self.status, grpc_status, self.started.elapsed());
        // Then the endpoint's load and the stream's room are given back.
        drop(self.load);
        drop(self.stream);
    }
}

/// A response body passed on frame by frame, recording its [`Completion`] when
/// it ends, fails or is dropped.
pub struct Observed {
    inner: Incoming,
    completion: Option<Completion>,
    /// The largest trailer list passed on (bytes, as HTTP/2 counts them).
    max_trailer_bytes: usize,
}

impl Observed {
    /// Observes `inner`. A gRPC response whose trailer list is over
    /// `max_trailer_bytes` (as HTTP/2 counts it) ends with RESOURCE_EXHAUSTED
    /// trailers instead.
    pub fn new(inner: Incoming, completion: Completion, max_trailer_bytes: usize) -> Self {
        Observed {
            inner,
            completion: Some(completion),
            max_trailer_bytes,
        }
    }
}

/// The trailers a gRPC call ends with when the server's were over the
/// limit: RESOURCE_EXHAUSTED, saying which limit, instead of a reset the
/// client would read as UNAVAILABLE.
fn trailers_over_limit(size: usize, limit: usize) -> HeaderMap {
    let message =
        format!("response trailers of {size} bytes are over the proxy's limit of {limit} (STRAIT_MAX_HEADER_BYTES)");
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, HeaderValue::from(GRPC_RESOURCE_EXHAUSTED));
    trailers.insert(GRPC_MESSAGE, percent_encode(&message));
    trailers
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        let limit = self.max_trailer_bytes;
        if let (Poll::Ready(Some(Ok(frame))), Some(true)) = (&mut polled, self.completion.as_ref().map(|c| c.grpc))
            && let Some(size) = frame.trailers_ref().map(field_list_size)
            && size > limit
        {
            *frame = Frame::trailers(trailers_over_limit(size, limit));
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(completion)) = (frame.trailers_ref(), self.completion.as_mut()) {
                    completion.grpc_status = grpc_status(trailers).or(completion.grpc_status);
                }
            }
            Poll::Ready(None) => {
                if let Some(completion) = self.completion.take() {
                    completion.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut completion) = self.completion.take() {
                    if !completion.grpc {
                        completion.status = 502;
                    }
                    completion.finish(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on its way back to the client: `Left`, the upstream's,
/// observed (every proxied response, kept unboxed: no allocation of its
/// own); `Right`, the proxy's own answer.
pub type ResponseBody = http_body_util::Either<Observed, crate::wire::Body>;

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(completion) = self.completion.take() {
            let ended = self.inner.is_end_stream();
            completion.finish(ended);
        }
    }
}
