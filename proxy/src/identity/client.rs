//! Talking to the identity service: HTTPS verified against the trust
//! anchors, the projected ServiceAccount token as the bearer token (read
//! afresh each time, since the kubelet rotates it).

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use strait_contract::SpiffeId;
use strait_contract::identity_api::{CERTIFICATES_PATH, CertificateRequest, CertificateResponse, ErrorResponse};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Any error, as a cause kept in a chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why no certificate came from the identity service. Each variant keeps
/// its cause as `source`; log it with `strait_contract::Chain`.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No answer: connecting, the TLS handshake, sending or reading failed,
    /// or nothing came back within 10 s.
    #[error("cannot reach the identity service at {addr}")]
    Unreachable {
        /// The service's address (`host:port`).
        addr: String,
        /// What failed: the connection, TLS, HTTP, or the timeout.
        #[source]
        source: BoxError,
    },
    /// The projected ServiceAccount token cannot be read.
    #[error("cannot read the token {path}")]
    Token {
        /// The token file's path.
        path: String,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The service answered with an error status and this message.
    #[error("the identity service refused ({status}): {message}")]
    Refused {
        /// The HTTP status of the answer (4xx or 5xx).
        status: StatusCode,
        /// The `error` of its JSON body, or else the body as text.
        message: String,
    },
    /// The service's answer is not a certificate this proxy can use;
    /// `what` says which part.
    #[error("the identity service's answer is not understood: {what}")]
    Protocol {
        /// The part not understood, such as `the response body`.
        what: &'static str,
        /// Why it is not understood.
        #[source]
        source: BoxError,
    },
    /// This proxy could not make its own request (its SPIFFE ID as a SAN,
    /// its CSR, the request itself).
    #[error("cannot make the certificate request: {what}")]
    Local {
        /// The part that could not be made, such as `the request body`.
        what: &'static str,
        /// Why it could not be made.
        #[source]
        source: BoxError,
    },
    /// The trust anchors it handed out cannot be used; those in use stay.
    #[error("cannot use what the identity service handed out")]
    Anchors(#[source] BoxError),
}

/// A client of the identity service, over HTTPS with a fresh connection per
/// request; clones share the trust anchors.
#[derive(Clone, Debug)]
pub struct IdentityClient {
    /// host:port of the service.
    addr: String,
    host: String,
    /// Shared by every clone: a new set of trust anchors reaches them all.
    tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    token: PathBuf,
}

fn client_config(roots: Arc<RootCertStore>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

impl IdentityClient {
    /// A client of the service at `addr` (`host:port`; the host is the TLS
    /// server name), verified against `roots`, sending the token read from
    /// `token` as its bearer token.
    ///
    /// # Errors
    /// When rustls cannot build the TLS 1.3 client configuration.
    pub fn new(addr: &str, token: PathBuf, roots: Arc<RootCertStore>) -> Result<Self, rustls::Error> {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).to_string();
        Ok(IdentityClient {
            addr: addr.to_string(),
            host,
            tls: Arc::new(RwLock::new(Arc::new(client_config(roots)?))),
            token,
        })
    }

    /// Verifies the identity service against `roots` from now on (after a
    /// trust-anchor rotation).
    ///
    /// # Errors
    /// When rustls cannot build the configuration; the old one stays.
    pub fn trust(&self, roots: Arc<RootCertStore>) -> Result<(), rustls::Error> {
        let config = Arc::new(client_config(roots)?);
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    fn unreachable(&self, source: impl Into<BoxError>) -> IdentityError {
        IdentityError::Unreachable {
            addr: self.addr.clone(),
            source: source.into(),
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<hyper::Response<Incoming>, IdentityError> {
        let connect = async {
            let stream = TcpStream::connect(&self.addr).await.map_err(|e| self.unreachable(e))?;
            let _ = stream.set_nodelay(true);
            let name = ServerName::try_from(self.host.clone()).map_err(|e| self.unreachable(e))?;
            let tls = self.tls.read().unwrap_or_else(PoisonError::into_inner).clone();
            let stream = TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| self.unreachable(e))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.unreachable(e))?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(|e| self.unreachable(e))
        };
        let response = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| self.unreachable("no answer within 10s"))??;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorResponse>(&body)
            .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error);
        Err(IdentityError::Refused { status, message })
    }

    fn request(&self, method: &str, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>, IdentityError> {
        let token = std::fs::read_to_string(&self.token).map_err(|source| IdentityError::Token {
            path: self.token.display().to_string(),
            source,
        })?;
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| IdentityError::Local {
                what: "the request",
                source: e.into(),
            })
    }

    /// Asks for a certificate for `identity` with this CSR.
    ///
    /// # Errors
    /// [`IdentityError::Token`] when the token cannot be read,
    /// [`IdentityError::Local`] when the request cannot be made,
    /// [`IdentityError::Unreachable`] when connecting, TLS or HTTP fails or
    /// no answer comes within 10 s, [`IdentityError::Refused`] for an error
    /// status, and [`IdentityError::Protocol`] when the answer is not the
    /// expected JSON.
    pub async fn certify(&self, identity: &SpiffeId, csr: String) -> Result<CertificateResponse, IdentityError> {
        let body = serde_json::to_vec(&CertificateRequest {
            identity: identity.to_string(),
            csr,
        })
        .map_err(|e| IdentityError::Local {
            what: "the request body",
            source: e.into(),
        })?;
        let response = self
            .send(self.request("POST", CERTIFICATES_PATH, Bytes::from(body))?)
            .await?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| IdentityError::Protocol {
            what: "the response body",
            source: e.into(),
        })
    }
}
