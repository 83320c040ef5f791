//! The proxy's settings, read from `STRAIT_*` variables as the injector
//! writes them. Every setting has a default; a bad value is an error that
//! names the variable and the value.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use strait_contract::limits::Limits;
pub use strait_contract::limits::env::{
    CONNECT_TIMEOUT, DETECT_BUFFER, DETECT_TIMEOUT, HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONCURRENT_STREAMS,
    MAX_CONNECTIONS, MAX_HEADER_BYTES,
};
use strait_contract::logging::{self, LogFormat};
use strait_contract::names::{self, env};
use strait_contract::{PortSet, Setting, SettingError, SpiffeId, format_duration};

/// The outbound listeners' addresses, comma-separated `ip:port`.
pub const OUTBOUND_ADDRS: &str = "STRAIT_OUTBOUND_ADDRS";
/// The inbound listeners' addresses, comma-separated `ip:port`.
pub const INBOUND_ADDRS: &str = "STRAIT_INBOUND_ADDRS";
/// The admin server's `ip:port`.
pub const ADMIN_ADDR: &str = "STRAIT_ADMIN_ADDR";
/// A duration (`30s`): how long open connections may finish after SIGTERM.
pub const SHUTDOWN_GRACE: &str = "STRAIT_SHUTDOWN_GRACE";
/// A tracing filter directive.
pub const LOG_LEVEL: &str = env::LOG_LEVEL;
/// A duration: how long a request waits for a Service's ready endpoint.
pub const NO_ENDPOINT_WAIT: &str = "STRAIT_NO_ENDPOINT_WAIT";
/// `off` stops recording metrics, to measure what they cost.
pub const METRICS: &str = "STRAIT_METRICS";
/// A count of threads serving traffic (default 1).
pub const WORKER_THREADS: &str = "STRAIT_WORKER_THREADS";

/// Everything the proxy is configured with; see [`Config::from_env`] for
/// the variables and their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where iptables redirects the pod's outgoing TCP, one listener per
    /// address family (IPv6 ones are skipped where the pod has no IPv6).
    pub outbound_addrs: Vec<SocketAddr>,
    /// Where iptables redirects TCP arriving at the pod.
    pub inbound_addrs: Vec<SocketAddr>,
    /// `/metrics`, `/ready`, `/live`, `/shutdown`.
    pub admin_addr: SocketAddr,
    /// After SIGTERM, how long open connections may take to finish.
    pub shutdown_grace: Duration,
    /// Whether SIGTERM comes together with the application's (the proxy is
    /// a regular container): then the proxy serves until it has stopped.
    pub wait_for_app: bool,
    /// A tracing filter directive such as `info` or `strait_proxy=debug`.
    pub log_level: String,
    /// `STRAIT_LOG_FORMAT`: text or json lines.
    pub log_format: LogFormat,
    /// Threads serving traffic. One by default: a sidecar shares its pod's
    /// CPU with the app, and a single thread never pays for waking another;
    /// a pod whose proxy needs more than a core can raise it.
    pub worker_threads: usize,
    /// Ports whose traffic is never inspected: the defaults and STRAIT_OPAQUE_PORTS.
    pub opaque_ports: PortSet,
    /// How long a request waits for a Service to have a ready endpoint.
    pub no_endpoint_wait: Duration,
    /// The destination service (`host:port`) that discovery asks; without
    /// it every destination is passed through as addressed. It needs the
    /// identity: the service answers only clients with a mesh certificate.
    pub destination: Option<String>,
    /// Whether to record metrics (`STRAIT_METRICS=on|off`, default on).
    pub metrics: bool,
    /// The pod's name (`STRAIT_POD_NAME`), for inbound metric labels.
    pub pod_name: String,
    /// The pod's namespace (`STRAIT_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// This workload's identity and where to get certificates.
    pub identity: Option<IdentityConfig>,
    /// Whether the identity also secures traffic between pods (`STRAIT_MTLS=
    /// enabled|disabled`, default enabled); disabled, it serves only to reach
    /// the control plane (the destination service).
    pub mtls: bool,
    /// Strict refuses plaintext inbound connections (the kubelet's, from
    /// the host, excepted); permissive accepts them.
    pub inbound_strict: bool,
    /// The node's address, where the kubelet's probes come from.
    pub host_ip: Option<IpAddr>,
    /// The pod's address, where the application listens (`STRAIT_POD_IP`).
    pub pod_ip: Option<IpAddr>,
    /// The application ports the admin server probes for the kubelet
    /// (`STRAIT_APP_PROBE_PORTS`, written by the injector).
    pub app_probe_ports: PortSet,
    /// What one client may hold of the proxy at once, and for how long.
    pub limits: Limits,
}

