//! Requests that can be sent again. When the next hop answers that nothing
//! of a request reached its application (the application refused the
//! connection: it is shutting down, say, while its endpoint is still being
//! withdrawn), the request is safe to send to another endpoint, as long as
//! its body is still at hand. The body is recorded as it is sent, up to a
//! small cap; a larger body, or one not finished by the time the answer
//! came, is not replayed and the answer goes to the client as it is.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::Body;

/// The response header by which an inbound proxy says the request never
/// reached its application. It is for the client's proxy only, which
/// removes it.
pub const UNPROCESSED_HEADER: &str = "strait-unprocessed";

/// The most of a request body kept for a replay.
const MAX_RECORDED: usize = 64 * 1024;

pub fn mark_unprocessed<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(UNPROCESSED_HEADER, HeaderValue::from_static("true"));
}

/// Whether the answer says the request never reached the application; the
/// marker is removed either way.
pub fn take_unprocessed<B>(response: &mut Response<B>) -> bool {
    response.headers_mut().remove(UNPROCESSED_HEADER).is_some()
}

#[derive(Default)]
struct Recording {
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    /// The body ended while it was being recorded.
    complete: bool,
    /// Too large, or no longer needed: nothing more is kept.
    abandoned: bool,
}

/// What is needed to send a request again.
pub struct Replayable {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    recording: Arc<Mutex<Recording>>,
}

fn lock(recording: &Mutex<Recording>) -> MutexGuard<'_, Recording> {
    recording.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Replayable {
    /// Starts recording a request's body as it is sent. Upgrades are not
    /// replayable (their bytes after the handshake are no request body).
    pub fn record(request: Request<Body>) -> (Request<Body>, Option<Replayable>) {
        if request.method() == Method::CONNECT || request.headers().contains_key(http::header::UPGRADE) {
            return (request, None);
        }
        let (parts, body) = request.into_parts();
        let recording = Arc::new(Mutex::new(Recording::default()));
        let replayable = Replayable {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            recording: recording.clone(),
        };
        let body = RecordingBody { inner: body, recording }.boxed_unsync();
        (Request::from_parts(parts, body), Some(replayable))
    }

    /// The request again, if its whole body was recorded.
    pub fn into_request(self) -> Option<Request<Body>> {
        let recording = std::mem::take(&mut *lock(&self.recording));
        if !recording.complete || recording.abandoned {
            return None;
        }
        let frames = recording
            .frames
            .into_iter()
            .map(Frame::data)
            .chain(recording.trailers.map(Frame::trailers))
            .map(Ok);
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        Some(request)
    }

    /// No replay will be needed: the recording is dropped and stops.
    pub fn discard(self) {
        let mut recording = lock(&self.recording);
        recording.abandoned = true;
        recording.frames = Vec::new();
        recording.trailers = None;
    }
}

/// A body that keeps a copy of what passes through it (cheap clones of the
/// same bytes) until it is abandoned.
struct RecordingBody {
    inner: Body,
    recording: Arc<Mutex<Recording>>,
}

impl http_body::Body for RecordingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let mut recording = lock(&self.recording);
            if !recording.abandoned {
                match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            recording.bytes += data.len();
                            if recording.bytes > MAX_RECORDED {
                                recording.abandoned = true;
                                recording.frames = Vec::new();
                            } else {
                                recording.frames.push(data.clone());
                            }
                        } else if let Some(trailers) = frame.trailers_ref() {
                            recording.trailers = Some(trailers.clone());
                        }
                        // HTTP/2 ends the stream with the last frame, without
                        // polling for the end.
                        recording.complete |= self.inner.is_end_stream();
                    }
                    None => recording.complete = true,
                    Some(Err(_)) => recording.abandoned = true,
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            lock(&self.recording).complete = true;
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::Full;

    fn request(body: &'static [u8]) -> Request<Body> {
        Request::post("http://web.demo:80/upload")
            .header("content-type", "application/grpc")
            .body(
                Full::new(Bytes::from_static(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_sent_in_full_can_be_sent_again() {
        let (sent, replayable) = Replayable::record(request(b"hello"));
        let first = sent.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&first[..], b"hello");
        let again = replayable.unwrap().into_request().unwrap();
        assert_eq!(again.headers()["content-type"], "application/grpc");
        assert_eq!(again.uri(), "http://web.demo:80/upload");
        let second = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"hello");
    }

    #[tokio::test]
    async fn a_body_read_as_http2_sends_it_is_complete_with_its_last_frame() {
        let (sent, replayable) = Replayable::record(request(b"hello"));
        let mut body = sent.into_body();
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream(), "HTTP/2 stops here, without polling for the end");
        assert!(replayable.unwrap().into_request().is_some());
    }

    #[tokio::test]
    async fn an_unfinished_or_oversized_body_is_not_replayed() {
        let (_unsent, replayable) = Replayable::record(request(b"hello"));
        assert!(replayable.unwrap().into_request().is_none(), "the body was never read");

        let big: &'static [u8] = Box::leak(vec![7u8; MAX_RECORDED + 1].into_boxed_slice());
        let (sent, replayable) = Replayable::record(request(big));
        sent.into_body().collect().await.unwrap();
        assert!(replayable.unwrap().into_request().is_none(), "too large to keep");
    }

    #[test]
    fn upgrades_are_not_recorded_and_the_marker_is_taken_off() {
        let upgrade = Request::get("http://web/ws")
            .header("upgrade", "websocket")
            .body(Body::default())
            .unwrap();
        assert!(Replayable::record(upgrade).1.is_none());
        let mut response = Response::new(());
        mark_unprocessed(&mut response);
        assert!(take_unprocessed(&mut response));
        assert!(!response.headers().contains_key(UNPROCESSED_HEADER));
    }
}
