//! strait-proxy: the transparent sidecar.
//!
//! The proxy is built from its [`Config`] ([`Proxy::build`]), then binds its
//! listeners ([`Proxy::bind`]), then runs until a shutdown signal
//! ([`Bound::run`]). Other crates see only that, and the two parsers the
//! fuzz targets exercise ([`decide`], [`admit_hello`]); every module is
//! private, so the compiler reports what nothing uses.
//!
//! A connection's way through the modules is one chain
//! (`connection` has the whole path; `tests/module_chain.rs` keeps it
//! free of cycles).

#![warn(missing_docs)]

mod admin;
mod app;
mod balance;
pub mod config;
mod connection;
mod counted;
mod detect;
mod discovery;
mod drain;
mod endpoint;
mod executor;
#[cfg(test)]
mod heap;
mod http;
mod identity;
mod inbound;
mod listener;
mod memory;
mod mesh;
mod metrics;
mod outbound;
mod relay;
mod retry;
mod routes;
mod tcp;
mod throttle;
mod tls;
mod transport;
mod upstream;
mod wire;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use strait_contract::Chain;

use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

pub use config::Config;
pub use detect::decide;
pub use inbound::{Refusal, admit_hello};

use admin::{Admin, AppProbes, Readiness};
use app::Application;
use discovery::destination::DestinationDiscovery;
use discovery::{NoDiscovery, Resolve};
use drain::Drain;
use endpoint::Connector;
use identity::LocalIdentity;
use inbound::Inbound;
use metrics::Metrics;
use outbound::Outbound;
use tcp::Forwarder;

/// A proxy that is configured but not yet listening.
pub struct Proxy {
    config: Config,
    registry: Registry,
    metrics: Metrics,
    readiness: Readiness,
    drain: Drain,
    /// This workload's identity, when mutual TLS is on.
    identity: Option<Arc<LocalIdentity>>,
    /// What a test puts in place of the cluster.
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// Why a proxy cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// This workload's identity cannot be set up (its key, the trust
    /// anchors, TLS for the identity service).
    #[error("identity")]
    Identity(#[from] identity::SetupError),
}

/// A listener that cannot be bound: which one (`outbound`, `inbound`,
/// `admin`), its address, and the socket error.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what})")]
pub struct BindError {
    what: &'static str,
    addr: SocketAddr,
    #[source]
    source: io::Error,
}

impl Proxy {
    /// Registers the metrics and sets up the identity (its key and trust
    /// anchors; the certificate comes once running).
    ///
    /// # Errors
    /// [`BuildError`] when the identity cannot be set up.
    pub fn build(config: Config) -> Result<Self, BuildError> {
        let mut registry = metrics::registry();
        let metrics = Metrics::register(&mut registry, config.metrics);
        let readiness = Readiness::default();
        let identity = match &config.identity {
            None => None,
            Some(settings) => {
                readiness.require(identity::READY_CONDITION);
                let local = LocalIdentity::new(
                    settings.id.clone(),
                    &settings.service,
                    settings.token.clone(),
                    &settings.trust_anchors,
                    &mut registry,
                )?;
                Some(local)
            }
        };
        Ok(Proxy {
            config,
            registry,
            metrics,
            readiness,
            drain: Drain::new(),
            identity,
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        })
    }

    /// Binds the outbound, inbound and admin listeners.
    ///
    /// # Errors
    /// [`BindError`] naming the first listener that cannot be bound.
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
            metrics,
            readiness,
            drain,
            identity,
            #[cfg(test)]
            hooks,
        } = proxy;
        let control_plane_tls = identity.as_ref().map(|identity| identity.tls.clone());
        if let Some(identity) = identity {
            tokio::spawn(identity.run(readiness.clone()));
        }
        // Between pods, mutual TLS only where the pod has not opted out.
        let mesh = control_plane_tls.clone().filter(|_| config.mtls);
        let resolve: Arc<dyn Resolve> = match (&config.destination, &control_plane_tls) {
            (Some(addr), Some(mesh)) => match discovery::destination::channel(addr, mesh.clone()) {
                Ok(channel) => Arc::new(DestinationDiscovery::new(channel, metrics.discovery.clone())),
                Err(error) => {
                    tracing::error!(error = %Chain(&error), "cannot reach the destination service; passing every destination through");
                    Arc::new(NoDiscovery)
                }
            },
            _ => Arc::new(NoDiscovery),
        };
        #[cfg(test)]
        let (resolve, mesh) = (hooks.resolve.unwrap_or(resolve), hooks.mesh.or(mesh));
        let forwarder = Forwarder {
            connect_timeout: config.limits.connect_timeout,
            idle_timeout: config.limits.idle_timeout,
            no_endpoint_wait: config.no_endpoint_wait,
            metrics: metrics.tcp.clone(),
            mesh: mesh.clone(),
        };
        let connector = Connector {
            connect_timeout: config.limits.connect_timeout,
            mesh: mesh.clone(),
            max_header_bytes: config.limits.max_header_bytes,
        };
        #[allow(unused_mut)] // Tests set a field.
        let mut outbound_side = Outbound::new(&config, resolve, forwarder.clone(), connector.clone(), metrics.clone());
        #[cfg(test)]
        {
            outbound_side.original_dsts = hooks.original_dsts;
        }
        let outbound_proxy = Arc::new(outbound_side);
        let inbound_proxy = Arc::new(Inbound::new(&config, forwarder, connector, metrics, mesh));
        let balancers = outbound_proxy.clone();
        let admin_task = tokio::spawn(admin::serve(
            admin,
            Admin {
                registry: Arc::new(registry),
                readiness,
                drain: drain.clone(),
                endpoints: Arc::new(move || balancers.endpoints_view()),
                app_probes: AppProbes {
                    ports: config.app_probe_ports.clone(),
                    ip: config.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    timeout: config.limits.connect_timeout,
                },
            },
        ));
        let mut listeners = tokio::task::JoinSet::new();
        for listener in outbound {
            listeners.spawn(outbound::serve(listener, outbound_proxy.clone(), drain.clone()));
        }
        for listener in inbound {
            listeners.spawn(inbound::serve(listener, inbound_proxy.clone(), drain.clone()));
        }
        let memory_task = tokio::spawn(memory::return_after_bursts(drain.clone()));
        let app = Application::new(
            config
                .outbound_addrs
                .iter()
                .chain(&config.inbound_addrs)
                .chain([&config.admin_addr])
                .map(SocketAddr::port),
            outbound_proxy.connections.clone(),
        );
        tracing::info!("proxy running");

        let deadline = tokio::select! {
            _ = shutdown => {
                let deadline = Instant::now() + config.shutdown_grace;
                if config.wait_for_app {
                    tracing::info!("shutdown signal received; serving until the application has stopped");
                    drain.announce();
                    match tokio::time::timeout_at(deadline, app.stopped()).await {
                        Ok(()) => tracing::info!("the application has stopped; draining"),
                        Err(_) => tracing::warn!("the application still runs at the end of the grace period; draining"),
                    }
                } else {
                    tracing::info!("shutdown signal received; draining");
                }
                deadline
            }
            _ = drain.started() => Instant::now() + config.shutdown_grace,
        };
        drain.start();
        listeners.join_all().await;
        let cut = drain.finish(deadline.saturating_duration_since(Instant::now())).await;
        if cut > 0 {
            tracing::warn!(connections = cut, "grace period over; closing remaining connections");
        }
        admin_task.abort();
        memory_task.abort();
        cut
    }
}

#[cfg(test)]
mod tests;
