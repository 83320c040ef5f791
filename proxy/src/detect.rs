//! Protocol detection: reads the first bytes a client sends and decides
//! between HTTP/2 (the connection preface), HTTP/1 (a request line) and
//! opaque TCP (anything else, or nothing before the timeout). The bytes read
//! are replayed in front of the stream, so nothing is lost either way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A connection's protocol, as detection or the destination port decides it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1: the first line is a request line (RFC 9112 §3)
    /// with a known method.
    Http1,
    /// HTTP/2 with prior knowledge: the client sent the connection preface
    /// (RFC 9113 §3.4), or the port's `appProtocol` is `kubernetes.io/h2c`.
    Http2,
    /// Anything else: bytes are relayed untouched.
    Opaque,
}

impl Protocol {
    /// The metric label value: `http1`, `http2` or `opaque`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Decided(Protocol),
    NeedMore,
}

/// What the first bytes say, if they say enough: the protocol, or `None`
/// while a longer read could still change the answer. At `max` bytes the
/// answer is final (opaque, if nothing decided it sooner).
pub fn decide(bytes: &[u8], max: usize) -> Option<Protocol> {
    match classify(bytes, max) {
        Verdict::Decided(protocol) => Some(protocol),
        Verdict::NeedMore => None,
    }
}

/// `max` bounds what detection buffers: an HTTP/1 request line longer than
/// that is not worth waiting for. Only the first `max` bytes count, so the
/// answer is the same however many more a read brought.
fn classify(bytes: &[u8], max: usize) -> Verdict {
    let bytes = &bytes[..bytes.len().min(max)];
    if bytes.is_empty() {
        return Verdict::NeedMore;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Decided(Protocol::Http2)
        } else if bytes.len() >= max {
            Verdict::Decided(Protocol::Opaque)
        } else {
            Verdict::NeedMore
        };
    }
    // A method, a space, a target, a space, HTTP/1.x, CRLF.
    match bytes.iter().position(|b| *b == b' ') {
        None if bytes.len() < max && METHODS.iter().any(|m| m.as_bytes().starts_with(bytes)) => {
            return Verdict::NeedMore;
        }
        None => return Verdict::Decided(Protocol::Opaque),
        Some(len) if !METHODS.iter().any(|m| m.as_bytes() == &bytes[..len]) => {
            return Verdict::Decided(Protocol::Opaque);
        }
        Some(_) => {}
    }
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= max {
            Verdict::Decided(Protocol::Opaque)
        } else {
            Verdict::NeedMore
        };
    };
    let line = &bytes[..end];
    let is_http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    Verdict::Decided(if is_http1 { Protocol::Http1 } else { Protocol::Opaque })
}

/// How a connection's protocol was decided, for the detection metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Decided {
    /// From the first bytes.
    Detected,
    /// No decisive bytes before the timeout (or the client closed).
    Timeout,
    /// The port is opaque: no detection, so no added delay for protocols
    /// where the server speaks first.
    OpaquePort,
    /// The Service port's `appProtocol` said so.
    AppProtocol,
    /// The server sent bytes before the client did.
    ServerFirst,
}

impl Decided {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::Detected => "detected",
            Decided::Timeout => "timeout",
            Decided::OpaquePort => "opaque_port",
            Decided::AppProtocol => "app_protocol",
            Decided::ServerFirst => "server_first",
        }
    }
}

/// How long a silent client is given before the upstream connection is
/// opened alongside detection. HTTP clients speak within microseconds of
/// connecting; a client still silent by then is waiting for the server
/// (server-speaks-first) or idle, and either way it learns promptly if the
/// upstream is unreachable.
const PATIENCE: Duration = Duration::from_millis(200);

