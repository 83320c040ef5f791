//! Serving HTTPS: from certificate files that may be rotated under us (by
//! cert-manager, or a Secret update), re-read when they change.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::pki::{PkiError, load_certs};

/// How often the files' modification times are checked.
const RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// A certificate and key from files, reloaded when the certificate changes.
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, PkiError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| PkiError::Load {
            what: path.display().to_string(),
            problem: e.to_string(),
        })
    };
    let chain = load_certs(&read(cert)?, &cert.display().to_string())?;
    let private = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes()).map_err(|e| PkiError::Load {
        what: key.display().to_string(),
        problem: e.to_string(),
    })?;
    crate::pki::certified_key(chain, &private, &key.display().to_string())
}

impl FileCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, PkiError> {
        let loaded = Loaded {
            key: load(&cert, &key)?,
            modified: modified(&cert),
            checked: Instant::now(),
        };
        Ok(FileCert {
            cert,
            key,
            loaded: Mutex::new(loaded),
        })
    }

    /// A rustls server configuration that presents this certificate.
    pub fn server_config(self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        server_config(Arc::new(self), alpn)
    }
}

/// A rustls server configuration (TLS 1.2 and 1.3) that presents what
/// `certificate` resolves, offering the `alpn` protocols.
pub fn server_config(
    certificate: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = modified(&self.cert);
            if now != loaded.modified {
                match load(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        loaded.key = key;
                        loaded.modified = now;
                    }
                    Err(error) => tracing::warn!(%error, "keeping the previous serving certificate"),
                }
            }
        }
        Some(loaded.key.clone())
    }
}

/// Whether the control plane is shutting down: `true` once it stops.
/// A dropped sender never stops anything.
pub type Stop = watch::Receiver<bool>;

/// Resolves once `stop` turns true (never, if its sender is gone).
pub async fn stopped(mut stop: Stop) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves HTTPS (HTTP/1.1 or HTTP/2) on `listener`, handing every request
/// to `handle`, until `stop`: then it accepts no more connections, asks
/// every open one to close once its requests are answered (HTTP/2 GOAWAY,
/// HTTP/1 `Connection: close`) and returns when they have. `what` names
/// the service in the logs.
pub async fn serve_https<H, F, B>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    what: &'static str,
    handle: H,
    stop: Stop,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut stopping => break,
        };
        let (acceptor, handle, watcher) = (acceptor.clone(), handle.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, service = what, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let response = handle(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    tracing::info!(service = what, "stopped: every connection closed");
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::sync::{Mutex as AsyncMutex, mpsc};

    use super::*;

    #[tokio::test]
    async fn a_request_in_flight_when_stopping_is_answered_and_then_the_server_is_gone() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let tls = {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], private.clone_key())
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The handler says when a request reached it and answers only when told.
        let (entered_tx, mut entered) = mpsc::channel::<()>(1);
        let (release_tx, release) = mpsc::channel::<()>(1);
        let release = Arc::new(AsyncMutex::new(release));
        let handle = move |_request: Request<Incoming>| {
            let (entered_tx, release) = (entered_tx.clone(), release.clone());
            async move {
                let _ = entered_tx.send(()).await;
                release.lock().await.recv().await;
                Response::new(Full::new(Bytes::from_static(b"answered")))
            }
        };
        let (stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(serve_https(listener, tls, "test", handle, stop));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
        let client_tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
            .connect(ServerName::try_from("localhost").unwrap(), stream)
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .uri("/slow")
            .header(http::header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::spawn(sender.send_request(request));
        entered.recv().await.unwrap();

        // Stopping: no new connections, the request in flight still answered.
        stop_tx.send(true).unwrap();
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "new connections are refused once stopping");
        assert!(!server.is_finished(), "the server waits for the request in flight");
        release_tx.send(()).await.unwrap();
        let response = response.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"answered");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server returns once its connections have closed")
            .unwrap();
    }
}
