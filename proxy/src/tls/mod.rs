//! Mutual TLS between meshed pods: TLS 1.3 only, both sides present
//! certificates from the identity service, the client checks the server is
//! exactly the workload it expects, and the server records who the client is.

pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use strait_contract::SpiffeId;

use verify::{Anchors, ServerIdentityVerifier};

pub use strait_contract::mesh::ALPN as MESH_ALPN;

/// This workload's certificate, swapped in place on renewal: new handshakes
/// use the new one, established connections are not disturbed.
#[derive(Debug, Default)]
pub struct CurrentCert(RwLock<Option<Arc<CertifiedKey>>>);

impl CurrentCert {
    /// The certificate chain and key in use; `None` until the first certificate.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `key` in use for the handshakes that start from now on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }
}

#[derive(Debug)]
struct ClientCert(Arc<CurrentCert>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Answers only handshakes addressed to this workload's server name.
#[derive(Debug)]
struct ServerCert {
    current: Arc<CurrentCert>,
    server_name: String,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name() != Some(self.server_name.as_str()) {
            tracing::debug!(sni = ?hello.server_name(), "TLS connection not addressed to this workload");
            return None;
        }
        self.current.get()
    }
}

/// What this workload trusts now: the trust anchors and what is built from
/// them. Replaced whole when the identity service hands out other anchors
/// (a rotation); handshakes in progress finish with the one they started.
#[derive(Debug)]
struct Trust {
    pem: String,
    /// Each anchor as `subject (serial)`, for logs.
    names: Vec<String>,
    anchors: Arc<Anchors>,
    roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
}

/// Builds (and caches, per peer) the TLS configurations of one workload.
#[derive(Debug)]
pub struct MeshTls {
    /// This workload's SPIFFE ID: the server answers only handshakes whose SNI
    /// is its server name.
    pub identity: SpiffeId,
    /// This workload's certificate, which the identity renews in place.
    pub current: Arc<CurrentCert>,
    trust: RwLock<Arc<Trust>>,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

/// Why the trust anchors, or a TLS configuration built on them, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The trust anchors' PEM holds no certificate.
    #[error("no certificate in the trust anchors")]
    NoAnchors,
    /// The trust anchors cannot be read or used; `what` says how far it got.
    #[error("trust anchors: {what}")]
    Anchors {
        /// How far it got, such as `cannot read the PEM`.
        what: &'static str,
        /// The PEM parser's, webpki's or rustls's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
}

fn anchors_error(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> TlsError {
    TlsError::Anchors {
        what,
        source: Box::new(source),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Trust {
    fn new(pem: &str, identity: &SpiffeId, current: &Arc<CurrentCert>) -> Result<Self, TlsError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| anchors_error("cannot read the PEM", e))?;
        if certificates.is_empty() {
            return Err(TlsError::NoAnchors);
        }
        let mut roots = RootCertStore::empty();
        for certificate in &certificates {
            roots
                .add(certificate.clone())
                .map_err(|e| anchors_error("a certificate is not a trust anchor", e))?;
        }
        let roots = Arc::new(roots);
        let anchors =
            Arc::new(Anchors::new(&certificates).map_err(|e| anchors_error("a certificate is not a trust anchor", e))?);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| anchors_error("cannot verify clients with them", e))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(ServerCert {
                current: current.clone(),
                server_name: identity.server_name(),
            }));
        server.alpn_protocols = vec![MESH_ALPN.to_vec()];
        let names = certificates
            .iter()
            .map(|der| match x509_parser::parse_x509_certificate(der) {
                Ok((_, cert)) => format!("{} ({})", cert.subject(), cert.raw_serial_as_string()),
                Err(_) => "unreadable".to_string(),
            })
            .collect();
        Ok(Trust {
            pem: pem.to_string(),
            names,
            anchors,
            roots,
            server: Arc::new(server),
        })
    }
}

impl MeshTls {
    /// `anchors_pem`: one or more PEM certificates.
    ///
    /// # Errors
    /// [`TlsError::Anchors`] when they cannot be read or used,
    /// [`TlsError::NoAnchors`] when there are none, [`TlsError::Config`] when
    /// rustls refuses the server configuration.
    pub fn new(identity: SpiffeId, anchors_pem: &str, current: Arc<CurrentCert>) -> Result<Self, TlsError> {
        let trust = Trust::new(anchors_pem, &identity, &current)?;
        Ok(MeshTls {
            identity,
            current,
            trust: RwLock::new(Arc::new(trust)),
            clients: Mutex::new(HashMap::new()),
        })
    }

    fn trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Trusts `anchors_pem` from now on, for new handshakes: returns whether
    /// they differ from the anchors in use. Connections already made are
    /// not disturbed.
    ///
    /// # Errors
    /// As [`MeshTls::new`] gives them; the anchors in use stay.
    pub fn set_anchors(&self, anchors_pem: &str) -> Result<bool, TlsError> {
        if self.trust().pem == anchors_pem {
            return Ok(false);
        }
        let trust = Trust::new(anchors_pem, &self.identity, &self.current)?;
        *self.trust.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(trust);
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(true)
    }

    /// How many trust anchors are in use.
    pub fn anchor_count(&self) -> usize {
        self.trust().names.len()
    }

    /// The trust anchors in use, each as `subject (serial)`.
    pub fn anchor_names(&self) -> Vec<String> {
        self.trust().names.clone()
    }

    /// The client configuration for connecting to `peer`: TLS 1.3, ALPN
    /// [`MESH_ALPN`], the server required to present exactly `peer`'s
    /// SPIFFE ID; cached per peer until the anchors change.
    ///
    /// # Errors
    /// [`TlsError::Config`] when rustls cannot build the configuration.
    pub fn client(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = clients.get(peer) {
            return Ok(config.clone());
        }
        let verifier = ServerIdentityVerifier {
            anchors: self.trust().anchors.clone(),
            expected: peer.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(ClientCert(self.current.clone())));
        config.alpn_protocols = vec![MESH_ALPN.to_vec()];
        let config = Arc::new(config);
        clients.insert(peer.clone(), config.clone());
        Ok(config)
    }

    /// The server configuration for inbound mutual TLS with the anchors in use
    /// now: TLS 1.3, ALPN [`MESH_ALPN`], a client certificate required and
    /// verified against the anchors.
    pub fn server(&self) -> Arc<ServerConfig> {
        self.trust().server.clone()
    }

    /// The trust anchors, for verifying the identity service itself.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.trust().roots.clone()
    }

    /// The client configuration for the control plane's gRPC services (the
    /// destination service): the server is verified by its DNS name against
    /// the trust anchors in use now, and this workload's certificate is
    /// presented (none until it has one, which the server refuses).
    ///
    /// # Errors
    /// When rustls cannot build the configuration.
    pub fn control_plane_client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots())
            .with_client_cert_resolver(Arc::new(ClientCert(self.current.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