/// The outcome of a connection's first moments.
pub enum Opening<U, E> {
    /// The protocol is known; `upstream` is a connection opened early for a
    /// silent client, to use if the protocol is opaque.
    Decided {
        /// The connection's protocol.
        protocol: Protocol,
        /// The bytes read from the client while deciding, to be replayed in
        /// front of the stream ([`Prefixed`]).
        prefix: Bytes,
        /// How the protocol was decided.
        how: Decided,
        /// The upstream connection opened alongside detection, if any.
        upstream: Option<U>,
    },
    /// The early upstream connection failed: nothing can reach the target.
    Unreachable {
        /// The bytes read from the client before the connection failed.
        prefix: Bytes,
        /// Why the upstream connection failed.
        error: E,
    },
}

/// Decides a connection's protocol. A port declared opaque (`opaque_port`:
/// the proxy's own opaque ports, or the destination's Service saying so)
/// and a Service port's `appProtocol` (`tcp`, `kubernetes.io/h2c`) are
/// taken as they are,
/// without reading; otherwise the first bytes decide. A client that stays
/// silent has `connect` run alongside: if the server then speaks first, the
/// connection is opaque at once; if it cannot be reached, the client is told
/// without waiting for the detect timeout.
pub async fn open<S, U, E, F>(
    stream: &mut S,
    opaque_port: bool,
    app_protocol: Option<&str>,
    timeout: Duration,
    max_bytes: usize,
    connect: impl FnOnce() -> F,
) -> io::Result<Opening<U, E>>
where
    S: AsyncRead + Unpin,
    U: Readable,
    F: Future<Output = Result<U, E>>,
{
    let decided = |protocol, how| Opening::Decided {
        protocol,
        prefix: Bytes::new(),
        how,
        upstream: None,
    };
    if opaque_port {
        return Ok(decided(Protocol::Opaque, Decided::OpaquePort));
    }
    match app_protocol {
        Some("tcp") => return Ok(decided(Protocol::Opaque, Decided::AppProtocol)),
        Some("kubernetes.io/h2c") => return Ok(decided(Protocol::Http2, Decided::AppProtocol)),
        _ => {}
    }
    let mut buf = BytesMut::with_capacity(1024);
    let started = tokio::time::Instant::now();
    let (patience, deadline) = (started + PATIENCE.min(timeout), started + timeout);
    let decided = |protocol, buf: BytesMut, how, upstream| {
        Ok(Opening::Decided {
            protocol,
            prefix: buf.freeze(),
            how,
            upstream,
        })
    };
    // Before the patience runs out, only the client's bytes are awaited;
    // then the upstream connection is opened alongside.
    let mut connecting = std::pin::pin!(async {
        tokio::time::sleep_until(patience).await;
        connect().await
    });
    let mut upstream = loop {
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read? {
                0 => return decided(Protocol::Opaque, buf, Decided::Timeout, None),
                _ => {
                    if let Verdict::Decided(protocol) = classify(&buf, max_bytes) {
                        return decided(protocol, buf, Decided::Detected, None);
                    }
                }
            },
            connected = &mut connecting => match connected {
                Ok(upstream) => break upstream,
                Err(error) => return Ok(Opening::Unreachable { prefix: buf.freeze(), error }),
            },
            () = tokio::time::sleep_until(deadline) => return decided(Protocol::Opaque, buf, Decided::Timeout, None),
        }
    };
    // Connected: the client may still speak, or the server speak first.
    loop {
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read? {
                0 => return decided(Protocol::Opaque, buf, Decided::Timeout, Some(upstream)),
                _ => {
                    if let Verdict::Decided(protocol) = classify(&buf, max_bytes) {
                        return decided(protocol, buf, Decided::Detected, Some(upstream));
                    }
                }
            },
            () = upstream.server_spoke() => return decided(Protocol::Opaque, buf, Decided::ServerFirst, Some(upstream)),
            () = tokio::time::sleep_until(deadline) => return decided(Protocol::Opaque, buf, Decided::Timeout, Some(upstream)),
        }
    }
}

/// An upstream connection whose first bytes can be waited for.
pub trait Readable {
    /// Resolves once the server has sent something (or closed); what it
    /// sent must not be lost.
    fn server_spoke(&mut self) -> impl Future<Output = ()>;
}

