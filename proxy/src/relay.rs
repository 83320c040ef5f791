//! Relays bytes both ways between two streams, untouched.
//!
//! Each direction has its own small buffer that grows only for bulk
//! transfers (at most 64 KiB) and is released whenever the direction goes
//! quiet, so an idle connection holds no relay buffer at all, memory per
//! connection is bounded, and a slow reader pushes back on the writer
//! instead of being buffered for. End of stream on one side
//! is propagated as a half-close (shutdown of the write side) on the other,
//! and the connection ends once both directions have ended. Any byte in either
//! direction restarts the idle timer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What an idle direction reads into before it has a buffer of its own.
const PROBE: usize = 2 * 1024;
const INITIAL_BUFFER: usize = 8 * 1024;
const BULK_BUFFER: usize = 64 * 1024;

/// Which side of the relay failed; this decides the metric label and whether
/// the fault was ours to report.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to the client failed.
    #[error("client side")]
    Downstream(#[source] io::Error),
    /// Reading from or writing to the upstream failed.
    #[error("server side")]
    Upstream(#[source] io::Error),
    /// Neither side sent anything for this long.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// Bytes moved, as seen by the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes read from the client, for the server.
    pub client_to_server: u64,
    /// Bytes read from the server, for the client.
    pub server_to_client: u64,
}

/// Where each direction's byte counts go as they happen.
#[derive(Clone, Debug, Default)]
pub struct ByteCounters {
    /// Counts the bytes on their way from the client to the server, as they pass.
    pub client_to_server: Counter,
    /// Counts the bytes on their way from the server to the client, as they pass.
    pub server_to_client: Counter,
}

/// Relays until both directions have ended, one side fails, or the
/// connection has been idle for `idle_timeout`.
pub async fn relay<C, S>(
    client: &mut C,
    server: &mut S,
    idle_timeout: Duration,
    counters: ByteCounters,
) -> Result<Transferred, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Relay {
        client,
        server,
        upward: Pipe::new(counters.client_to_server),
        downward: Pipe::new(counters.server_to_client),
        idle_timeout,
        idle: Box::pin(tokio::time::sleep(idle_timeout)),
    }
    .await
}

struct Relay<'a, C: ?Sized, S: ?Sized> {
    client: &'a mut C,
    server: &'a mut S,
    upward: Pipe,
    downward: Pipe,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl<C, S> Future for Relay<'_, C, S>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = Result<Transferred, RelayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let before = this.transferred();
        let up = this.upward.poll_copy(cx, &mut *this.client, &mut *this.server);
        if let Poll::Ready(Err(side)) = up {
            return Poll::Ready(Err(side.into_error(Side::Client)));
        }
        let down = this.downward.poll_copy(cx, &mut *this.server, &mut *this.client);
        if let Poll::Ready(Err(side)) = down {
            return Poll::Ready(Err(side.into_error(Side::Server)));
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(this.transferred()));
        }
        if this.transferred() != before {
            this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
        }
        ready!(this.idle.as_mut().poll(cx));
        Poll::Ready(Err(RelayError::Idle(this.idle_timeout)))
    }
}

impl<C: ?Sized, S: ?Sized> Relay<'_, C, S> {
    fn transferred(&self) -> Transferred {
        Transferred {
            client_to_server: self.upward.total,
            server_to_client: self.downward.total,
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// A failed read or write inside one pipe.
enum PipeError {
    Read(io::Error),
    Write(io::Error),
}

impl PipeError {
    /// Attributes the error to a side, given which side the pipe reads from.
    fn into_error(self, reads_from: Side) -> RelayError {
        match (self, reads_from) {
            (PipeError::Read(e), Side::Client) | (PipeError::Write(e), Side::Server) => RelayError::Downstream(e),
            (PipeError::Read(e), Side::Server) | (PipeError::Write(e), Side::Client) => RelayError::Upstream(e),
        }
    }
}

/// One direction: read into the buffer, write it all out, repeat; on end of
/// stream, flush and shut the writer down.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
    unflushed: bool,
    total: u64,
    counter: Counter,
}

impl Pipe {
    fn new(counter: Counter) -> Self {
        Pipe {
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            unflushed: false,
            total: 0,
            counter,
        }
    }

    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<Result<(), PipeError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.eof {
                // An idle direction holds no buffer: the first read after a
                // pause goes to the stack, and only bytes that arrive are
                // given heap memory.
                let mut probe = [0u8; PROBE];
                let idle = self.buf.is_empty();
                let mut read_buf = ReadBuf::new(if idle { &mut probe[..] } else { &mut self.buf[..] });
                match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(PipeError::Write)?;
                            self.unflushed = false;
                        }
                        self.buf = Vec::new();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeError::Read(e))),
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            let full = n == read_buf.capacity();
                            if idle {
                                self.buf = vec![0; INITIAL_BUFFER];
                                self.buf[..n].copy_from_slice(&probe[..n]);
                            } else if full && n < BULK_BUFFER {
                                self.buf.resize(BULK_BUFFER, 0);
                            }
                            (self.start, self.end) = (0, n);
                            self.total += n as u64;
                            self.counter.inc_by(n as u64);
                        }
                    }
                }
            }
            while self.start < self.end {
                let written = ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]))
                    .map_err(PipeError::Write)?;
                if written == 0 {
                    return Poll::Ready(Err(PipeError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.start += written;
                self.unflushed = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(PipeError::Write)?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(PipeError::Write)?;
                self.done = true;
                self.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
