//! Requests that can be sent again. When the next hop answers that nothing
//! of a request reached its application (the application refused the
//! connection, or its HTTP/2 server turned the stream away: it is shutting
//! down, say, while its endpoint is still being withdrawn), the request is
//! safe to send to another endpoint. Its body is
//! read through a recording: what has been read so far is kept, up to a
//! small cap, and what has not been read yet stays with the recording, so a
//! replay sends the kept part and then goes on reading where the first
//! attempt stopped, however early the answer came. Only a body read past
//! the cap is not replayed; its answer goes to the client as it is.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Frame, SizeHint};

use crate::wire::Body;

/// The response header by which an inbound proxy says the request never
/// reached its application. It is for the client's proxy only, which
/// removes it.
pub const UNPROCESSED_HEADER: HeaderName = HeaderName::from_static("strait-unprocessed");

/// The most of a request body kept for a replay.
const MAX_RECORDED: usize = 64 * 1024;

/// Marks an inbound answer with `strait-unprocessed: true`: the request never
/// reached the application, so the client's proxy may send it elsewhere.
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

/// Whether an HTTP/2 upstream turned the request's stream away before its
/// application saw it: a RST_STREAM with REFUSED_STREAM, or a GOAWAY whose
/// last stream ID leaves the stream out (RFC 9113, 8.7), or that came
/// before the stream was opened. Either way the request may go elsewhere.
///
/// The HTTP/2 library fails a stream with the peer's GOAWAY only in those
/// cases: streams the GOAWAY keeps end with their answer, or with a broken
/// pipe if the connection closes first, which does not count. One
/// exception needs a multi-threaded runtime (`STRAIT_WORKER_THREADS` above
/// 1): hyper checks the connection again right after opening a stream, and
/// a GOAWAY read on another thread in between fails a stream the GOAWAY
/// kept. On the default single thread nothing runs between the two.
pub fn refused_unprocessed(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<h2::Error>())
        .is_some_and(|error| {
            error.is_remote() && (error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM))
        })
}

/// A request body as it is being sent: the frames read so far and the rest.
struct Recording {
    /// Copies of the frames read so far (cheap clones of the same bytes).
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    /// What has not been read yet; `None` once a replay has taken it over.
    rest: Option<Body>,
    /// Too large, failed, or no longer needed: nothing more is kept.
    abandoned: bool,
}

impl Recording {
    fn keep(&mut self, frame: &Option<Result<Frame<Bytes>, hyper::Error>>) {
        match frame {
            // The end: an empty rest reads as ended, however often polled.
            None => self.rest = Some(Body::default()),
            Some(Err(_)) => self.abandon(),
            Some(Ok(_)) if self.abandoned => {}
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len();
                    if self.bytes > MAX_RECORDED {
                        self.abandon();
                        return;
                    }
                    self.frames.push(Frame::data(data.clone()));
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.frames.push(Frame::trailers(trailers.clone()));
                }
            }
        }
    }

    fn abandon(&mut self) {
        self.abandoned = true;
        self.frames = Vec::new();
    }
}

/// What is needed to send a request again.
pub struct Replayable {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// What the HTTP library keeps beside the head (header names' case).
    extensions: http::Extensions,
    /// The body was empty: a replay sends none, as the first attempt did
    /// (a body of unknown length would be sent chunked).
    empty: bool,
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
        let empty = http_body::Body::is_end_stream(&body);
        let recording = Arc::new(Mutex::new(Recording {
            frames: Vec::new(),
            bytes: 0,
            rest: Some(body),
            abandoned: false,
        }));
        let replayable = Replayable {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
            empty,
            recording: recording.clone(),
        };
        let body = Body::boxed(RecordingBody { recording });
        (Request::from_parts(parts, body), Some(replayable))
    }

    /// The request again: the frames read so far, then the rest of the body,
    /// which the first attempt no longer reads. `None` when more was read
    /// than is kept.
    pub fn into_request(self) -> Option<Request<Body>> {
        let (frames, rest) = {
            let mut recording = lock(&self.recording);
            if recording.abandoned {
                return None;
            }
            (std::mem::take(&mut recording.frames), recording.rest.take()?)
        };
        let body = if self.empty {
            Body::default()
        } else {
            Body::boxed(ReplayBody {
                frames: frames.into(),
                rest,
            })
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        Some(request)
    }

    /// No replay will be needed: the body is read on without being kept.
    pub fn discard(self) {
        lock(&self.recording).abandon();
    }
}