/// This workload's identity, when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Its SPIFFE ID (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    pub id: SpiffeId,
    /// host:port of the identity service.
    pub service: String,
    /// The projected ServiceAccount token shown to the identity service.
    pub token: PathBuf,
    /// PEM of the trust anchors.
    pub trust_anchors: String,
}

impl Config {
    /// Reads the settings through `env`, so tests can pass a map instead of
    /// the process environment.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let setting = |name: &'static str| Setting::new(name, env(name));
        Ok(Config {
            outbound_addrs: setting(OUTBOUND_ADDRS).parse(
                vec![
                    SocketAddr::from(([127, 0, 0, 1], names::OUTBOUND_PORT)),
                    SocketAddr::from((Ipv6Addr::LOCALHOST, names::OUTBOUND_PORT)),
                ],
                parse_addrs,
            )?,
            inbound_addrs: setting(INBOUND_ADDRS).parse(
                vec![
                    SocketAddr::from(([0, 0, 0, 0], names::INBOUND_PORT)),
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, names::INBOUND_PORT)),
                ],
                parse_addrs,
            )?,
            admin_addr: setting(ADMIN_ADDR).parse(SocketAddr::from(([0, 0, 0, 0], names::ADMIN_PORT)), parse_addr)?,
            shutdown_grace: setting(SHUTDOWN_GRACE).duration(Duration::from_secs(30))?,
            wait_for_app: setting(env::WAIT_FOR_APP).switch(false, "true", "false")?,
            log_level: setting(LOG_LEVEL).parse("info".to_string(), |text| {
                strait_contract::check_log_filter(text).map(|()| text.to_string())
            })?,
            log_format: setting(logging::LOG_FORMAT).parse(LogFormat::Text, LogFormat::parse)?,
            worker_threads: setting(WORKER_THREADS).count(1, 1..=64)?,
            opaque_ports: PortSet::parse(names::DEFAULT_OPAQUE_PORTS).unwrap_or_default().union(
                &setting(env::OPAQUE_PORTS).parse(PortSet::default(), |text| {
                    PortSet::parse(text).map_err(|e| e.to_string())
                })?,
            ),
            no_endpoint_wait: setting(NO_ENDPOINT_WAIT).duration(Duration::from_secs(2))?,
            metrics: setting(METRICS).switch(true, "on", "off")?,
            pod_name: env(env::POD_NAME).unwrap_or_default(),
            pod_namespace: env(env::POD_NAMESPACE).unwrap_or_default(),
            identity: identity(&env)?,
            destination: destination(&env)?,
            mtls: setting(env::MTLS).switch(true, "enabled", "disabled")?,
            inbound_strict: setting(env::INBOUND_MODE).switch(false, "strict", "permissive")?,
            host_ip: setting(env::HOST_IP).parse(None, parse_ip)?,
            pod_ip: setting(env::POD_IP).parse(None, parse_ip)?,
            app_probe_ports: setting(env::APP_PROBE_PORTS).parse(PortSet::default(), |text| {
                PortSet::parse(text).map_err(|e| e.to_string())
            })?,
            limits: limits(&env)?,
        })
    }

    /// One line per setting, for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "outbound={} inbound={} admin={} shutdown_grace={} wait_for_app={} log_level={} opaque_ports={} \
             no_endpoint_wait={} discovery={} identity={} inbound_mode={} metrics={} worker_threads={} \
             app_probe_ports={} pod_ip={} {}",
            list(&self.outbound_addrs),
            list(&self.inbound_addrs),
            self.admin_addr,
            format_duration(self.shutdown_grace),
            self.wait_for_app,
            self.log_level,
            self.opaque_ports,
            format_duration(self.no_endpoint_wait),
            self.destination.as_deref().unwrap_or("off"),
            self.identity
                .as_ref()
                .map_or("off".to_string(), |i| format!("{}@{}", i.id, i.service)),
            if self.inbound_strict { "strict" } else { "permissive" },
            if self.metrics { "on" } else { "off" },
            self.worker_threads,
            self.app_probe_ports,
            self.pod_ip.map_or("-".to_string(), |ip| ip.to_string()),
            self.limits.describe(),
        )
    }
}

