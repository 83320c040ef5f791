//! Signing workload certificates: the CSR proves possession of a key; the
//! certificate names only the identity the token proved, whatever the CSR
//! asked for.

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strait_contract::SpiffeId;

use crate::pki::{PkiError, load_certs, load_key};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the CSR is malformed or its signature does not verify: {0}")]
    MalformedCsr(String),
    #[error("the CSR's key type ({0}) is not accepted: use ECDSA P-256 or P-384, or Ed25519")]
    KeyType(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A signed leaf and when it expires.
#[derive(Debug)]
pub struct Signed {
    pub certificate: String,
    pub not_after: i64,
}

/// How long the identity service's own serving certificate is valid.
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The issuer's own certificate, sent with every leaf.
    chain_pem: String,
    lifetime: Duration,
    /// The trust anchors sent with every certificate (see
    /// [`Signer::trusting`]).
    anchors_pem: String,
}

fn parse_certificate<'a>(der: &'a [u8], what: &str) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Load {
            what: what.into(),
            problem: e.to_string(),
        })
}

fn accepted(alg: &rcgen::SignatureAlgorithm) -> bool {
    [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ]
    .contains(&alg)
}

impl Signer {
    /// The issuer from its certificate and key (PEM): refused, naming why,
    /// unless the key is the certificate's and the certificate is a CA.
    pub fn load(cert_pem: &str, key_pem: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let key = load_key(key_pem, "identity issuer key")?;
        let certs = load_certs(cert_pem, "identity issuer certificate")?;
        let problem = |what: &str, problem: String| PkiError::Load {
            what: what.into(),
            problem,
        };
        let (_, issuer) = x509_parser::parse_x509_certificate(&certs[0])
            .map_err(|e| problem("identity issuer certificate", e.to_string()))?;
        if issuer.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(problem(
                "identity issuer key",
                format!("it is not the key of the issuer certificate ({})", issuer.subject()),
            ));
        }
        if !issuer.is_ca() {
            return Err(problem(
                "identity issuer certificate",
                format!("{} is not a CA (basicConstraints cA is not true)", issuer.subject()),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::Load {
            what: "identity issuer certificate".into(),
            problem: e.to_string(),
        })?;
        Ok(Signer {
            issuer,
            chain_pem: cert_pem.to_string(),
            lifetime,
            anchors_pem: String::new(),
        })
    }

    /// Sets the trust anchors (PEM) the identity service hands out with each
    /// certificate. The issuer's certificate must chain to one of them,
    /// through the intermediates that follow it in its file, or every
    /// certificate would be refused by every peer: during a rotation, a new
    /// issuer comes only once its anchor is in the set. Every anchor must be
    /// a certificate, since proxies refuse a set with one they cannot read.
    ///
    /// # Errors
    /// [`PkiError::Load`] when an anchor cannot be read or the issuer does
    /// not chain to any.
    pub fn trusting(mut self, anchors_pem: &str) -> Result<Self, PkiError> {
        let anchors_der = load_certs(anchors_pem, "trust anchors")?;
        let chain_der = load_certs(&self.chain_pem, "identity issuer certificate")?;
        let anchors = anchors_der
            .iter()
            .map(|der| parse_certificate(der, "trust anchors"))
            .collect::<Result<Vec<_>, _>>()?;
        let chain = chain_der
            .iter()
            .map(|der| parse_certificate(der, "identity issuer certificate"))
            .collect::<Result<Vec<_>, _>>()?;
        let signed_by = |cert: &x509_parser::certificate::X509Certificate<'_>,
                         by: &x509_parser::certificate::X509Certificate<'_>| {
            cert.verify_signature(Some(by.public_key())).is_ok()
        };
        // Walk up from the issuer through its file's intermediates.
        let mut current = &chain[0];
        let mut chained = false;
        for _ in 0..chain.len() {
            if anchors.iter().any(|anchor| signed_by(current, anchor)) {
                chained = true;
                break;
            }
            match chain[1..].iter().find(|next| signed_by(current, next)) {
                Some(next) => current = next,
                None => break,
            }
        }
        if !chained {
            return Err(PkiError::Load {
                what: "identity issuer certificate".into(),
                problem: format!(
                    "{} does not chain to any of the {} trust anchor(s): add the anchor that signed it to the trust anchors first",
                    chain[0].subject(),
                    anchors.len()
                ),
            });
        }
        self.anchors_pem = anchors_pem.to_string();
        Ok(self)
    }

    pub fn anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    fn validity(params: &mut CertificateParams, lifetime: Duration) -> i64 {
        let now = time::OffsetDateTime::now_utc();
        // A little back-dating absorbs clock skew between nodes.
        params.not_before = now - time::Duration::seconds(60);
        params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
        params.serial_number = Some(crate::pki::random_serial());
        params.not_after.unix_timestamp()
    }

    /// Signs a certificate for `identity` with the CSR's public key.
    pub fn sign(&self, csr_pem: &str, identity: &SpiffeId) -> Result<Signed, SignError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| SignError::MalformedCsr(e.to_string()))?;
        let alg = rcgen::PublicKeyData::algorithm(&csr.public_key);
        if !accepted(alg) {
            return Err(SignError::KeyType(format!("{alg:?}")));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| SignError::Signing(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let not_after = Self::validity(&mut params, self.lifetime);
        let certificate = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        Ok(Signed {
            certificate: certificate.pem(),
            not_after,
        })
    }

    /// The identity service's own serving certificate, for its DNS names.
    pub fn serving_certificate(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), SignError> {
        let key = KeyPair::generate().map_err(|e| SignError::Signing(e.to_string()))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| SignError::Signing(e.to_string()))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Made once per process start, so not bound to workload lifetimes.
        Self::validity(&mut params, SERVING_LIFETIME);
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(load_certs(&self.chain_pem, "issuer").map_err(|e| SignError::Signing(e.to_string()))?);
        Ok((
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

#[cfg(test)]
mod tests;
