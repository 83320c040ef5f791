//! The inbound side: connections arriving at the pod go on to the
//! application. Plaintext connections were redirected here by iptables and
//! go to their original destination; mesh connections arrive on the inbound
//! port itself, over mutual TLS from a peer proxy, and name the application
//! port in the mesh header. HTTP and gRPC are proxied per request (for
//! metrics and the client identity header), over connections to the
//! application that all clients share.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello};
use strait_contract::{Chain, PortSet, SpiffeId};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::balance::{Backend, Target};
use crate::config::Config;
use crate::connection::{Accepted, Declared, Pipeline};
use crate::drain::Drain;
use crate::endpoint::{Connector, Endpoint};
use crate::listener::ConnectionLimit;
use crate::metrics::{Direction, Metrics, RouteLabels, TcpLabels};
use crate::tcp::{ClientStream, Forwarder};
use crate::throttle::LogThrottle;
use crate::tls::{MESH_ALPN, MeshTls, verify};
use crate::transport::{self, OrigDstError};
use crate::upstream::Address;
use crate::{listener, mesh};

/// The inbound proxy: what its listeners share.
pub struct Inbound {
    connector: Connector,
    pipeline: Pipeline,
    opaque_ports: PortSet,
    /// Connections from clients, across the listeners.
    pub connections: ConnectionLimit,
    pod_namespace: String,
    pod_name: String,
    /// Accepts mesh connections, when this proxy has an identity.
    mesh: Option<Arc<MeshTls>>,
    /// Refuse plaintext from anywhere but the node.
    strict: bool,
    host_ip: Option<IpAddr>,
    /// How long a peer may take over the TLS handshake and mesh header.
    handshake_timeout: Duration,
    /// One connection pool per application port, shared by all clients.
    apps: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
    /// The pool seen through each client identity's metrics.
    backends: Mutex<HashMap<AppClient, Arc<Backend>>>,
}

/// An application port, and the client identity its requests come from.
type AppClient = (SocketAddr, Option<SpiffeId>);

/// How a connection reached the inbound listener.
enum Arrival {
    /// Redirected by iptables: plaintext for the original destination.
    Redirected(SocketAddr),
    /// Addressed to the inbound port itself: a peer proxy's mesh connection.
    Mesh(SocketAddr),
}

/// Why a connection is refused before it reaches the application.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Plaintext from anywhere but the node, in strict mode.
    #[error("plaintext connection refused in strict mode")]
    Plaintext,
    /// A ClientHello naming another server (its SNI, if any).
    #[error("TLS ClientHello for {0:?}, not this workload")]
    NotForThisPod(Option<String>),
    /// A ClientHello without the mesh's ALPN protocol.
    #[error("TLS ClientHello without the mesh protocol (ALPN strait.io/mesh/1)")]
    NotMesh,
    /// The handshake failed (no client certificate, an untrusted one, …).
    #[error("mutual TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    /// The mesh header after the handshake is missing or malformed.
    #[error("bad mesh header")]
    Header(#[source] std::io::Error),
    /// The handshake and header took longer than this.
    #[error("peer took longer than {0:?} to complete the handshake")]
    Timeout(Duration),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Plaintext => "plaintext",
            Refusal::NotForThisPod(_) => "not_for_this_pod",
            Refusal::NotMesh => "not_mesh",
            Refusal::Handshake(_) | Refusal::Timeout(_) => "tls_handshake",
            Refusal::Header(_) => "mesh_header",
        }
    }
}

impl Inbound {
    /// The inbound side of a proxy configured so; `mesh` accepts peer
    /// proxies' mutual TLS when this workload has an identity.
    pub fn new(
        config: &Config,
        forwarder: Forwarder,
        connector: Connector,
        metrics: Metrics,
        mesh: Option<Arc<MeshTls>>,
    ) -> Self {
        Inbound {
            connector,
            connections: ConnectionLimit::new(
                config.limits.max_connections,
                metrics.tcp.limit_refusals(Direction::Inbound),
            ),
            pipeline: Pipeline {
                direction: Direction::Inbound,
                forwarder,
                metrics,
                limits: config.limits,
            },
            opaque_ports: config.opaque_ports.clone(),
            pod_namespace: config.pod_namespace.clone(),
            pod_name: config.pod_name.clone(),
            mesh,
            strict: config.inbound_strict,
            host_ip: config.host_ip,
            handshake_timeout: config.limits.connect_timeout.max(Duration::from_secs(10)),
            apps: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
        }
    }

    /// The labels of a connection to this pod from `client_id`.
    fn labels(&self, client_id: Option<&SpiffeId>) -> TcpLabels {
        TcpLabels::inbound(&self.pod_namespace, &self.pod_name, client_id)
    }

    /// The application at `addr` as `client_id`'s requests reach it: one
    /// connection pool per port, its metrics per client identity.
    fn app(&self, addr: SocketAddr, client_id: Option<&SpiffeId>) -> Arc<Backend> {
        let mut backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        backends
            .entry((addr, client_id.cloned()))
            .or_insert_with(|| {
                let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
                let endpoint = apps
                    .entry(addr)
                    .or_insert_with(|| Arc::new(Endpoint::new(Address { addr, peer: None }, self.connector.clone())))
                    .clone();
                Arc::new(Backend::fixed(
                    endpoint,
                    self.pod_name.clone(),
                    self.pipeline.metrics.http.clone(),
                    RouteLabels::from(&self.labels(client_id)),
                ))
            })
            .clone()
    }

