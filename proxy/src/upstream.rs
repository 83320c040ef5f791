//! Connecting to an upstream: plain TCP, or, for a meshed endpoint, mutual
//! TLS to the peer proxy followed by the mesh header.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use strait_contract::SpiffeId;
use strait_contract::names::INBOUND_PORT;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::mesh;
use crate::tls::MeshTls;
use crate::transport::{self, ConnectError};

/// An upstream connection.
pub enum Io {
    /// Plain TCP to the endpoint.
    Plain(TcpStream),
    /// Mutual TLS to the meshed endpoint's proxy, after the mesh header.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    /// The TCP connection underneath, to close it with a reset.
    pub fn into_tcp(self) -> TcpStream {
        match self {
            Io::Plain(stream) => stream,
            Io::Tls(stream) => stream.into_inner().0,
        }
    }
}

/// Where to connect: an address, and the identity to expect there when the
/// endpoint is meshed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// The endpoint's address (`ip:port`).
    pub addr: SocketAddr,
    /// The SPIFFE ID its proxy must present, when the endpoint is meshed.
    pub peer: Option<SpiffeId>,
}

/// Connects, with mutual TLS when the target is meshed and this proxy has
/// an identity, all within `timeout`.
///
/// # Errors
/// As [`transport::connect`] gives them, [`ConnectError::Timeout`] when
/// the TLS handshake does not finish in time, and [`ConnectError::Tls`]
/// when it or the mesh header fails.
pub async fn connect(target: &Address, mesh_tls: Option<&Arc<MeshTls>>, timeout: Duration) -> Result<Io, ConnectError> {
    let (Some(peer), Some(mesh_tls)) = (&target.peer, mesh_tls) else {
        return transport::connect(target.addr, timeout).await.map(Io::Plain);
    };
    let addr = target.addr;
    let proxy = SocketAddr::new(addr.ip(), INBOUND_PORT);
    let tls_error = |source: Box<dyn std::error::Error + Send + Sync>| ConnectError::Tls {
        addr,
        peer: peer.to_string(),
        source,
    };
    let handshake = async {
        let stream = transport::connect(proxy, timeout).await?;
        let config = mesh_tls.client(peer).map_err(|e| tls_error(e.into()))?;
        let name = ServerName::try_from(peer.server_name()).map_err(|e| tls_error(e.into()))?;
        let mut stream = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| tls_error(e.into()))?;
        mesh::write_header(&mut stream, addr.port())
            .await
            .map_err(|e| tls_error(e.into()))?;
        Ok(Io::Tls(Box::new(stream)))
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }
}