/// A stream with some already-read bytes put back in front of it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// A stream that reads `prefix` first and then `inner`; writes go straight
    /// to `inner`. The prefix is let go of once read (an empty view of a
    /// buffer still holds all of it, 1 KiB or more, for the connection's life).
    pub fn new(prefix: Bytes, inner: S) -> Self {
        let prefix = if prefix.is_empty() { Bytes::new() } else { prefix };
        Prefixed { prefix, inner }
    }

    /// The stream itself; bytes of the prefix not yet read are dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_prefix_read_to_its_end_lets_go_of_the_detection_buffer() {
        let buffer = Bytes::from(vec![b'x'; 1024]);
        let mut prefixed = Prefixed::new(buffer.slice(..6), tokio::io::empty());
        let mut read = Vec::new();
        prefixed.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"xxxxxx");
        assert!(buffer.is_unique(), "the stream still holds the buffer");
        // Nothing read (a server speaks first, or the client is silent): the
        // detection buffer frozen empty still holds its allocation.
        let empty = BytesMut::with_capacity(1024).freeze();
        let kept = empty.clone();
        assert!(!kept.is_unique());
        let _prefixed = Prefixed::new(empty, tokio::io::empty());
        assert!(kept.is_unique(), "an empty prefix holds the buffer");
    }

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Verdict::Decided(Protocol::Http2)),
            (b"PRI * HTTP/2", Verdict::NeedMore),
            (b"GET / HTTP/1.1\r\nHost: x\r\n", Verdict::Decided(Protocol::Http1)),
            (b"POST /upload HTTP/1.0\r\n", Verdict::Decided(Protocol::Http1)),
            (b"GE", Verdict::NeedMore),
            (b"GET /very/long", Verdict::NeedMore),
            (b"GET / SPDY/3\r\n", Verdict::Decided(Protocol::Opaque)),
            (b"\x16\x03\x01\x02\x00", Verdict::Decided(Protocol::Opaque)),
            (b"SSH-2.0-OpenSSH\r\n", Verdict::Decided(Protocol::Opaque)),
            (b"GETX / HTTP/1.1\r\n", Verdict::Decided(Protocol::Opaque)),
            (b"*1\r\n$4\r\nPING\r\n", Verdict::Decided(Protocol::Opaque)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(&classify(bytes, 8192), expected, "{:?}", String::from_utf8_lossy(bytes));
        }
        // At the buffer's limit, whatever is still undecided is opaque.
        assert_eq!(classify(b"GET /very/long", 10), Verdict::Decided(Protocol::Opaque));
        assert_eq!(classify(b"PRI * HTTP/2", 8), Verdict::Decided(Protocol::Opaque));
        assert_eq!(classify(b"GE", 2), Verdict::Decided(Protocol::Opaque));
        // A request line that ends past the limit is opaque, whatever follows
        // (found by the `detect` fuzz target).
        assert_eq!(
            classify(b"POST /a-long-target HTTP/1.0\r\n", 16),
            Verdict::Decided(Protocol::Opaque)
        );
    }

    /// An upstream that never speaks.
    struct Silent;

    impl Readable for Silent {
        fn server_spoke(&mut self) -> impl Future<Output = ()> {
            std::future::pending()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_opaque_after_the_timeout_and_bytes_are_kept() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /slo").await.unwrap();
        let opening = open(
            &mut server,
            false,
            None,
            Duration::from_secs(1),
            8192,
            std::future::pending::<Result<Silent, ()>>,
        )
        .await
        .unwrap();
        let Opening::Decided {
            protocol, prefix, how, ..
        } = opening
        else {
            panic!("the upstream is never reached")
        };
        assert_eq!((protocol, how), (Protocol::Opaque, Decided::Timeout));
        assert_eq!(&prefix[..], b"GET /slo");

        let mut replayed = Prefixed::new(prefix, server);
        client.write_all(b"w").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        replayed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /slow");
    }
}
