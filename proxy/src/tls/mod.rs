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
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

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

/// Builds (and caches, per peer) the TLS configurations of one workload.
#[derive(Debug)]
pub struct MeshTls {
    pub identity: SpiffeId,
    pub current: Arc<CurrentCert>,
    anchors: Arc<Anchors>,
    roots: Arc<RootCertStore>,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
    server: Arc<ServerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust anchors: {0}")]
    Anchors(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl MeshTls {
    pub fn new(identity: SpiffeId, anchors_pem: &str, current: Arc<CurrentCert>) -> Result<Self, TlsError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(anchors_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Anchors(e.to_string()))?;
        if certificates.is_empty() {
            return Err(TlsError::Anchors("no certificate in the trust anchors".into()));
        }
        let mut roots = RootCertStore::empty();
        for certificate in &certificates {
            roots
                .add(certificate.clone())
                .map_err(|e| TlsError::Anchors(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let anchors = Arc::new(Anchors::new(&certificates).map_err(|e| TlsError::Anchors(e.to_string()))?);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Anchors(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(ServerCert {
                current: current.clone(),
                server_name: identity.server_name(),
            }));
        server.alpn_protocols = vec![MESH_ALPN.to_vec()];
        Ok(MeshTls {
            identity,
            current,
            anchors,
            roots,
            clients: Mutex::new(HashMap::new()),
            server: Arc::new(server),
        })
    }

    /// The client configuration for connecting to `peer`.
    pub fn client(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = clients.get(peer) {
            return Ok(config.clone());
        }
        let verifier = ServerIdentityVerifier {
            anchors: self.anchors.clone(),
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

    pub fn server(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The trust anchors, for verifying the identity service itself.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

#[cfg(test)]
mod tests;
