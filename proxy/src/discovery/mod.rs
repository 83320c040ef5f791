//! Service discovery, behind one small interface: an original destination
//! goes in, and either a Service port with a live endpoint set, or
//! "passthrough" (not a Service: go where the client asked), comes out.
//!
//! The source is the control plane's destination service ([`destination`]),
//! which watches the Kubernetes API once for every proxy; the proxy itself
//! never talks to the API server.

pub mod destination;
pub mod endpoints;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use strait_contract::SpiffeId;
use tokio::sync::watch;

use crate::routes::Table;

pub use endpoints::{Endpoint, EndpointSet, TargetRef};

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

/// A Service port that traffic was addressed to.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// The Service the port belongs to.
    pub service: ServiceRef,
    /// The port number, as the Service declares it.
    pub port: u16,
    /// The port's `appProtocol`, such as `kubernetes.io/h2c` or `tcp`.
    pub app_protocol: Option<String>,
    /// The Service declares the port opaque (its `strait.io/opaque-ports`
    /// annotation): no protocol detection, bytes relayed as they come.
    pub opaque: bool,
    /// The port's endpoints, updated as EndpointSlices change.
    pub endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// The Gateway API routes that apply to this proxy's requests to the
    /// port, updated as routes change (empty: not routed).
    pub routes: watch::Receiver<Arc<Table>>,
}

/// What an original destination turned out to be.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A Service port: its requests and connections are balanced over its endpoints.
    Service(ServicePort),
    /// Not a Service address (a pod IP, a headless Service's endpoint, or
    /// something outside the cluster): connect to it as addressed.
    Passthrough {
        /// The SPIFFE ID to require there, when the address is a meshed
        /// pod's.
        peer: Option<SpiffeId>,
    },
}

/// Tells what an original destination is: a Service port or passthrough.
pub trait Resolve: Send + Sync + 'static {
    /// What `orig_dst` (the `ip:port` the client connected to, before the
    /// redirect) is. Never fails: a destination that cannot be told in time is
    /// passed through.
    fn resolve(&self, orig_dst: SocketAddr) -> BoxFuture<'_, Destination>;
}

/// No discovery at all (the proxy runs outside Kubernetes): every
/// destination is passed through.
pub struct NoDiscovery;

impl Resolve for NoDiscovery {
    fn resolve(&self, _: SocketAddr) -> BoxFuture<'_, Destination> {
        Box::pin(std::future::ready(Destination::Passthrough { peer: None }))
    }
}
