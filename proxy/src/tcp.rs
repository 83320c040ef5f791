//! Opaque TCP: connect to one target and relay bytes untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::balance::Balancer;
use crate::detect::Prefixed;
use crate::metrics::{TcpLabels, TcpMetrics};
use crate::relay::{RelayError, relay};
use crate::transport::{self, ConnectError};

/// Connection attempts on distinct endpoints of a Service.
const MAX_ATTEMPTS: usize = 3;

/// Where an opaque connection goes.
#[derive(Clone)]
pub enum TcpTarget {
    /// One address: the original destination or the local application.
    Fixed(SocketAddr),
    /// One endpoint of a Service, picked by the balancer; a refused
    /// connection is tried on another endpoint.
    Balanced(Arc<Balancer>),
}

/// An upstream connection and the labels that describe it.
pub struct Upstream {
    pub stream: TcpStream,
    pub labels: TcpLabels,
}

impl crate::detect::Readable for Upstream {
    async fn readable(&self) {
        let _ = self.stream.readable().await;
    }
}

/// What every opaque forward needs; cheap to clone per connection.
#[derive(Clone, Debug)]
pub struct Forwarder {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub no_endpoint_wait: Duration,
    pub metrics: TcpMetrics,
}

impl Forwarder {
    /// Connects to the target; for a Service, to the endpoint the balancer
    /// picks, trying others when one refuses.
    pub async fn connect(&self, target: &TcpTarget, mut labels: TcpLabels) -> Result<Upstream, ConnectError> {
        let balancer = match target {
            TcpTarget::Fixed(addr) => {
                let connected = transport::connect(*addr, self.connect_timeout).await;
                if let Err(error) = &connected {
                    self.metrics.connect_failed(labels.direction, error);
                }
                return connected.map(|stream| Upstream { stream, labels });
            }
            TcpTarget::Balanced(balancer) => balancer,
        };
        let deadline = Instant::now() + self.no_endpoint_wait;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let Some(backend) = balancer.pick_or_wait(deadline).await else {
                break;
            };
            match transport::connect(backend.endpoint.addr, self.connect_timeout).await {
                Ok(stream) => {
                    labels.dst_pod = backend.pod.clone();
                    return Ok(Upstream { stream, labels });
                }
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
    pub async fn forward(
        &self,
        client: Prefixed<TcpStream>,
        client_addr: SocketAddr,
        target: TcpTarget,
        labels: TcpLabels,
    ) {
        match self.connect(&target, labels.clone()).await {
            Ok(upstream) => self.relay(client, client_addr, upstream).await,
            Err(error) => self.refuse(client, client_addr, labels, &error),
        }
    }

    /// Resets the client at once, so it sees a failed connect as it would
    /// without the proxy.
    pub fn refuse(
        &self,
        client: Prefixed<TcpStream>,
        client_addr: SocketAddr,
        labels: TcpLabels,
        error: &ConnectError,
    ) {
        tracing::debug!(client = %client_addr, %error, "upstream connect failed");
        let mut guard = self.metrics.opened(labels);
        guard.connect_failed();
        transport::reset(client.into_inner());
    }

    /// Relays between the client and an established upstream connection.
    pub async fn relay(&self, mut client: Prefixed<TcpStream>, client_addr: SocketAddr, upstream: Upstream) {
        let Upstream { mut stream, labels } = upstream;
        let mut guard = self.metrics.opened(labels.clone());
        let counters = self.metrics.byte_counters(&labels);
        match relay(&mut client, &mut stream, self.idle_timeout, counters).await {
            Ok(moved) => tracing::trace!(client = %client_addr, ?moved, "connection closed"),
            Err(error) => {
                tracing::debug!(client = %client_addr, %error, "connection ended");
                guard.failed(&error);
                if matches!(error, RelayError::Upstream(_)) {
                    transport::reset(client.into_inner());
                }
            }
        }
    }
}
