//! The outbound side: connections the pod's applications open, redirected
//! here by iptables. The original destination is resolved through discovery;
//! a Service port's HTTP and gRPC traffic is balanced per request, anything
//! else goes to one endpoint (or, for a non-Service address, where the
//! client asked) as opaque TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use strait_contract::Chain;
use strait_contract::PortSet;
use tokio::net::{TcpListener, TcpStream};

use crate::balance::{Backend, Balancer, BalancerContext};
use crate::config::{Config, Limits};
use crate::counted::Counted;
use crate::detect::{self, Opening, Prefixed, Protocol};
use crate::discovery::destination::IDLE;
use crate::discovery::{Destination, Resolve, ServicePort};
use crate::drain::Drain;
use crate::endpoint::{Connector, Endpoint};
use crate::http::route::{Router, Target as RouteTarget};
use crate::listener::ConnectionLimit;
use crate::metrics::{Direction, Metrics, RouteLabels, TcpLabels};
use crate::tcp::{Forwarder, TcpTarget};
use crate::upstream::Target;
use crate::{http, listener, transport};

pub struct Outbound {
    pub resolve: Arc<dyn Resolve>,
    pub forwarder: Forwarder,
    pub connector: Connector,
    pub metrics: Metrics,
    pub opaque_ports: PortSet,
    pub no_endpoint_wait: Duration,
    pub limits: Limits,
    /// The application's connections out, across the listeners.
    pub connections: ConnectionLimit,
    /// One balancer per Service port in use, shared by every connection to
    /// it, so upstream connections and load estimates are shared too.
    /// By original destination (ClusterIP:port): a ClusterIP means one
    /// Service port at a time, but a Service made again gets a new one.
    balancers: Mutex<HashMap<SocketAddr, Kept>>,
}

impl Outbound {
    pub fn new(
        config: &Config,
        resolve: Arc<dyn Resolve>,
        forwarder: Forwarder,
        connector: Connector,
        metrics: Metrics,
    ) -> Self {
        Outbound {
            resolve,
            forwarder,
            connector,
            connections: ConnectionLimit::new(
                config.limits.max_connections,
                metrics.tcp.limit_refusals(Direction::Outbound),
            ),
            metrics,
            opaque_ports: config.opaque_ports.clone(),
            no_endpoint_wait: config.no_endpoint_wait,
            limits: config.limits,
            balancers: Mutex::new(HashMap::new()),
        }
    }

    fn route_labels(target: &ServicePort) -> RouteLabels {
        let mut labels = RouteLabels::new(Direction::Outbound);
        labels.dst_namespace = target.service.namespace.clone();
        labels.dst_service = target.service.name.clone();
        labels
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
            http_metrics: self.metrics.http.clone(),
            discovery_metrics: self.metrics.discovery.clone(),
            wait: self.no_endpoint_wait,
        };
        let balancer = Arc::new(Balancer::new(target, Self::route_labels(target), context));
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

pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>, drain: Drain) {
    let connection_drain = drain.clone();
    let limit = outbound.connections.clone();
    listener::serve(listener, drain, limit, move |stream, peer| {
        let (outbound, drain) = (outbound.clone(), connection_drain.clone());
        async move { handle(outbound, stream, peer, drain).await }
    })
    .await;
}

async fn handle(outbound: Arc<Outbound>, mut stream: TcpStream, peer: SocketAddr, drain: Drain) {
    transport::tune(&stream);
    let orig_dst = match transport::redirected_dst(&stream) {
        Ok(orig_dst) => orig_dst,
        Err(error) => {
            tracing::warn!(client = %peer, error = %Chain(&error), "closing outbound connection");
            return;
        }
    };
    let destination = outbound.resolve.resolve(orig_dst).await;
    let (app_protocol, opaque_service_port) = match &destination {
        Destination::Service(target) => (target.app_protocol.as_deref(), target.opaque),
        Destination::Passthrough { .. } => (None, false),
    };
    let mut labels = TcpLabels::new(Direction::Outbound);
    let tcp_target = match &destination {
        Destination::Service(target) => {
            labels.dst_namespace = target.service.namespace.clone();
            labels.dst_service = target.service.name.clone();
            TcpTarget::Balanced(outbound.balancer(orig_dst, target))
        }
        // There, over mutual TLS if it is a meshed pod.
        Destination::Passthrough { peer } => TcpTarget::Fixed(Target {
            addr: orig_dst,
            peer: peer.clone(),
        }),
    };
    let forwarder = &outbound.forwarder;
    let opening = detect::open(
        &mut stream,
        opaque_service_port || outbound.opaque_ports.contains(orig_dst.port()),
        app_protocol,
        outbound.limits.detect_timeout,
        outbound.limits.detect_buffer,
        || forwarder.connect(&tcp_target, labels.clone()),
    )
    .await;
    let (protocol, io) = match opening {
        Err(error) => {
            tracing::debug!(client = %peer, error = %Chain(&error), "client went away during protocol detection");
            return;
        }
        Ok(Opening::Unreachable { prefix, error }) => {
            forwarder.refuse(Prefixed::new(prefix, stream), peer, labels, &error);
            return;
        }
        Ok(Opening::Decided {
            protocol,
            prefix,
            how,
            upstream,
        }) => {
            outbound
                .metrics
                .tcp
                .detected(Direction::Outbound, protocol.as_str(), how.as_str());
            let io = Prefixed::new(prefix, stream);
            if protocol == Protocol::Opaque {
                match upstream {
                    Some(upstream) => forwarder.relay(io, peer, upstream).await,
                    None => forwarder.forward(io, peer, tcp_target, labels).await,
                }
                return;
            }
            (protocol, io)
        }
    };
    let (target, unrouted) = match tcp_target {
        TcpTarget::Balanced(balancer) => {
            let mut route = RouteLabels::new(Direction::Outbound);
            route.dst_namespace = balancer.service.namespace.clone();
            route.dst_service = balancer.service.name.clone();
            (RouteTarget::Balanced(balancer), outbound.metrics.http.route(route))
        }
        TcpTarget::Fixed(fixed) => {
            let endpoint = Arc::new(Endpoint::new(fixed, outbound.connector.clone()));
            let route = endpoint.labelled(RouteLabels::new(Direction::Outbound));
            let metrics = outbound.metrics.http.route(route);
            (
                RouteTarget::Fixed(Arc::new(Backend::new(endpoint, String::new(), metrics.clone()))),
                metrics,
            )
        }
    };
    let router = Router {
        target,
        unrouted,
        client_id: None,
        direction: Direction::Outbound,
        limits: outbound.limits,
        upgrade_bytes: outbound.metrics.tcp.byte_counters(&labels),
    };
    let _guard = outbound.metrics.tcp.opened(labels.clone());
    let io = Counted::new(io, outbound.metrics.tcp.byte_counters(&labels));
    http::server::serve(io, protocol, Arc::new(router), &outbound.limits, drain).await;
}
