//! TCP connection metrics: `strait_tcp_*`.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use strait_contract::SpiffeId;

use super::Direction;

use crate::detect::{Decided, Protocol};
use crate::relay::{ByteCounters, RelayError};
use crate::transport::ConnectError;

/// A connection's labels: where it goes and who it is from. Built only by
/// [`TcpLabels::outbound`], [`TcpLabels::inbound`] and
/// [`TcpLabels::reached`], from typed values; an unknown part is `""`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Which way the connection goes.
    pub direction: Direction,
    /// The Service's namespace (outbound) or this pod's (inbound).
    pub dst_namespace: String,
    /// The Service, outbound to a Service port.
    pub dst_service: String,
    /// The endpoint's pod once one is connected (outbound), or this pod
    /// (inbound).
    pub dst_pod: String,
    /// The verified identity of the client, for inbound mutual TLS.
    pub client_id: String,
    /// Whether the connection is mutual TLS on the mesh's side.
    pub tls: bool,
}

impl TcpLabels {
    /// An outbound connection to a port of the Service `namespace/service`
    /// (both `""` for an address that is no Service).
    pub fn outbound(namespace: &str, service: &str) -> Self {
        TcpLabels {
            direction: Direction::Outbound,
            dst_namespace: namespace.to_string(),
            dst_service: service.to_string(),
            dst_pod: String::new(),
            client_id: String::new(),
            tls: false,
        }
    }

    /// An inbound connection to this pod (`namespace`/`pod`), over mutual
    /// TLS from `client` when the client proved an identity.
    pub fn inbound(namespace: &str, pod: &str, client: Option<&SpiffeId>) -> Self {
        TcpLabels {
            direction: Direction::Inbound,
            dst_namespace: namespace.to_string(),
            dst_service: String::new(),
            dst_pod: pod.to_string(),
            client_id: client.map(SpiffeId::to_string).unwrap_or_default(),
            tls: client.is_some(),
        }
    }

    /// These labels once connected to `pod` (`""` when the endpoint has
    /// none, or the target is one address), over mutual TLS if `tls`.
    pub fn reached(&self, pod: &str, tls: bool) -> Self {
        let mut labels = self.clone();
        if !pod.is_empty() {
            labels.dst_pod = pod.to_string();
        }
        // Inbound, the client side may already be mutual TLS.
        labels.tls |= tls;
        labels
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides closed in order.
    Ok,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the upstream failed.
    ServerError,
    /// Neither side sent anything for the idle timeout.
    IdleTimeout,
    /// No upstream connection could be made.
    ConnectError,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::ConnectError => "connect_error",
        })
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Decided {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    direction: Direction,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectErrorLabels {
    direction: Direction,
    /// [`ConnectError::reason`]: `refused`, `timeout`, `unreachable`,
    /// `tls`, `no_endpoints` or `other`.
    reason: &'static str,
}

/// TCP connection metrics. Bytes are counted relative to the accepted
/// (client-side) connection: read = from the client, written = to it.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    /// Off, nothing is recorded (see `HttpMetrics::recording`).
    recording: bool,
    open_total: Family<TcpLabels, Counter>,
    close_total: Family<CloseLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    read_bytes: Family<TcpLabels, Counter>,
    write_bytes: Family<TcpLabels, Counter>,
    connect_errors: Family<ConnectErrorLabels, Counter>,
    detections: Family<DetectLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    limit_refusals: Family<DirectionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    /// `plaintext` (strict mode), `not_for_this_pod`, `not_mesh`,
    /// `tls_handshake` or `mesh_header`.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectLabels {
    direction: Direction,
    /// `http1`, `http2` or `opaque`.
    protocol: Protocol,
    /// How it was decided: `detected`, `timeout` (no bytes in time),
    /// `server_first` (the server spoke first), `opaque_port` or
    /// `app_protocol` (no detection at all).
    reason: Decided,
}

