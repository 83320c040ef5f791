//! Fixed names and numbers from DESIGN.md.

/// The uid and gid the proxy runs as; its own traffic is never redirected.
pub const PROXY_UID: u32 = 2102;

/// Where iptables sends the pod's outgoing TCP.
pub const OUTBOUND_PORT: u16 = 4140;
/// Where iptables sends TCP arriving at the pod.
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's admin server: `/metrics`, `/ready`, `/live`, `/shutdown`.
pub const ADMIN_PORT: u16 = 4191;

/// Ports that carry server-speaks-first or otherwise undetectable protocols.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// Namespace label that turns injection on.
pub const INJECT_LABEL: &str = "strait.io/inject";
/// Pod label the injector adds to a meshed pod.
pub const MESHED_LABEL: &str = "strait.io/meshed";

/// Pod annotations.
pub mod annotations {
    pub const INJECT: &str = "strait.io/inject";
    pub const IDENTITY: &str = "strait.io/identity";
    pub const SKIP_INBOUND_PORTS: &str = "strait.io/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "strait.io/skip-outbound-ports";
    pub const SKIP_OUTBOUND_CIDRS: &str = "strait.io/skip-outbound-cidrs";
    pub const OPAQUE_PORTS: &str = "strait.io/opaque-ports";
    pub const PROXY_LOG_LEVEL: &str = "strait.io/proxy-log-level";
    pub const INBOUND_MODE: &str = "strait.io/inbound-mode";
}

/// Environment variables, as the injector writes them into the pod spec.
pub mod env {
    pub const SKIP_INBOUND_PORTS: &str = "STRAIT_SKIP_INBOUND_PORTS";
    pub const SKIP_OUTBOUND_PORTS: &str = "STRAIT_SKIP_OUTBOUND_PORTS";
    pub const SKIP_OUTBOUND_CIDRS: &str = "STRAIT_SKIP_OUTBOUND_CIDRS";
    pub const OPAQUE_PORTS: &str = "STRAIT_OPAQUE_PORTS";
    pub const LOG_LEVEL: &str = "STRAIT_LOG_LEVEL";
    pub const PROXY_UID: &str = "STRAIT_PROXY_UID";
    pub const INBOUND_PORT: &str = "STRAIT_INBOUND_PORT";
    pub const OUTBOUND_PORT: &str = "STRAIT_OUTBOUND_PORT";
    pub const ADMIN_PORT: &str = "STRAIT_ADMIN_PORT";
    pub const IPTABLES_MODE: &str = "STRAIT_IPTABLES_MODE";
    pub const IPV6: &str = "STRAIT_IPV6";
}
