//! Opaque TCP: connect to one target and relay bytes untouched.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics::{Direction, TcpLabels, TcpMetrics};
use crate::relay::{RelayError, relay};
use crate::transport;

/// What every opaque forward needs; cheap to clone per connection.
#[derive(Clone, Debug)]
pub struct Forwarder {
    pub direction: Direction,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub metrics: TcpMetrics,
}

impl Forwarder {
    /// Connects to `target` and relays until both sides are done. A failed
    /// connect resets the client at once, so it sees the failure as it would
    /// without the proxy.
    pub async fn forward(&self, mut client: TcpStream, client_addr: SocketAddr, target: SocketAddr) {
        let labels = TcpLabels {
            direction: self.direction,
        };
        let mut guard = self.metrics.opened(labels.clone());
        let mut server = match transport::connect(target, self.connect_timeout).await {
            Ok(server) => server,
            Err(error) => {
                tracing::debug!(client = %client_addr, %target, %error, "upstream connect failed");
                self.metrics.connect_failed(self.direction, &error);
                guard.connect_failed();
                transport::reset(client);
                return;
            }
        };
        let counters = self.metrics.byte_counters(&labels);
        match relay(&mut client, &mut server, self.idle_timeout, counters).await {
            Ok(moved) => {
                tracing::trace!(client = %client_addr, %target, ?moved, "connection closed")
            }
            Err(error) => {
                tracing::debug!(client = %client_addr, %target, %error, "connection ended");
                guard.failed(&error);
                if matches!(error, RelayError::Upstream(_)) {
                    transport::reset(client);
                }
            }
        }
    }
}
