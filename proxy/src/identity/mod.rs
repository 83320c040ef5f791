//! This workload's identity. The private key is made in memory at start and
//! never leaves the process; the certificate comes from the identity
//! service (with retries and back-off until it answers), and is renewed at
//! about 70% of its lifetime. The proxy is not ready until it has one. The
//! trust anchors come with each certificate, so a rotation of the anchors
//! reaches running proxies at their next renewal.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use strait_contract::{Chain, SpiffeId};

use crate::admin::Readiness;
use crate::retry::Policy;
use crate::tls::{CurrentCert, MeshTls};
use client::{IdentityClient, IdentityError};

/// What `/ready` waits for until the first certificate arrives.
pub const READY_CONDITION: &str = "identity";
/// When to renew, as a share of the certificate's lifetime.
const RENEW_AT: f64 = 0.7;
/// Renewal happens up to this much of the lifetime earlier, at random.
const RENEW_JITTER: f64 = 0.1;
/// Retries while no certificate comes: from 100 ms, up to 10 s apart.
const RETRY: Policy = Policy::Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// This workload's identity: its private key, the mutual TLS built on its
/// certificate, and the client that obtains and renews that certificate.
pub struct LocalIdentity {
    /// Mutual TLS as this workload, with its current certificate and the trust
    /// anchors in use.
    pub tls: Arc<MeshTls>,
    key: KeyPair,
    client: IdentityClient,
    expiry: Gauge,
    anchors: Gauge,
    requests: Family<OutcomeLabels, Counter>,
}

/// Why this workload's identity cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The private key cannot be generated.
    #[error("cannot make a key")]
    Key(#[from] rcgen::Error),
    /// The configured trust anchors cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// rustls cannot build the TLS client for the identity service.
    #[error("TLS for the identity service")]
    Client(#[from] rustls::Error),
}

impl LocalIdentity {
    /// An identity as `id`, whose certificate comes from the identity service at
    /// `service` (`host:port`), authenticated by the ServiceAccount token at
    /// `token`; `anchors_pem` holds the initial trust anchors (PEM). Makes the
    /// private key and registers the `strait_identity_*` metrics; no certificate
    /// is requested until [`LocalIdentity::run`].
    ///
    /// # Errors
    /// [`SetupError`] when the anchors cannot be used or the key cannot be made.
    pub fn new(
        id: SpiffeId,
        service: &str,
        token: std::path::PathBuf,
        anchors_pem: &str,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, SetupError> {
        let tls = Arc::new(MeshTls::new(id, anchors_pem, Arc::new(CurrentCert::default()))?);
        let client = IdentityClient::new(service, token, tls.roots())?;
        let expiry = Gauge::default();
        let anchors = Gauge::default();
        anchors.set(tls.anchor_count() as i64);
        let requests = Family::default();
        let sub = registry.sub_registry_with_prefix("identity");
        sub.register(
            "cert_expiry_timestamp_seconds",
            "When this proxy's certificate expires (Unix time)",
            expiry.clone(),
        );
        sub.register(
            "trust_anchors",
            "How many trust anchors this proxy trusts now (two during a rotation)",
            anchors.clone(),
        );
        sub.register(
            "certificate_requests",
            "Certificate requests to the identity service, by outcome",
            requests.clone(),
        );
        Ok(Arc::new(LocalIdentity {
            tls,
            key: KeyPair::generate()?,
            client,
            expiry,
            anchors,
            requests,
        }))
    }

    /// Gets a certificate now; returns its lifetime.
    async fn obtain(&self) -> Result<Duration, IdentityError> {
        let id = &self.tls.identity;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(|e: rcgen::Error| {
            IdentityError::Local {
                what: "this workload's SPIFFE ID as a SAN",
                source: e.into(),
            }
        })?)];
        let csr = params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| IdentityError::Local {
                what: "the CSR",
                source: e.into(),
            })?;
        let issued = self.client.certify(id, csr).await?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(format!("{}\n{}", issued.certificate, issued.chain).as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| IdentityError::Protocol {
                    what: "the certificate chain's PEM",
                    source: e.into(),
                })?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| IdentityError::Local {
            what: "this workload's signing key",
            source: e.into(),
        })?;
        // The anchors first: the new certificate may chain to an anchor
        // that peers learn of only now, as this proxy does. Anchors it cannot
        // read never cost it the certificate: it keeps those in use.
        if !issued.trust_anchors.is_empty()
            && let Err(error) = self.trust(&issued.trust_anchors)
        {
            tracing::warn!(error = %Chain(&error), "keeping the trust anchors in use");
        }
        let issuer = chain
            .first()
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
            .map(|(_, leaf)| leaf.issuer().to_string())
            .unwrap_or_default();
        self.tls.current.set(Arc::new(CertifiedKey::new(chain, signer)));
        self.expiry.set(issued.not_after);
        tracing::info!(identity = %self.tls.identity, %issuer, "certificate obtained");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        Ok(Duration::from_secs((issued.not_after - now).max(1) as u64))
    }

    /// Trusts the anchors the identity service handed out, for peers and
    /// for the identity service itself.
    fn trust(&self, anchors_pem: &str) -> Result<(), IdentityError> {
        if self
            .tls
            .set_anchors(anchors_pem)
            .map_err(|e| IdentityError::Anchors(e.into()))?
        {
            self.client
                .trust(self.tls.roots())
                .map_err(|e| IdentityError::Anchors(e.into()))?;
            let names = self.tls.anchor_names();
            self.anchors.set(names.len() as i64);
            tracing::info!(anchors = ?names, "trust anchors changed");
        }
        Ok(())
    }

    /// Obtains and renews the certificate for as long as the proxy runs.
    pub async fn run(self: Arc<Self>, readiness: Readiness) {
        let mut delays = RETRY.delays();
        loop {
            match self.obtain().await {
                Ok(lifetime) => {
                    self.requests.get_or_create(&OutcomeLabels { outcome: "issued" }).inc();
                    readiness.met(READY_CONDITION);
                    delays = RETRY.delays();
                    tracing::debug!(?lifetime, "renewing at 60 to 70% of the lifetime");
                    // Renewals of a fleet's proxies spread out rather than
                    // arriving at the identity service together.
                    tokio::time::sleep(lifetime.mul_f64(RENEW_AT - RENEW_JITTER * rand::random::<f64>())).await;
                }
                Err(error) => {
                    self.requests.get_or_create(&OutcomeLabels { outcome: "failed" }).inc();
                    // The certificate in use, if any, stays until it expires;
                    // retries back off, with jitter so that proxies waiting
                    // for a returning identity service do not retry in step.
                    let wait = delays.next().unwrap_or(RETRY.max_delay());
                    tracing::warn!(error = %Chain(&error), retry_in = ?wait, "no certificate yet");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
