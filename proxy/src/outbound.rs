//! The outbound side: connections the pod's applications open, redirected
//! here by iptables. The original destination is resolved through discovery;
//! a Service port's HTTP and gRPC traffic is balanced per request, anything
//! else goes to one endpoint (or, for a non-Service address, where the
//! client asked) as opaque TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use strait_contract::{Chain, PortSet};
use tokio::net::{TcpListener, TcpStream};

use crate::balance::{Backend, Balancer, BalancerContext, Target};
use crate::config::Config;
use crate::connection::{Accepted, Declared, Pipeline};
use crate::discovery::destination::IDLE;
use crate::discovery::{Destination, Resolve, ServicePort};
use crate::drain::Drain;
use crate::endpoint::{Connector, Endpoint};
use crate::http::route::{Backends, Routes};
use crate::listener;
use crate::listener::ConnectionLimit;
use crate::metrics::{Direction, Metrics, RouteLabels, TcpLabels};
use crate::tcp::Forwarder;
use crate::transport::{self, OrigDstError};
use crate::upstream::Address;

/// The outbound proxy: what its listeners share.
pub struct Outbound {
    /// What each address means: a Service port, or an address to pass
    /// through.
    resolve: Arc<dyn Resolve>,
    connector: Connector,
    pipeline: Pipeline,
    opaque_ports: PortSet,
    no_endpoint_wait: Duration,
    /// The application's connections out, across the listeners.
    pub connections: ConnectionLimit,
    /// One balancer per Service port in use, shared by every connection to
    /// it, so upstream connections and load estimates are shared too.
    /// By original destination (ClusterIP:port): a ClusterIP means one
    /// Service port at a time, but a Service made again gets a new one.
    balancers: Mutex<HashMap<SocketAddr, Kept>>,
    /// In tests without iptables, each connection's original destination,
    /// by client address.
    #[cfg(test)]
    pub original_dsts: Option<Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>>,
}

impl Outbound {
    /// The outbound side of a proxy configured so: `resolve` says what
    /// each destination is, `forwarder` and `connector` reach it.
    pub fn new(
        config: &Config,
        resolve: Arc<dyn Resolve>,
        forwarder: Forwarder,
        connector: Connector,
        metrics: Metrics,
    ) -> Self {
        Outbound {
            resolve,
            connector,
            connections: ConnectionLimit::new(
                config.limits.max_connections,
                metrics.tcp.limit_refusals(Direction::Outbound),
            ),
            pipeline: Pipeline {
                direction: Direction::Outbound,
                forwarder,
                metrics,
                limits: config.limits,
            },
            opaque_ports: config.opaque_ports.clone(),
            no_endpoint_wait: config.no_endpoint_wait,
            balancers: Mutex::new(HashMap::new()),
            #[cfg(test)]
            original_dsts: None,
        }
    }

    /// Where the application meant the connection to go.
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
        #[cfg(test)]
        if let Some(nat) = &self.original_dsts {
            let client = stream.peer_addr().map_err(OrigDstError::Unreadable)?;
            let found = nat.lock().unwrap_or_else(PoisonError::into_inner).get(&client).copied();
            return found.ok_or(OrigDstError::NotRedirected(client));
        }
        transport::redirected_dst(stream)
    }

    /// The balancer for connections to `orig_dst`, which discovery says is
    /// `target`: made on first use, and made anew when the address has come
    /// to mean another Service port or another endpoint stream. When one is
    /// made, those no connection has used for [`IDLE`] and none holds, or
    /// whose destination discovery has forgotten, are dropped (letting
    /// discovery forget their destinations in turn).
    fn balancer(&self, orig_dst: SocketAddr, target: &ServicePort) -> Arc<Balancer> {
        let mut balancers = self.balancers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = balancers.get_mut(&orig_dst)
            && kept.balancer.follows(target)
        {
            kept.used = Instant::now();
            return kept.balancer.clone();
        }
        balancers.retain(|_, kept| kept.balancer.is_followed() && !kept.is_idle());
        let context = BalancerContext {
            connector: self.connector.clone(),
            http_metrics: self.pipeline.metrics.http.clone(),
            discovery_metrics: self.pipeline.metrics.discovery.clone(),
            wait: self.no_endpoint_wait,
        };
        let balancer = Arc::new(Balancer::new(target, context));
        balancers.insert(
            orig_dst,
            Kept {
                balancer: balancer.clone(),
                used: Instant::now(),
            },
        );
        balancer
    }

    /// Every balancer's view (see `Balancer::view`), by destination.
    pub fn endpoints_view(&self) -> serde_json::Value {
        let balancers: Vec<Arc<Balancer>> = self
            .balancers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|kept| kept.balancer.clone())
            .collect();
        let mut views: Vec<serde_json::Value> = balancers.iter().map(|b| b.view()).collect();
        views.sort_by(|a, b| a["destination"].as_str().cmp(&b["destination"].as_str()));
        serde_json::json!({"destinations": views})
    }
}

