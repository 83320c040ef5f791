//! Serving the destination service over mutual TLS: the client must present
//! a certificate chaining to the mesh's trust anchors (the proxy's own, from
//! the identity service); its SPIFFE ID reaches the service as a [`Caller`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use strait_api::destination::v1::destination_server::DestinationServer;
use strait_contract::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::service::{Caller, DestinationService};
use crate::tls::{Stop, stopped};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED: usize = 64;
/// Streams one connection (one proxy) may have open: the destinations a
/// proxy follows at once (it forgets those unused for 5 minutes). Beyond
/// it, a proxy's new stream waits for another to end.
pub const MAX_STREAMS_PER_PROXY: u32 = 4096;

/// A mutually authenticated connection.
pub struct Authenticated(TlsStream<TcpStream>);

impl Connected for Authenticated {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        let (tcp, session) = self.0.get_ref();
        Caller {
            id: session
                .peer_certificates()
                .and_then(<[CertificateDer<'_>]>::first)
                .and_then(spiffe_id),
            peer: tcp.peer_addr().ok(),
        }
    }
}

impl tokio::io::AsyncRead for Authenticated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Authenticated {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The one SPIFFE ID (URI name) of a certificate, if it has exactly one.
fn spiffe_id(certificate: &CertificateDer<'_>) -> Option<SpiffeId> {
    match SpiffeId::all_in_certificate(certificate).as_slice() {
        [id] => Some(id.clone()),
        _ => None,
    }
}

/// The server side of the handshake: presents `chain` (leaf first) and
/// requires a client certificate from the mesh's `anchors`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    anchors: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor.clone())?;
    }
    let clients: Arc<dyn ClientCertVerifier> =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How often the server pings each proxy's connection, and how long it
/// waits for the answer before closing it.
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `stop`: then open streams end (the
/// proxies reconnect to another replica).
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, service: DestinationService, stop: Stop) {
    let (sender, accepted) = mpsc::channel::<std::io::Result<Authenticated>>(ACCEPTED);
    let acceptor = TlsAcceptor::from(tls);
    let accepting = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "destination service: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Updates are small and must not wait for more to fill a packet.
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(Authenticated(tls))).await;
                    }
                    Ok(Err(error)) => refused(peer, &error.to_string()),
                    Err(_) => refused(peer, "no TLS handshake within 10s"),
                }
            });
        }
    });
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_PROXY))
        // A proxy that vanished without closing (its node gone) is noticed
        // by its unanswered pings, and its streams' tasks end.
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(DestinationServer::new(service))
        .serve_with_incoming_shutdown(ReceiverStream::new(accepted), stopped(stop))
        .await;
    accepting.abort();
    if let Err(error) = result {
        tracing::error!(%error, "destination service stopped");
    }
}

fn refused(peer: SocketAddr, problem: &str) {
    tracing::info!(%peer, %problem, "destination service: connection refused");
}