impl TcpMetrics {
    /// Registers the `strait_tcp_*` metrics and `strait_protocol_detections` in
    /// `registry` (the root); with `recording` false they stay at zero.
    pub fn register(registry: &mut Registry, recording: bool) -> Self {
        let metrics = TcpMetrics {
            recording,
            ..TcpMetrics::default()
        };
        let tcp = registry.sub_registry_with_prefix("tcp");
        tcp.register("open", "Connections accepted", metrics.open_total.clone());
        tcp.register("close", "Connections closed, by outcome", metrics.close_total.clone());
        tcp.register(
            "open_connections",
            "Connections currently open",
            metrics.open_connections.clone(),
        );
        tcp.register("read_bytes", "Bytes read from clients", metrics.read_bytes.clone());
        tcp.register("write_bytes", "Bytes written to clients", metrics.write_bytes.clone());
        tcp.register(
            "inbound_refusals",
            "Inbound connections refused before reaching the application, by reason",
            metrics.refusals.clone(),
        );
        tcp.register(
            "limit_refusals",
            "Connections closed on arrival because the listener was at its limit (STRAIT_MAX_CONNECTIONS)",
            metrics.limit_refusals.clone(),
        );
        tcp.register(
            "connect_errors",
            "Failed upstream connection attempts, by reason",
            metrics.connect_errors.clone(),
        );
        registry.register(
            "protocol_detections",
            "How each connection's protocol was decided",
            metrics.detections.clone(),
        );
        metrics
    }

    /// Counts an inbound connection refused before it reached the application
    /// (`strait_tcp_inbound_refusals`); `reason` is `plaintext`,
    /// `not_for_this_pod`, `not_mesh`, `tls_handshake` or `mesh_header`.
    pub fn refused_inbound(&self, reason: &'static str) {
        if !self.recording {
            return;
        }
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// The counter of connections a listener closed at its limit.
    pub fn limit_refusals(&self, direction: Direction) -> Counter {
        if !self.recording {
            return Counter::default();
        }
        self.limit_refusals
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    /// Counts a new connection; the returned guard counts its end.
    pub fn opened(&self, labels: TcpLabels) -> ConnectionGuard {
        if self.recording {
            self.open_total.get_or_create(&labels).inc();
            self.open_connections.get_or_create(&labels).inc();
        }
        ConnectionGuard {
            metrics: self.clone(),
            labels,
            outcome: Outcome::Ok,
        }
    }

    /// The byte counters of a connection labelled `labels`: read from the client
    /// (`strait_tcp_read_bytes`) and written to it (`strait_tcp_write_bytes`).
    pub fn byte_counters(&self, labels: &TcpLabels) -> ByteCounters {
        if !self.recording {
            return ByteCounters::default();
        }
        ByteCounters {
            client_to_server: self.read_bytes.get_or_create(labels).clone(),
            server_to_client: self.write_bytes.get_or_create(labels).clone(),
        }
    }

    /// Counts a connection whose protocol was decided, and how.
    pub fn detected(&self, direction: Direction, protocol: Protocol, reason: Decided) {
        if !self.recording {
            return;
        }
        let labels = DetectLabels {
            direction,
            protocol,
            reason,
        };
        self.detections.get_or_create(&labels).inc();
    }

    /// Counts a failed upstream connection attempt by [`ConnectError::reason`]
    /// (`strait_tcp_connect_errors`).
    pub fn connect_failed(&self, direction: Direction, error: &ConnectError) {
        if !self.recording {
            return;
        }
        let labels = ConnectErrorLabels {
            direction,
            reason: error.reason(),
        };
        self.connect_errors.get_or_create(&labels).inc();
    }
}

/// Counts one connection's close, with its outcome, when dropped.
pub struct ConnectionGuard {
    metrics: TcpMetrics,
    labels: TcpLabels,
    outcome: Outcome,
}

impl ConnectionGuard {
    /// The relay ended with `error`.
    pub fn failed(&mut self, error: &RelayError) {
        self.outcome = match error {
            RelayError::Downstream(_) => Outcome::ClientError,
            RelayError::Upstream(_) => Outcome::ServerError,
            RelayError::Idle(_) => Outcome::IdleTimeout,
        };
    }

    /// No upstream connection could be made.
    pub fn connect_failed(&mut self) {
        self.outcome = Outcome::ConnectError;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if !self.metrics.recording {
            return;
        }
        let closed = CloseLabels {
            direction: self.labels.direction,
            outcome: self.outcome,
        };
        self.metrics.close_total.get_or_create(&closed).inc();
        self.metrics.open_connections.get_or_create(&self.labels).dec();
    }
}