/// A route's backend Service port is reached as a connection to its
/// ClusterIP:port would be: through discovery, by its shared balancer.
impl Backends for Outbound {
    fn target(&self, address: SocketAddr) -> BoxFuture<'_, Option<Target>> {
        Box::pin(async move {
            match self.resolve.resolve(address).await {
                Destination::Service(service_port) => Some(Target::Balanced(self.balancer(address, &service_port))),
                Destination::Passthrough { .. } => None,
            }
        })
    }
}

/// A balancer and when a connection last asked for it.
struct Kept {
    balancer: Arc<Balancer>,
    used: Instant,
}

impl Kept {
    /// Unused for [`IDLE`] and held by no connection.
    fn is_idle(&self) -> bool {
        self.used.elapsed() >= IDLE && Arc::strong_count(&self.balancer) == 1
    }
}

/// Accepts on `listener` until `drain` starts, serving each connection.
pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>, drain: Drain) {
    let connection_drain = drain.clone();
    let limit = outbound.connections.clone();
    listener::serve(listener, drain, limit, move |stream, peer| {
        let (outbound, drain) = (outbound.clone(), connection_drain.clone());
        handle(outbound, stream, peer, drain)
    })
    .await;
}

async fn handle(outbound: Arc<Outbound>, stream: TcpStream, peer: SocketAddr, drain: Drain) {
    transport::tune(&stream);
    let orig_dst = match outbound.original_dst(&stream) {
        Ok(orig_dst) => orig_dst,
        Err(error) => {
            tracing::warn!(client = %peer, error = %Chain(&error), "closing outbound connection");
            return;
        }
    };
    let accepted = match outbound.resolve.resolve(orig_dst).await {
        Destination::Service(service_port) => Accepted {
            stream,
            peer,
            declared: Declared {
                opaque: service_port.opaque || outbound.opaque_ports.contains(orig_dst.port()),
                app_protocol: service_port.app_protocol.clone(),
            },
            labels: TcpLabels::outbound(&service_port.service.namespace, &service_port.service.name),
            target: Target::Balanced(outbound.balancer(orig_dst, &service_port)),
            client_id: None,
            routes: Some(Routes::new(service_port.routes.clone(), outbound.clone())),
        },
        // There, over mutual TLS if it is a meshed pod.
        Destination::Passthrough { peer: identity } => {
            let labels = TcpLabels::outbound("", "");
            let address = Address {
                addr: orig_dst,
                peer: identity,
            };
            let endpoint = Arc::new(Endpoint::new(address, outbound.connector.clone()));
            let route = endpoint.labelled(RouteLabels::from(&labels));
            let backend = Backend::fixed(endpoint, String::new(), outbound.pipeline.metrics.http.clone(), route);
            Accepted {
                stream,
                peer,
                declared: Declared {
                    opaque: outbound.opaque_ports.contains(orig_dst.port()),
                    app_protocol: None,
                },
                labels,
                target: Target::Fixed(Arc::new(backend)),
                client_id: None,
                routes: None,
            }
        }
    };
    outbound.pipeline.serve(accepted, drain).await;
}