fn limits(env: &impl Fn(&str) -> Option<String>) -> Result<Limits, SettingError> {
    Limits::from_env(|name| env(name).map(|value| (name.to_string(), value)))
}

fn parse_ip(text: &str) -> Result<Option<IpAddr>, String> {
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| "expected an IP address".to_string())
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The destination service's address, which needs the identity to be on.
fn destination(env: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, SettingError> {
    let Some(service) = env(env::DESTINATION_ADDR).filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    if env(env::IDENTITY_ADDR).is_none_or(|s| s.trim().is_empty()) {
        return Err(SettingError::new(
            env::DESTINATION_ADDR,
            service,
            format!(
                "needs {}: the destination service answers only proxies with a mesh certificate",
                env::IDENTITY_ADDR
            ),
        ));
    }
    Ok(Some(service.trim().to_string()))
}

/// Identity is on when the identity service's address is set; then the
/// identity and trust anchors must be too.
fn identity(env: &impl Fn(&str) -> Option<String>) -> Result<Option<IdentityConfig>, SettingError> {
    let Some(service) = env(env::IDENTITY_ADDR).filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let required = |name: &'static str| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| SettingError::new(name, "", format!("required when {} is set", env::IDENTITY_ADDR)))
    };
    let raw_id = required(env::IDENTITY)?;
    let id = raw_id
        .trim()
        .parse()
        .map_err(|e: strait_contract::SpiffeIdError| SettingError::new(env::IDENTITY, raw_id.clone(), e.to_string()))?;
    Ok(Some(IdentityConfig {
        id,
        service: service.trim().to_string(),
        token: env(env::IDENTITY_TOKEN)
            .unwrap_or_else(|| format!("{}/token", strait_contract::names::IDENTITY_TOKEN_DIR))
            .into(),
        trust_anchors: required(env::TRUST_ANCHORS)?,
    }))
}

/// An address with its port, such as `0.0.0.0:4143`.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected an address and port such as 0.0.0.0:4143".to_string())
}