/// A replay's body: the frames the first attempt read, then the rest. It
/// tells its end as soon as it is known (the last kept frame when the rest
/// had ended), so the end of stream goes out with the last data frame as
/// the client sent it, not in a frame of its own that a server which has
/// already answered and reset the stream would take for a protocol error
/// (h2 counts those, and closes a connection that makes too many).
struct ReplayBody {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let kept: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(kept + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(kept + upper);
        }
        hint
    }
}

/// The body the first attempt reads: the recording's rest, kept as it goes.
struct RecordingBody {
    recording: Arc<Mutex<Recording>>,
}

impl http_body::Body for RecordingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut recording = lock(&self.recording);
        // A replay took the rest over: this attempt has had its answer.
        let Some(rest) = recording.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            recording.keep(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.recording)
            .rest
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let recording = lock(&self.recording);
        recording
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

/// A body that sends `first`, then `rest` once `before_rest` is done: a
/// request whose end arrives late, for tests.
#[cfg(test)]
pub(crate) fn two_part_body(
    first: &'static [u8],
    rest: &'static [u8],
    before_rest: impl Future<Output = ()> + Send + 'static,
) -> Body {
    use futures::StreamExt;
    use http_body_util::StreamBody;
    let later = futures::stream::once(async move {
        before_rest.await;
        Ok(Frame::data(Bytes::from_static(rest)))
    });
    let frames = futures::stream::iter([Ok(Frame::data(Bytes::from_static(first)))]).chain(later);
    Body::boxed(StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn request(body: &'static [u8]) -> Request<Body> {
        Request::post("http://web.demo:80/upload")
            .header("content-type", "application/grpc")
            .body(Body::boxed(
                Full::new(Bytes::from_static(body)).map_err(|never| match never {}),
            ))
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
    async fn a_body_answered_before_it_was_read_to_the_end_is_sent_again_whole() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let body = two_part_body(b"hel", b"lo", async {
            let _ = released.await;
        });
        let (sent, replayable) = Replayable::record(request(b"").map(|_| body));
        let mut first_attempt = sent.into_body();
        let frame = first_attempt.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &b"hel"[..]);

        // The answer comes now, with the rest of the body still to come.
        let again = replayable.unwrap().into_request().unwrap();
        assert!(
            first_attempt.frame().await.is_none(),
            "the first attempt reads no more once a replay took over"
        );
        release.send(()).unwrap();
        let second = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"hello");
    }

    #[tokio::test]
    async fn a_body_never_read_is_replayed_and_one_read_past_the_cap_is_not() {
        let (_unsent, replayable) = Replayable::record(request(b"hello"));
        let again = replayable.unwrap().into_request().unwrap();
        assert_eq!(&again.into_body().collect().await.unwrap().to_bytes()[..], b"hello");

        let big: &'static [u8] = Box::leak(vec![7u8; MAX_RECORDED + 1].into_boxed_slice());
        let (sent, replayable) = Replayable::record(request(big));
        sent.into_body().collect().await.unwrap();
        assert!(replayable.unwrap().into_request().is_none(), "too large to keep");
    }

    #[tokio::test]
    async fn trailers_are_replayed_after_the_data() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = [Frame::data(Bytes::from_static(b"hi")), Frame::trailers(trailers)];
        let body = Body::boxed(http_body_util::StreamBody::new(futures::stream::iter(frames.map(Ok))));
        let (sent, replayable) = Replayable::record(request(b"").map(|_| body));
        sent.into_body().collect().await.unwrap();
        let again = replayable.unwrap().into_request().unwrap();
        let collected = again.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"hi");
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

    #[tokio::test]
    async fn a_replay_of_a_body_read_to_its_end_ends_with_its_last_frame() {
        let (request, replayable) = Replayable::record(request(b"one message"));
        let mut first = request.into_body();
        let frame = first.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().unwrap(), "one message");
        let mut again = replayable.unwrap().into_request().expect("kept").into_body();
        assert!(!http_body::Body::is_end_stream(&again));
        let frame = again.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().unwrap(), "one message");
        // The end goes out with the data (END_STREAM on the last DATA
        // frame), not in an empty frame of its own after it.
        assert!(http_body::Body::is_end_stream(&again), "the replay knows it has ended");
        assert_eq!(http_body::Body::size_hint(&again).exact(), Some(0));
    }
}