    fn arrival(&self, stream: &TcpStream) -> Result<Arrival, OrigDstError> {
        match transport::redirected_dst(stream) {
            Ok(orig_dst) => Ok(Arrival::Redirected(orig_dst)),
            Err(OrigDstError::NotRedirected(local)) if self.mesh.is_some() => Ok(Arrival::Mesh(local)),
            Err(error) => Err(error),
        }
    }

    /// Whether a plaintext connection from `peer` may reach the application.
    fn admits_plaintext(&self, peer: SocketAddr) -> Result<(), Refusal> {
        if !self.strict || self.mesh.is_none() || Some(peer.ip()) == self.host_ip {
            return Ok(());
        }
        Err(Refusal::Plaintext)
    }

    /// Completes a peer proxy's handshake: returns the TLS stream (boxed,
    /// see [`ClientStream`]), the application address the connection is for
    /// and the client's identity.
    async fn accept_mesh(
        &self,
        mesh: &MeshTls,
        stream: TcpStream,
        local: SocketAddr,
    ) -> Result<
        (
            Box<tokio_rustls::server::TlsStream<TcpStream>>,
            SocketAddr,
            Option<SpiffeId>,
        ),
        Refusal,
    > {
        let handshake = async {
            // Look at the ClientHello before answering it, so a connection
            // meant for another workload, or not from a proxy, is named as such.
            let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
                .await
                .map_err(Refusal::Handshake)?;
            admit_hello(&start.client_hello(), &mesh.identity.server_name())?;
            let mut tls = Box::new(start.into_stream(mesh.server()).await.map_err(Refusal::Handshake)?);
            let port = mesh::read_header(&mut tls).await.map_err(Refusal::Header)?;
            let client_id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| verify::spiffe_ids(leaf).into_iter().next());
            Ok((tls, SocketAddr::new(local.ip(), port), client_id))
        };
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .unwrap_or(Err(Refusal::Timeout(self.handshake_timeout)))
    }
}

/// Whether a ClientHello opens a mesh connection to this workload: it names
/// the workload (`expected`, the SNI its certificate answers to) and offers
/// the mesh protocol.
pub fn admit_hello(hello: &ClientHello<'_>, expected: &str) -> Result<(), Refusal> {
    if hello.server_name() != Some(expected) {
        return Err(Refusal::NotForThisPod(hello.server_name().map(str::to_string)));
    }
    if !hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == MESH_ALPN))
    {
        return Err(Refusal::NotMesh);
    }
    Ok(())
}

static REFUSALS: LogThrottle = LogThrottle::new(5);

/// Accepts on `listener` until `drain` starts, serving each connection.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, drain: Drain) {
    let connection_drain = drain.clone();
    let limit = inbound.connections.clone();
    listener::serve(listener, drain, limit, move |stream, peer| {
        let (inbound, drain) = (inbound.clone(), connection_drain.clone());
        handle(inbound, stream, peer, drain)
    })
    .await;
}

async fn handle(inbound: Arc<Inbound>, stream: TcpStream, peer: SocketAddr, drain: Drain) {
    transport::tune(&stream);
    let arrival = match inbound.arrival(&stream) {
        Ok(arrival) => arrival,
        Err(error) => {
            tracing::warn!(client = %peer, error = %Chain(&error), "closing inbound connection");
            return;
        }
    };
    let refused = |refusal: Refusal| {
        if let Some(suppressed) = REFUSALS.allow() {
            tracing::info!(client = %peer, error = %Chain(&refusal), suppressed, "refusing inbound connection");
        }
        inbound.pipeline.metrics.tcp.refused_inbound(refusal.reason());
    };
    match (arrival, &inbound.mesh) {
        (Arrival::Redirected(orig_dst), _) => match inbound.admits_plaintext(peer) {
            Ok(()) => Box::pin(proxy(&inbound, stream, peer, orig_dst, None, drain)).await,
            Err(refusal) => {
                refused(refusal);
                transport::reset(stream);
            }
        },
        // Boxed, as the pipeline's steps are: a held connection keeps
        // only the state of the step it is in.
        (Arrival::Mesh(local), Some(mesh)) => match Box::pin(inbound.accept_mesh(mesh, stream, local)).await {
            Ok((tls, app, client_id)) => Box::pin(proxy(&inbound, tls, peer, app, client_id, drain)).await,
            Err(refusal) => refused(refusal),
        },
        (Arrival::Mesh(_), None) => {}
    }
}

/// Takes a connection for the application at `app` through the pipeline.
async fn proxy<C: ClientStream + 'static>(
    inbound: &Inbound,
    stream: C,
    peer: SocketAddr,
    app: SocketAddr,
    client_id: Option<SpiffeId>,
    drain: Drain,
) {
    let accepted = Accepted {
        stream,
        peer,
        target: Target::Fixed(inbound.app(app, client_id.as_ref())),
        declared: Declared {
            opaque: inbound.opaque_ports.contains(app.port()),
            app_protocol: None,
        },
        labels: inbound.labels(client_id.as_ref()),
        client_id,
        routes: None,
    };
    inbound.pipeline.serve(accepted, drain).await;
}