/// Addresses with their ports, separated by commas.
fn parse_addrs(text: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = text
        .split(',')
        .map(|item| item.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| "expected addresses with ports such as 127.0.0.1:4140,[::1]:4140".to_string())?;
    if addrs.is_empty() {
        return Err("expected at least one address".to_string());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, SettingError> {
        Config::from_env(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn defaults_are_the_design_ports() {
        let config = from(&[]).unwrap();
        assert_eq!(list(&config.outbound_addrs), "127.0.0.1:4140,[::1]:4140");
        assert_eq!(list(&config.inbound_addrs), "0.0.0.0:4143,[::]:4143");
        assert_eq!(config.admin_addr.to_string(), "0.0.0.0:4191");
    }

    #[test]
    fn values_are_read() {
        let config = from(&[(CONNECT_TIMEOUT, "250ms"), (ADMIN_ADDR, "127.0.0.1:9000")]).unwrap();
        assert_eq!(config.limits.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.admin_addr.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn opaque_ports_add_to_the_defaults_and_discovery_needs_the_identity() {
        let config = from(&[("STRAIT_OPAQUE_PORTS", "7000-7010,9999")]).unwrap();
        assert!(
            config.opaque_ports.contains(3306)
                && config.opaque_ports.contains(7005)
                && config.opaque_ports.contains(9999)
        );
        assert_eq!(from(&[]).unwrap().destination, None);
        let error = from(&[("STRAIT_DESTINATION_ADDR", "dst:8086")]).unwrap_err();
        assert!(error.to_string().contains("STRAIT_IDENTITY_ADDR"), "{error}");
        let config = from(&[
            ("STRAIT_DESTINATION_ADDR", "dst:8086"),
            ("STRAIT_IDENTITY_ADDR", "id:8083"),
            ("STRAIT_IDENTITY", "spiffe://cluster.local/ns/demo/sa/web"),
            ("STRAIT_TRUST_ANCHORS", "PEM"),
        ])
        .unwrap();
        assert_eq!(config.destination.as_deref(), Some("dst:8086"));
    }

    #[test]
    fn mutual_tls_between_pods_is_on_unless_disabled() {
        assert!(from(&[]).unwrap().mtls);
        assert!(from(&[("STRAIT_MTLS", "enabled")]).unwrap().mtls);
        assert!(!from(&[("STRAIT_MTLS", "disabled")]).unwrap().mtls);
        let error = from(&[("STRAIT_MTLS", "off")]).unwrap_err();
        assert_eq!(error.name, "STRAIT_MTLS");
    }

    #[test]
    fn identity_is_all_or_nothing() {
        assert_eq!(from(&[]).unwrap().identity, None);
        let error = from(&[("STRAIT_IDENTITY_ADDR", "id:8083")]).unwrap_err();
        assert_eq!(error.name, "STRAIT_IDENTITY");
        let error = from(&[
            ("STRAIT_IDENTITY_ADDR", "id:8083"),
            ("STRAIT_IDENTITY", "web"),
            ("STRAIT_TRUST_ANCHORS", "x"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("invalid SPIFFE ID"), "{error}");
        let config = from(&[
            ("STRAIT_IDENTITY_ADDR", "id:8083"),
            ("STRAIT_IDENTITY", "spiffe://cluster.local/ns/demo/sa/web"),
            ("STRAIT_TRUST_ANCHORS", "PEM"),
            ("STRAIT_INBOUND_MODE", "strict"),
        ])
        .unwrap();
        assert_eq!(config.identity.unwrap().service, "id:8083");
        assert!(config.inbound_strict);
    }

    #[test]
    fn limits_have_safe_defaults_and_bad_ones_are_named() {
        assert_eq!(from(&[]).unwrap().limits, Limits::default());
        let config = from(&[(MAX_CONNECTIONS, "500"), (MAX_HEADER_BYTES, "16384")]).unwrap();
        assert_eq!(config.limits.max_connections, 500);
        assert_eq!(config.limits.max_header_bytes, 16384);
        let error = from(&[(MAX_CONCURRENT_STREAMS, "0")]).unwrap_err();
        assert_eq!(error.name, MAX_CONCURRENT_STREAMS);
        assert!(error.problem.contains("from 1 to 65536"), "{error}");
        assert_eq!(from(&[(DETECT_BUFFER, "lots")]).unwrap_err().name, DETECT_BUFFER);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let error = from(&[(IDLE_TIMEOUT, "forever")]).unwrap_err();
        assert_eq!(error.name, IDLE_TIMEOUT);
        assert!(
            error
                .to_string()
                .starts_with("STRAIT_IDLE_TIMEOUT=\"forever\": invalid duration")
        );
        let error = from(&[(INBOUND_ADDRS, "4143")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "STRAIT_INBOUND_ADDRS=\"4143\": expected addresses with ports such as 127.0.0.1:4140,[::1]:4140"
        );
    }
}
