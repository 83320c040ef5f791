//! Opaque TCP: connect to one target and relay bytes untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_contract::Chain;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::balance::{Backend, Target};
use crate::detect::{Prefixed, Readable};
use crate::metrics::{TcpLabels, TcpMetrics};
use crate::relay::{RelayError, relay};
use crate::retry::Policy;
use crate::tls::MeshTls;
use crate::transport::{self, ConnectError};
use crate::upstream::{self, Io};

/// Connection attempts on endpoints of a Service (one that refused is in
/// back-off, so the next pick is another).
const CONNECT: Policy = Policy::Immediate(3);

/// An upstream connection and the labels that describe it.
pub struct Upstream {
    /// The connection: plain TCP, or mutual TLS to the endpoint's proxy.
    pub io: Io,
    /// Bytes the server sent while the protocol was being decided.
    pub early: Bytes,
    /// The connection's labels, completed with the endpoint's pod and TLS.
    pub labels: TcpLabels,
}

impl Readable for Upstream {
    async fn server_spoke(&mut self) {
        match &mut self.io {
            Io::Plain(stream) => {
                let _ = stream.readable().await;
            }
            Io::Tls(stream) => {
                let mut buf = vec![0u8; 16 * 1024];
                if let Ok(n) = stream.read(&mut buf).await {
                    buf.truncate(n);
                    self.early = Bytes::from(buf);
                }
            }
        }
    }
}

/// A client connection the proxy can refuse with a reset.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket beneath, to reset; `None` when there is none to reach.
    fn into_tcp(self) -> Option<TcpStream>;
}

impl ClientStream for TcpStream {
    fn into_tcp(self) -> Option<TcpStream> {
        Some(self)
    }
}

/// Mutual TLS from a peer proxy, boxed: the stream is 1.2 KiB, and every
/// future on a held connection's way that has a place for it would carry
/// that much inline.
impl ClientStream for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    fn into_tcp(self) -> Option<TcpStream> {
        Some(self.into_inner().0)
    }
}

/// What every opaque forward needs; cheap to clone per connection.
#[derive(Clone, Debug)]
pub struct Forwarder {
    /// How long a connection attempt may take, a mutual TLS handshake included
    /// (`STRAIT_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// A relay with no bytes either way for this long is closed
    /// (`STRAIT_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// How long a connection to a Service waits for a ready endpoint
    /// (`STRAIT_NO_ENDPOINT_WAIT`).
    pub no_endpoint_wait: Duration,
    /// Where connections, their bytes and outcomes, and connect errors are counted.
    pub metrics: TcpMetrics,
    /// This proxy's mutual TLS, when it has an identity.
    pub mesh: Option<Arc<MeshTls>>,
}

impl Forwarder {
    /// Connects to one endpoint, its labels completed with its pod and TLS.
    async fn connect_to(&self, backend: &Backend, labels: &TcpLabels) -> Result<Upstream, ConnectError> {
        let io = upstream::connect(&backend.endpoint.target, self.mesh.as_ref(), self.connect_timeout).await?;
        let labels = labels.reached(&backend.pod, matches!(io, Io::Tls(_)));
        Ok(Upstream {
            io,
            early: Bytes::new(),
            labels,
        })
    }

    /// Connects to the target; for a Service, to the endpoint the balancer
    /// picks, trying others when one refuses ([`CONNECT`]).
    ///
    /// # Errors
    /// The last attempt's [`ConnectError`], or [`ConnectError::NoEndpoints`]
    /// when the Service had no ready endpoint within `no_endpoint_wait`.
    pub async fn connect(&self, target: &Target, labels: TcpLabels) -> Result<Upstream, ConnectError> {
        let balancer = match target {
            Target::Fixed(backend) => {
                let connected = self.connect_to(backend, &labels).await;
                if let Err(error) = &connected {
                    self.metrics.connect_failed(labels.direction, error);
                }
                return connected;
            }
            Target::Balanced(balancer) => balancer,
        };
        let deadline = Instant::now() + self.no_endpoint_wait;
        let mut last = None;
        for _ in CONNECT.attempts() {
            let Some(backend) = balancer.pick_or_wait(deadline, None).await else {
                break;
            };
            match self.connect_to(&backend, &labels).await {
                Ok(upstream) => return Ok(upstream),
                Err(error) => {
                    backend.endpoint.mark_failed();
                    self.metrics.connect_failed(labels.direction, &error);
                    last = Some(error);
                }
            }
        }
        let error = last.unwrap_or(ConnectError::NoEndpoints {
            target: balancer.name(),
        });
        if matches!(error, ConnectError::NoEndpoints { .. }) {
            self.metrics.connect_failed(labels.direction, &error);
        }
        Err(error)
    }

    /// Connects and relays until both sides are done.
    pub async fn forward<C: ClientStream>(
        &self,
        client: Prefixed<C>,
        client_addr: SocketAddr,
        target: Target,
        labels: TcpLabels,
    ) {
        match self.connect(&target, labels.clone()).await {
            Ok(upstream) => self.relay(client, client_addr, upstream).await,
            Err(error) => self.refuse(client, client_addr, labels, &error),
        }
    }

    /// Resets the client at once, so it sees a failed connect as it would
    /// without the proxy.
    pub fn refuse<C: ClientStream>(
        &self,
        client: Prefixed<C>,
        client_addr: SocketAddr,
        labels: TcpLabels,
        error: &ConnectError,
    ) {
        tracing::debug!(client = %client_addr, error = %Chain(error), "upstream connect failed");
        let mut guard = self.metrics.opened(labels);
        guard.connect_failed();
        if let Some(tcp) = client.into_inner().into_tcp() {
            transport::reset(tcp);
        }
    }

    /// Relays between the client and an established upstream connection.
    pub async fn relay<C: ClientStream>(&self, mut client: Prefixed<C>, client_addr: SocketAddr, upstream: Upstream) {
        let Upstream { io, early, labels } = upstream;
        let mut server = Prefixed::new(early, io);
        let mut guard = self.metrics.opened(labels.clone());
        let counters = self.metrics.byte_counters(&labels);
        match relay(&mut client, &mut server, self.idle_timeout, counters).await {
            Ok(moved) => tracing::trace!(client = %client_addr, ?moved, "connection closed"),
            Err(error) => {
                tracing::debug!(client = %client_addr, error = %Chain(&error), "connection ended");
                guard.failed(&error);
                // A side that failed (a reset, most often) is passed on as a
                // reset, so each peer sees what it would without the proxy
                // rather than an orderly end.
                match error {
                    RelayError::Upstream(_) => {
                        if let Some(tcp) = client.into_inner().into_tcp() {
                            transport::reset(tcp);
                        }
                    }
                    RelayError::Downstream(_) => transport::reset(server.into_inner().into_tcp()),
                    RelayError::Idle(_) => {}
                }
            }
        }
    }
}
