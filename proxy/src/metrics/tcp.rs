//! TCP connection metrics: `strait_tcp_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Direction;

use crate::relay::{ByteCounters, RelayError};
use crate::transport::ConnectError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub dst_namespace: String,
    pub dst_service: String,
    pub dst_pod: String,
    /// The verified identity of the client, for inbound mutual TLS.
    pub client_id: String,
    pub tls: bool,
}

impl TcpLabels {
    pub fn new(direction: Direction) -> Self {
        TcpLabels {
            direction,
            dst_namespace: String::new(),
            dst_service: String::new(),
            dst_pod: String::new(),
            client_id: String::new(),
            tls: false,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    direction: Direction,
    /// `ok`, `client_error`, `server_error` or `idle_timeout`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectErrorLabels {
    direction: Direction,
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
    protocol: &'static str,
    /// How it was decided: `detected`, `timeout` (no bytes in time),
    /// `opaque_port` or `app_protocol` (no detection at all).
    reason: &'static str,
}

impl TcpMetrics {
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
            outcome: "ok",
        }
    }

    pub fn byte_counters(&self, labels: &TcpLabels) -> ByteCounters {
        if !self.recording {
            return ByteCounters::default();
        }
        ByteCounters {
            client_to_server: self.read_bytes.get_or_create(labels).clone(),
            server_to_client: self.write_bytes.get_or_create(labels).clone(),
        }
    }

    pub fn detected(&self, direction: Direction, protocol: &'static str, reason: &'static str) {
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
    outcome: &'static str,
}

impl ConnectionGuard {
    pub fn failed(&mut self, error: &RelayError) {
        self.outcome = match error {
            RelayError::Downstream(_) => "client_error",
            RelayError::Upstream(_) => "server_error",
            RelayError::Idle(_) => "idle_timeout",
        };
    }

    pub fn connect_failed(&mut self) {
        self.outcome = "connect_error";
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
