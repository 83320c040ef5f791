//! Socket-level operations: the original destination of a redirected
//! connection, upstream connects, and socket options. Everything that talks to
//! the OS below tokio lives here.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

/// Why an upstream connection could not be made; [`ConnectError::reason`]
/// is its metric label. Causes are kept as `source`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint answered with a reset (nothing listens there).
    #[error("connection to {addr} refused")]
    Refused {
        /// The address connected to: the endpoint's, or for a meshed
        /// endpoint its proxy's inbound port.
        addr: SocketAddr,
    },
    /// No connection (or mutual TLS handshake) within `timeout`.
    #[error("connection to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The address connected to.
        addr: SocketAddr,
        /// The time allowed (`STRAIT_CONNECT_TIMEOUT`).
        timeout: Duration,
    },
    /// Any other socket error.
    #[error("connection to {addr} failed")]
    Other {
        /// The address connected to.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A Service port had no ready endpoint within the wait.
    #[error("{target} has no ready endpoint")]
    NoEndpoints {
        /// The Service port, as `namespace/name:port`.
        target: String,
    },
    /// The connection to the peer proxy of the meshed endpoint `addr` was
    /// made, but mutual TLS with `peer` (its SPIFFE ID) or the mesh header
    /// after it failed.
    #[error("mutual TLS with {peer} at {addr} failed")]
    Tls {
        /// The endpoint's address (`ip:port`).
        addr: SocketAddr,
        /// The SPIFFE ID expected there.
        peer: String,
        /// The TLS error, or the mesh header's write error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ConnectError {
    /// A short stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Refused { .. } => "refused",
            ConnectError::NoEndpoints { .. } => "no_endpoints",
            ConnectError::Tls { .. } => "tls",
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::Other { source, .. } => match source.kind() {
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
                _ => "other",
            },
        }
    }
}

/// Why a connection has no usable original destination.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The socket's original destination (`SO_ORIGINAL_DST`,
    /// `IP6T_SO_ORIGINAL_DST`) or local address cannot be read.
    #[error("cannot read the original destination")]
    Unreadable(#[from] io::Error),
    /// The connection was made straight to the listener, not redirected to
    /// it; forwarding it to its "original destination" would loop.
    #[error("connection was not redirected: it is addressed to the proxy itself at {0}")]
    NotRedirected(SocketAddr),
}

/// The destination the client asked for before iptables redirected it here.
///
/// # Errors
/// [`OrigDstError::Unreadable`] when the socket's addresses cannot be read,
/// [`OrigDstError::NotRedirected`] when the connection is addressed to the
/// listener itself.
pub fn redirected_dst(stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
    let target = match original_dst(stream) {
        Ok(target) => target,
        // No connection-tracking entry (ENOENT), or no connection tracking
        // in this network namespace (ENOPROTOOPT): no NAT rule redirected
        // the connection, which was made to the listener itself.
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOPROTOOPT)) => {
            return Err(OrigDstError::NotRedirected(stream.local_addr()?));
        }
        Err(error) => return Err(error.into()),
    };
    if target == stream.local_addr()? {
        return Err(OrigDstError::NotRedirected(target));
    }
    Ok(target)
}

#[cfg(target_os = "linux")]
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    match stream.local_addr()? {
        SocketAddr::V4(_) => {
            let raw = getsockopt(stream, sockopt::OriginalDst)?;
            let ip = Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
            Ok(SocketAddrV4::new(ip, u16::from_be(raw.sin_port)).into())
        }
        SocketAddr::V6(_) => {
            let raw = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            let ip = Ipv6Addr::from(raw.sin6_addr.s6_addr);
            // The flow label is the packet's, not the destination's: left
            // in, the same address would compare unequal between connections
            // (and miss discovery's and the balancers' maps).
            Ok(SocketAddrV6::new(ip, u16::from_be(raw.sin6_port), 0, raw.sin6_scope_id).into())
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    stream.local_addr()
}

/// Options for every relayed socket: no Nagle delay (the proxy must not add
/// latency to small writes) and keepalives so a vanished peer is noticed.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Whether a bind error means the address family is not configured here.
pub fn family_unavailable(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::AddrNotAvailable || error.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)
}

/// Keeps an IPv6 listener to IPv6, so each family has its own listener and
/// original-destination lookups never see IPv4-mapped addresses.
///
/// # Errors
/// The error of `setsockopt(IPV6_V6ONLY)`.
pub fn set_ipv6_only(socket: &TcpSocket) -> io::Result<()> {
    SockRef::from(socket).set_only_v6(true)
}

/// Connects to `addr`, giving up after `timeout`.
///
/// # Errors
/// [`ConnectError::Timeout`] after `timeout`, [`ConnectError::Refused`] on
/// a reset, [`ConnectError::Other`] for any other socket error.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|source| ConnectError::Other { addr, source })?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) if source.kind() == io::ErrorKind::ConnectionRefused => Err(ConnectError::Refused { addr }),
        Ok(Err(source)) => Err(ConnectError::Other { addr, source }),
        Ok(Ok(stream)) => {
            tune(&stream);
            Ok(stream)
        }
    }
}

/// Closes with a TCP reset instead of a FIN, so the client learns at once
/// that its connection failed rather than seeing an orderly end of stream.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// With or without connection tracking in the namespace, a connection
    /// made to the listener itself is named so (not an unreadable socket).
    #[tokio::test]
    async fn a_connection_made_to_the_listener_is_not_redirected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        match redirected_dst(&accepted) {
            Err(OrigDstError::NotRedirected(local)) => assert_eq!(local, addr),
            other => panic!("expected NotRedirected({addr}), got {other:?}"),
        }
    }
}
