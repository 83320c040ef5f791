//! Test certificates: a CA that issues workload certificates, and a
//! workload's mutual TLS holding one. For tests anywhere in the crate.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use strait_contract::SpiffeId;

use super::{CurrentCert, MeshTls};

/// A certificate authority for tests.
pub struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    /// A new self-signed CA.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// Its certificate, as the trust anchors' PEM.
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A workload certificate for `id`, valid from `from` to `until` days from now.
    pub fn leaf(&self, id: &SpiffeId, from: i64, until: i64) -> Arc<CertifiedKey> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(until);
        let cert = params.signed_by(&key, &self.0).unwrap();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&private).unwrap();
        Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.0.der().clone()],
            signer,
        ))
    }
}

/// The SPIFFE ID of ServiceAccount `account` in namespace `demo`.
pub fn id(account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "demo", account)
}

/// A workload `id`'s mutual TLS, trusting `anchors`, holding `cert`.
pub fn mesh(id: &SpiffeId, anchors: &str, cert: Arc<CertifiedKey>) -> MeshTls {
    let current = Arc::new(CurrentCert::default());
    current.set(cert);
    MeshTls::new(id.clone(), anchors, current).unwrap()
}
