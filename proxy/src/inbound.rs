//! The inbound side: connections arriving at the pod, redirected here by
//! iptables, go on to the application at their original destination. HTTP
//! and gRPC are proxied per request (for metrics and the client identity
//! header), over connections to the application that all clients share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strait_contract::PortSet;
use tokio::net::{TcpListener, TcpStream};

use crate::balance::Backend;
use crate::config::Config;
use crate::counted::Counted;
use crate::detect::{self, Opening, Prefixed, Protocol};
use crate::drain::Drain;
use crate::http::client::{Connector, Endpoint};
use crate::http::route::{Router, Target};
use crate::metrics::{Direction, Metrics, RouteLabels, TcpLabels};
use crate::tcp::{Forwarder, TcpTarget};
use crate::{http, listener, transport};

pub struct Inbound {
    pub forwarder: Forwarder,
    pub connector: Connector,
    pub metrics: Metrics,
    pub detect_timeout: Duration,
    pub opaque_ports: PortSet,
    pub idle_timeout: Duration,
    pub pod_namespace: String,
    pub pod_name: String,
    /// One backend per application port, shared by all clients.
    apps: Mutex<HashMap<SocketAddr, Arc<Backend>>>,
}

impl Inbound {
    pub fn new(config: &Config, forwarder: Forwarder, connector: Connector, metrics: Metrics) -> Self {
        Inbound {
            forwarder,
            connector,
            metrics,
            detect_timeout: config.detect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            idle_timeout: config.idle_timeout,
            pod_namespace: config.pod_namespace.clone(),
            pod_name: config.pod_name.clone(),
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn route_labels(&self) -> RouteLabels {
        let mut labels = RouteLabels::new(Direction::Inbound);
        labels.dst_namespace = self.pod_namespace.clone();
        labels.dst_pod = self.pod_name.clone();
        labels
    }

    fn app(&self, addr: SocketAddr) -> Arc<Backend> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.entry(addr)
            .or_insert_with(|| {
                let endpoint = Arc::new(Endpoint::new(addr, self.connector.clone()));
                Arc::new(Backend::new(
                    endpoint,
                    self.pod_name.clone(),
                    self.metrics.http.route(self.route_labels()),
                ))
            })
            .clone()
    }
}

pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, drain: Drain) {
    let connection_drain = drain.clone();
    listener::serve(listener, drain, move |stream, peer| {
        let (inbound, drain) = (inbound.clone(), connection_drain.clone());
        async move { handle(inbound, stream, peer, drain).await }
    })
    .await;
}

async fn handle(inbound: Arc<Inbound>, mut stream: TcpStream, peer: SocketAddr, drain: Drain) {
    transport::tune(&stream);
    let orig_dst = match transport::redirected_dst(&stream) {
        Ok(orig_dst) => orig_dst,
        Err(error) => {
            tracing::warn!(client = %peer, %error, "closing inbound connection");
            return;
        }
    };
    let mut labels = TcpLabels::new(Direction::Inbound);
    labels.dst_namespace = inbound.pod_namespace.clone();
    labels.dst_pod = inbound.pod_name.clone();
    let (forwarder, app) = (&inbound.forwarder, TcpTarget::Fixed(orig_dst));
    let opening = detect::open(
        &mut stream,
        orig_dst.port(),
        &inbound.opaque_ports,
        None,
        inbound.detect_timeout,
        || forwarder.connect(&app, labels.clone()),
    )
    .await;
    let (protocol, io) = match opening {
        Err(error) => {
            tracing::debug!(client = %peer, %error, "client went away during protocol detection");
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
            inbound
                .metrics
                .tcp
                .detected(Direction::Inbound, protocol.as_str(), how.as_str());
            let io = Prefixed::new(prefix, stream);
            if protocol == Protocol::Opaque {
                match upstream {
                    Some(upstream) => forwarder.relay(io, peer, upstream).await,
                    None => forwarder.forward(io, peer, app, labels).await,
                }
                return;
            }
            (protocol, io)
        }
    };
    let router = Router {
        target: Target::Fixed(inbound.app(orig_dst)),
        unrouted: inbound.metrics.http.route(inbound.route_labels()),
        client_id: None,
        sets_client_id: true,
        idle_timeout: inbound.idle_timeout,
        upgrade_bytes: inbound.metrics.tcp.byte_counters(&labels),
    };
    let _guard = inbound.metrics.tcp.opened(labels.clone());
    let io = Counted::new(io, inbound.metrics.tcp.byte_counters(&labels));
    http::server::serve(io, protocol, Arc::new(router), drain).await;
}
