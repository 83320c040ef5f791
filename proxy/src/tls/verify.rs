//! Checking a peer's certificate: its chain must lead to one of the mesh's
//! trust anchors, and its only URI name must be the SPIFFE ID expected.
//! Mesh certificates carry no DNS names, so rustls's usual server-name check
//! does not apply; this one replaces it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::TrustAnchor;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use strait_contract::SpiffeId;
use webpki::{EndEntityCert, KeyUsage};

/// The SPIFFE IDs (URI names) a certificate carries.
pub fn spiffe_ids(certificate: &CertificateDer<'_>) -> Vec<SpiffeId> {
    SpiffeId::all_in_certificate(certificate)
}

/// The mesh's trust anchors and signature algorithms.
#[derive(Debug)]
pub struct Anchors {
    anchors: Vec<TrustAnchor<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Anchors {
    /// Trust anchors from these (DER) certificates, verified with ring's
    /// signature algorithms.
    ///
    /// # Errors
    /// webpki's error when a certificate cannot be used as a trust anchor.
    pub fn new(certificates: &[CertificateDer<'static>]) -> Result<Self, webpki::Error> {
        let anchors = certificates
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(Anchors {
            anchors,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    /// Verifies the chain for `usage` at `now`.
    ///
    /// # Errors
    /// [`Error::InvalidCertificate`]: `BadEncoding`, `Expired`,
    /// `NotValidYet`, `UnknownIssuer`, or webpki's error as `Other`.
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<(), Error> {
        let certificate = EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        certificate
            .verify_for_usage(
                self.algorithms.all,
                &self.anchors,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map(drop)
            .map_err(|error| {
                Error::InvalidCertificate(match error {
                    webpki::Error::CertExpired { .. } => CertificateError::Expired,
                    webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
                    webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
                    other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
                })
            })
    }

    /// The signature algorithms handshake signatures are verified with.
    pub fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.algorithms
    }
}

/// The client side: the server must be exactly `expected`.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    /// The trust anchors the server's chain must lead to.
    pub anchors: Arc<Anchors>,
    /// The SPIFFE ID the server's certificate must carry, as its only URI name.
    pub expected: SpiffeId,
}

/// The server presented a valid certificate for the wrong workload.
#[derive(Debug)]
pub struct WrongIdentity {
    /// The SPIFFE ID the client expected.
    pub expected: SpiffeId,
    /// The SPIFFE IDs (URI names) the server's certificate carries.
    pub presented: Vec<SpiffeId>,
}

impl std::fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let presented: Vec<String> = self.presented.iter().map(ToString::to_string).collect();
        write!(
            f,
            "expected {}, the peer presented [{}]",
            self.expected,
            presented.join(", ")
        )
    }
}

impl std::error::Error for WrongIdentity {}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.anchors
            .verify_chain(end_entity, intermediates, now, KeyUsage::server_auth())?;
        let presented = spiffe_ids(end_entity);
        if presented.as_slice() != std::slice::from_ref(&self.expected) {
            let wrong = WrongIdentity {
                expected: self.expected.clone(),
                presented,
            };
            return Err(Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(wrong),
            ))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.anchors.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.anchors.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.algorithms().supported_schemes()
    }
}
