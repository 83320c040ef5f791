//! Fixed names and numbers from DESIGN.md.

/// The uid and gid the proxy runs as; its own traffic is never redirected.
pub const PROXY_UID: u32 = 2102;
/// The uid and gid the init container runs as (`nobody`): not root, with
/// NET_ADMIN and NET_RAW from the file capabilities of the strait-init image.
pub const INIT_UID: u32 = 65534;

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
    /// `disabled`: the proxy runs without an identity, so neither
    /// originates nor accepts mutual TLS; peers talk plaintext to the pod.
    pub const MTLS: &str = "strait.io/mtls";
    pub const PROXY_CPU_REQUEST: &str = "strait.io/proxy-cpu-request";
    pub const PROXY_CPU_LIMIT: &str = "strait.io/proxy-cpu-limit";
    pub const PROXY_MEMORY_REQUEST: &str = "strait.io/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "strait.io/proxy-memory-limit";
}

/// The container names the injector adds.
pub const PROXY_CONTAINER: &str = "strait-proxy";
pub const INIT_CONTAINER: &str = "strait-init";
/// CNI mode's unprivileged init container (`strait-init --validate`): it
/// carries the same `STRAIT_*` redirect settings as `strait-init`, which is
/// where `strait-cni` reads them.
pub const VALIDATE_CONTAINER: &str = "strait-validate";

/// The chained CNI plugin's binary name and `type` in a conflist.
pub const CNI_PLUGIN: &str = "strait-cni";

/// The audience of the projected token the proxy shows the identity service.
pub const IDENTITY_TOKEN_AUDIENCE: &str = "strait-identity";
/// Where the injected pod mounts that token.
pub const IDENTITY_TOKEN_DIR: &str = "/var/run/secrets/tokens/strait-identity";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

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
    pub const INBOUND_MODE: &str = "STRAIT_INBOUND_MODE";
    /// `true` when the proxy is a regular container, stopped together with
    /// the application: on SIGTERM it serves until the application stopped.
    pub const WAIT_FOR_APP: &str = "STRAIT_WAIT_FOR_APP";
    pub const POD_NAME: &str = "STRAIT_POD_NAME";
    pub const POD_NAMESPACE: &str = "STRAIT_POD_NAMESPACE";
    pub const POD_IP: &str = "STRAIT_POD_IP";
    /// The application ports whose `tcpSocket` probes the injector rewrote
    /// to the proxy's `/app-probe/tcp/<port>`: the only ports it probes.
    pub const APP_PROBE_PORTS: &str = "STRAIT_APP_PROBE_PORTS";
    pub const HOST_IP: &str = "STRAIT_HOST_IP";
    pub const SERVICE_ACCOUNT: &str = "STRAIT_SERVICE_ACCOUNT";
    pub const IDENTITY: &str = "STRAIT_IDENTITY";
    pub const IDENTITY_ADDR: &str = "STRAIT_IDENTITY_ADDR";
    /// `enabled` (the default) or `disabled`: with `disabled` (the pod's
    /// `strait.io/mtls: disabled`), the proxy's certificate serves only to
    /// reach the control plane; its traffic to and from other pods is
    /// plaintext.
    pub const MTLS: &str = "STRAIT_MTLS";
    /// The destination service, `host:port` (DESIGN.md: :8086).
    pub const DESTINATION_ADDR: &str = "STRAIT_DESTINATION_ADDR";
    pub const IDENTITY_TOKEN: &str = "STRAIT_IDENTITY_TOKEN";
    pub const TRUST_DOMAIN: &str = "STRAIT_TRUST_DOMAIN";
    pub const TRUST_ANCHORS: &str = "STRAIT_TRUST_ANCHORS";
}
