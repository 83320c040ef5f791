//! strait-proxy: the transparent sidecar.
//!
//! The proxy is built from its [`Config`], then binds its listeners, then runs
//! until a shutdown signal; each step is separate so tests run it in-process
//! on ephemeral ports.

pub mod admin;
pub mod config;
pub mod drain;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod relay;
pub mod tcp;
pub mod transport;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket};

pub use config::{Config, ConfigError};

use admin::{Admin, Readiness};
use drain::Drain;
use metrics::{Direction, TcpMetrics};
use tcp::Forwarder;

/// A proxy that is configured but not yet listening.
pub struct Proxy {
    config: Config,
    registry: Registry,
    tcp: TcpMetrics,
    readiness: Readiness,
    drain: Drain,
}

/// The proxy's bound addresses, which tests read to find ephemeral ports.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub outbound: Vec<SocketAddr>,
    pub inbound: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    what: &'static str,
    addr: SocketAddr,
    source: io::Error,
}

impl Proxy {
    pub fn build(config: Config) -> Self {
        let mut registry = metrics::registry();
        let tcp = TcpMetrics::register(&mut registry);
        Proxy {
            config,
            registry,
            tcp,
            readiness: Readiness::default(),
            drain: Drain::new(),
        }
    }

    pub fn bind(self) -> Result<Bound, BindError> {
        let outbound = listen_all("outbound", &self.config.outbound_addrs)?;
        let inbound = listen_all("inbound", &self.config.inbound_addrs)?;
        let admin = listen("admin", self.config.admin_addr)?;
        Ok(Bound {
            proxy: self,
            outbound,
            inbound,
            admin,
        })
    }
}

/// Binds every address; an IPv6 address is skipped when the namespace has no
/// IPv6, since a pod without IPv6 gets no IPv6 traffic to redirect.
fn listen_all(what: &'static str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BindError> {
    let mut listeners = Vec::new();
    for &addr in addrs {
        match listen(what, addr) {
            Ok(listener) => listeners.push(listener),
            Err(error) if addr.is_ipv6() && transport::family_unavailable(&error.source) => {
                tracing::info!(%addr, "no IPv6 in this namespace; not listening on {what} {addr}");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(listeners)
}

fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let error = |source| BindError { what, addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    if addr.is_ipv6() {
        transport::set_ipv6_only(&socket).map_err(error)?;
    }
    socket.bind(addr).map_err(error)?;
    socket.listen(4096).map_err(error)
}

/// A proxy with its listeners bound, ready to run.
pub struct Bound {
    proxy: Proxy,
    outbound: Vec<TcpListener>,
    inbound: Vec<TcpListener>,
    admin: TcpListener,
}

impl Bound {
    pub fn addrs(&self) -> Addrs {
        let addr = |listener: &TcpListener| {
            listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        Addrs {
            outbound: self.outbound.iter().map(addr).collect(),
            inbound: self.inbound.iter().map(addr).collect(),
            admin: addr(&self.admin),
        }
    }

    /// The drain handle: starting it shuts the proxy down gracefully.
    pub fn drain(&self) -> Drain {
        self.proxy.drain.clone()
    }

    /// Serves until `shutdown` resolves or `POST /shutdown` arrives, then
    /// stops accepting and gives open connections the grace period to finish.
    /// Returns how many connections were cut off when the grace ran out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let Bound {
            proxy,
            outbound,
            inbound,
            admin,
        } = self;
        let Proxy {
            config,
            registry,
            tcp,
            readiness,
            drain,
        } = proxy;
        let forwarder = |direction| Forwarder {
            direction,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            metrics: tcp.clone(),
        };
        let admin_task = tokio::spawn(admin::serve(
            admin,
            Admin {
                registry: Arc::new(registry),
                readiness,
                drain: drain.clone(),
            },
        ));
        let mut listeners = tokio::task::JoinSet::new();
        for listener in outbound {
            listeners.spawn(outbound::serve(listener, forwarder(Direction::Outbound), drain.clone()));
        }
        for listener in inbound {
            listeners.spawn(inbound::serve(listener, forwarder(Direction::Inbound), drain.clone()));
        }
        tracing::info!("proxy running");

        tokio::select! {
            _ = shutdown => tracing::info!("shutdown signal received; draining"),
            _ = drain.started() => {},
        }
        drain.start();
        listeners.join_all().await;
        let cut = drain.finish(config.shutdown_grace).await;
        if cut > 0 {
            tracing::warn!(connections = cut, "grace period over; closing remaining connections");
        }
        admin_task.abort();
        cut
    }
}
