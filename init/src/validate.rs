//! The validator of CNI mode: with `strait-cni` writing the redirects when
//! the pod's network is set up, the pod needs no privileged init container,
//! but its first container must still make sure the rules are there before
//! the proxy and the application start. Without them the application's
//! traffic would leave the pod unmeshed (no mTLS, no balancing) and nobody
//! would be told; this happens when a pod lands on a node whose plugin is not
//! installed yet.
//!
//! The check needs no privilege: it listens on the proxy's outbound port and
//! connects to an address outside the cluster that no rule skips. With the
//! redirect in place the kernel hands the connection to the listener, which
//! reads back a random token; without it the connection goes nowhere.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long the connection that should be redirected may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Documentation addresses (RFC 5737, RFC 3849): never a real peer, so a
/// connection that reaches one of them was not redirected. IPv4 first; the
/// IPv6 one for pods without IPv4.
const PROBE_ADDRESSES: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
];
const PROBE_PORTS: [u16; 5] = [80, 443, 9, 7, 1];

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(
        "outbound TCP is not redirected to the proxy: a connection to {probe} did not arrive on port \
         {port} ({cause}). strait-cni did not set up this pod's network: is the strait-cni DaemonSet \
         running on this node? Pods created before it was ready must be deleted to be set up again"
    )]
    NotRedirected {
        probe: SocketAddr,
        port: u16,
        cause: String,
    },
    #[error("cannot listen on the proxy's outbound port {port} (is the proxy already running?)")]
    Listen { port: u16, source: std::io::Error },
}

/// What the check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Validated {
    /// A connection to this address came back on the proxy's port.
    Redirected(SocketAddr),
    /// The pod's skip rules (or its routes: an IPv4-only pod that skips all
    /// of IPv4) leave no outbound TCP to redirect: nothing to check.
    NothingRedirected,
}

impl std::fmt::Display for Validated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validated::Redirected(probe) => write!(
                f,
                "outbound TCP reaches the proxy's port (a connection to {probe} came back): the pod's redirects are in place"
            ),
            Validated::NothingRedirected => write!(
                f,
                "the pod's skip-outbound settings leave no outbound TCP to redirect: nothing to check"
            ),
        }
    }
}

/// The destinations the check may connect to, in order: each documentation
/// address the pod's skip rules leave redirected, on the first such port.
pub fn probe_destinations(config: &Config) -> Vec<SocketAddr> {
    let Some(port) = PROBE_PORTS
        .into_iter()
        .find(|&p| !config.skip_outbound_ports.contains(p) && p != config.outbound_port)
    else {
        return Vec::new();
    };
    // One address a family is enough: the others are there for skips.
    let redirected = |a: &IpAddr| !config.skip_outbound_cidrs.iter().any(|c| c.contains(a));
    [true, false]
        .into_iter()
        .filter_map(|v4| PROBE_ADDRESSES.into_iter().find(|a| a.is_ipv4() == v4 && redirected(a)))
        .map(|a| SocketAddr::new(a, port))
        .collect()
}

/// Listens on the proxy's outbound port, on both families where the
/// namespace has IPv6.
fn listen(port: u16) -> Result<TcpListener, ValidateError> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .map_err(|source| ValidateError::Listen { port, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ValidateError::Listen { port, source })?;
    Ok(listener)
}

/// Checks that outbound TCP of this network namespace is redirected to the
/// proxy's outbound port, as `strait-init` or `strait-cni` writes it.
pub fn validate(config: &Config) -> Result<Validated, ValidateError> {
    // A destination the pod has no route to is one it cannot reach with or
    // without the mesh (IPv6 in an IPv4-only pod): not a probe.
    let Some(probe) = probe_destinations(config).into_iter().find(|&probe| routable(probe)) else {
        return Ok(Validated::NothingRedirected);
    };
    let port = config.outbound_port;
    let listener = listen(port)?;
    probe_once(&listener, probe)
        .map(|()| Validated::Redirected(probe))
        .map_err(|e| ValidateError::NotRedirected {
            probe,
            port,
            cause: e.to_string(),
        })
}

/// Whether the namespace has a route to `destination`: connecting a UDP
/// socket looks the route up and sends nothing.
fn routable(destination: SocketAddr) -> bool {
    let local: SocketAddr = match destination {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(local).is_ok_and(|socket| socket.connect(destination).is_ok())
}

/// One probe: connect, send a token, and wait for it on the listener.
fn probe_once(listener: &TcpListener, probe: SocketAddr) -> std::io::Result<()> {
    let token: [u8; 16] = token();
    let mut client = TcpStream::connect_timeout(&probe, TIMEOUT)?;
    client.write_all(&token)?;
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut accepted, _)) => {
                let mut got = [0u8; 16];
                let read = accepted
                    .set_nonblocking(false)
                    .and_then(|()| accepted.set_read_timeout(Some(TIMEOUT)))
                    .and_then(|()| accepted.read_exact(&mut got));
                if read.is_ok() && got == token {
                    return Ok(());
                }
                // Somebody else's connection: keep waiting for ours.
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::TimedOut,
        "the connection was made, but elsewhere: another redirect or a real peer answered",
    ))
}

/// A token no other connection will send: the process id and the time.
fn token() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut token = [0u8; 16];
    token[..4].copy_from_slice(&std::process::id().to_be_bytes());
    token[4..].copy_from_slice(&nanos.to_be_bytes()[4..]);
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;

    fn config(cidrs: &str, ports: &str) -> Config {
        Config::from_args(
            Args {
                skip_outbound_cidrs: Some(cidrs.into()),
                skip_outbound_ports: Some(ports.into()),
                ..Args::default()
            },
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn probes_avoid_what_the_pod_skips_and_an_all_skipping_pod_has_none() {
        let shown = |c: &Config| {
            probe_destinations(c)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(shown(&config("", "")), ["192.0.2.1:80", "[2001:db8::1]:80"]);
        assert_eq!(
            shown(&config("192.0.2.0/24", "80")),
            ["198.51.100.1:443", "[2001:db8::1]:443"]
        );
        assert_eq!(shown(&config("0.0.0.0/0", "")), ["[2001:db8::1]:80"]);
        assert!(probe_destinations(&config("0.0.0.0/0,::/0", "")).is_empty());
        assert!(probe_destinations(&config("", "1-65535")).is_empty());
    }
}
