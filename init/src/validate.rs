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

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long the connection that should be redirected may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Documentation addresses (RFC 5737): never a real peer, so a connection
/// that reaches one of them was not redirected.
const PROBE_ADDRESSES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 1),
];

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
    #[error("cannot listen on the proxy's outbound port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error(
        "every probe address is skipped by the pod's outbound rules (skip-outbound-cidrs/ports), so the \
         redirect cannot be checked: {0}"
    )]
    NothingToProbe(String),
}

/// The destination the check connects to: the first documentation address
/// and port that the pod's skip rules leave redirected.
pub fn probe_destination(config: &Config) -> Result<SocketAddr, ValidateError> {
    let address = PROBE_ADDRESSES
        .iter()
        .map(|&a| IpAddr::V4(a))
        .find(|a| !config.skip_outbound_cidrs.iter().any(|c| c.contains(a)));
    let port = [80u16, 443, 9, 7, 1]
        .into_iter()
        .find(|&p| !config.skip_outbound_ports.contains(p) && p != config.outbound_port);
    match (address, port) {
        (Some(address), Some(port)) => Ok(SocketAddr::new(address, port)),
        _ => Err(ValidateError::NothingToProbe(format!(
            "addresses {PROBE_ADDRESSES:?}, ports 80, 443, 9, 7, 1"
        ))),
    }
}

/// Checks that outbound TCP of this network namespace is redirected to the
/// proxy's outbound port, as `strait-init` or `strait-cni` writes it.
pub fn validate(config: &Config) -> Result<(), ValidateError> {
    let probe = probe_destination(config)?;
    let port = config.outbound_port;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|source| ValidateError::Listen { port, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ValidateError::Listen { port, source })?;
    let not_redirected = |cause: String| ValidateError::NotRedirected { probe, port, cause };
    let token: [u8; 16] = rand_token();
    let mut client = TcpStream::connect_timeout(&probe, TIMEOUT).map_err(|e| not_redirected(e.to_string()))?;
    client.write_all(&token).map_err(|e| not_redirected(e.to_string()))?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((mut accepted, _)) => {
                let mut got = [0u8; 16];
                accepted
                    .set_nonblocking(false)
                    .and_then(|()| accepted.set_read_timeout(Some(TIMEOUT)))
                    .and_then(|()| accepted.read_exact(&mut got))
                    .map_err(|e| not_redirected(format!("reading the probe: {e}")))?;
                if got == token {
                    return Ok(());
                }
                // Somebody else's connection: keep waiting for ours.
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(not_redirected(e.to_string())),
        }
        if Instant::now() >= deadline {
            return Err(not_redirected(
                "the connection was made, but elsewhere: another redirect or a real peer answered".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A token no other connection will send: the process id and the time.
fn rand_token() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut token = [0u8; 16];
    token[..4].copy_from_slice(&std::process::id().to_be_bytes());
    token[4..].copy_from_slice(&nanos.to_be_bytes()[4..]);
    token
}
