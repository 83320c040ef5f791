//! One accepted connection's way through the proxy, the same in both
//! directions: `inbound`/`outbound` accept it and say where it goes
//! ([`Accepted`]), then [`Pipeline::serve`] takes it through protocol
//! detection to the opaque relay (`tcp`) or the HTTP router (`http`), which
//! reach endpoints through `balance` and `endpoint`.
//!
//! The whole path, as the modules chain: inbound/outbound → connection →
//! http, tcp → balance → endpoint → upstream → transport, tls.

use std::net::SocketAddr;
use std::sync::Arc;

use ::http::HeaderValue;
use strait_contract::{Chain, SpiffeId};

use crate::balance::Target;
use crate::config::Limits;
use crate::counted::Counted;
use crate::detect::{self, Opening, Prefixed, Protocol};
use crate::drain::Drain;
use crate::http;
use crate::http::route::{Router, Routes};
use crate::metrics::{Direction, Metrics, TcpLabels};
use crate::tcp::{ClientStream, Forwarder};

/// What the destination port says of its protocol, before any byte is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// The port is opaque (the proxy's `STRAIT_OPAQUE_PORTS`, or the
    /// Service's `strait.io/opaque-ports`): bytes are relayed as they come.
    pub opaque: bool,
    /// The Service port's `appProtocol` (`kubernetes.io/h2c`, `http`,
    /// `tcp`, …), which decides without detection when it is one the proxy
    /// knows.
    pub app_protocol: Option<String>,
}

/// A connection accepted in one direction, and what that direction knows of
/// it before reading a byte.
pub struct Accepted<C> {
    /// The client's connection: plain TCP, or mutual TLS from a peer proxy.
    pub stream: C,
    /// The client's address.
    pub peer: SocketAddr,
    /// Where the connection, and each of its requests, goes.
    pub target: Target,
    /// What the destination port declares.
    pub declared: Declared,
    /// The connection's metric labels (see [`TcpLabels::outbound`],
    /// [`TcpLabels::inbound`]).
    pub labels: TcpLabels,
    /// The client's verified identity, inbound over mutual TLS; passed to
    /// the application in the `strait-client-id` header.
    pub client_id: Option<SpiffeId>,
    /// The Gateway API routes of the Service port (outbound to one).
    pub routes: Option<Routes>,
}

/// What every connection of one direction is served with; cheap to share.
#[derive(Clone)]
pub struct Pipeline {
    /// Which way the connections go, for metric labels and the router's headers.
    pub direction: Direction,
    /// Relays opaque connections and refuses those whose target is unreachable.
    pub forwarder: Forwarder,
    /// Where detection outcomes, connections, bytes and requests are counted.
    pub metrics: Metrics,
    /// The detection timeout and buffer, and the HTTP servers' limits.
    pub limits: Limits,
}

impl Pipeline {
    /// Detects the protocol (unless the port declares it), then relays
    /// opaque bytes to the target, or serves HTTP/1 or HTTP/2 with each
    /// request routed to it, until the connection ends or `drain` closes it.
    /// Nothing is returned: failures are logged, counted and passed on to
    /// the client as the protocol allows (a reset, an error response).
    pub async fn serve<C: ClientStream + 'static>(&self, accepted: Accepted<C>, drain: Drain) {
        let Accepted {
            mut stream,
            peer,
            target,
            declared,
            labels,
            client_id,
            routes,
        } = accepted;
        let forwarder = &self.forwarder;
        // Each step's state is boxed, so a connection holds the state of
        // the step it is in, not the size of the largest step (a connection
        // future is as large as its largest state; bench/:
        // "held-connections").
        let opening = Box::pin(detect::open(
            &mut stream,
            declared.opaque,
            declared.app_protocol.as_deref(),
            self.limits.detect_timeout,
            self.limits.detect_buffer,
            || forwarder.connect(&target, labels.clone()),
        ))
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
                self.metrics.tcp.detected(self.direction, protocol, how);
                let io = Prefixed::new(prefix, stream);
                if protocol == Protocol::Opaque {
                    match upstream {
                        Some(upstream) => Box::pin(forwarder.relay(io, peer, upstream)).await,
                        None => Box::pin(forwarder.forward(io, peer, target, labels)).await,
                    }
                    return;
                }
                (protocol, io)
            }
        };
        let client_id = client_id.and_then(|id| HeaderValue::try_from(id.to_string()).ok());
        let router = Router {
            unrouted: target.unrouted(),
            target,
            client_id,
            direction: self.direction,
            limits: self.limits,
            routes,
        };
        let _guard = self.metrics.tcp.opened(labels.clone());
        let io = Counted::new(io, self.metrics.tcp.byte_counters(&labels));
        Box::pin(http::server::serve(io, protocol, Arc::new(router), &self.limits, drain)).await;
    }
}
