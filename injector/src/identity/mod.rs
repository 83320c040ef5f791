//! The identity service (TLS :8083). It signs each proxy a certificate for
//! the ServiceAccount its token proves. Which pods are meshed, and as whom,
//! proxies learn from the destination service (`crate::destination`).

pub mod review;
pub mod sign;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use strait_contract::SpiffeId;
use strait_contract::identity_api::{CERTIFICATES_PATH, CertificateRequest, CertificateResponse, ErrorResponse};
use tokio::net::TcpListener;

use review::{ReviewError, ServiceAccount, TokenReviewer};
use sign::{SignError, Signer};

type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `issued`, or why not: `unauthenticated`, `forbidden`, `bad_request`, `unavailable`.
    outcome: &'static str,
}

pub struct IdentityService {
    pub signer: Signer,
    pub reviewer: Arc<dyn TokenReviewer>,
    pub trust_domain: String,
    certificates: Family<OutcomeLabels, Counter>,
}

/// Why a request was refused, and the status that says so.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Review(#[from] ReviewError),
    #[error("{0}")]
    Sign(#[from] SignError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Review(ReviewError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Review(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Sign(SignError::Signing(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Sign(_) | Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn outcome(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "bad_request",
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refused(refusal: &Refusal) -> Response<Body> {
    json(
        refusal.status(),
        &ErrorResponse {
            error: refusal.to_string(),
        },
    )
}

fn bearer(request: &Request<Incoming>) -> Result<String, Refusal> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::Review(ReviewError::Unauthenticated("no bearer token".into())))
}

impl IdentityService {
    pub fn new(
        signer: Signer,
        reviewer: Arc<dyn TokenReviewer>,
        trust_domain: String,
        registry: &mut Registry,
    ) -> Self {
        let certificates = Family::default();
        registry.register(
            "identity_certificates",
            "Certificate requests, by outcome",
            certificates.clone(),
        );
        IdentityService {
            signer,
            reviewer,
            trust_domain,
            certificates,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        match (request.method().clone(), request.uri().path()) {
            (Method::POST, CERTIFICATES_PATH) => {
                let result = self.certify(request).await;
                let outcome = result.as_ref().map_or_else(Refusal::outcome, |_| "issued");
                self.certificates.get_or_create(&OutcomeLabels { outcome }).inc();
                match result {
                    Ok(issued) => json(StatusCode::OK, &issued),
                    Err(refusal) => {
                        tracing::info!(%refusal, "certificate refused");
                        refused(&refusal)
                    }
                }
            }
            _ => refused(&Refusal::BadRequest(format!(
                "no such call; use POST {CERTIFICATES_PATH}"
            ))),
        }
    }

    async fn certify(&self, request: Request<Incoming>) -> Result<CertificateResponse, Refusal> {
        let token = bearer(&request)?;
        let body = Limited::new(request.into_body(), MAX_REQUEST)
            .collect()
            .await
            .map_err(|e| Refusal::BadRequest(format!("cannot read the request: {e}")))?
            .to_bytes();
        let account = self.reviewer.review(&token).await?;
        issue(&self.signer, &self.trust_domain, &account, &body)
    }
}

/// Answers a certificate request `body` from a proxy whose token proved it
/// is `account`: a certificate for that ServiceAccount's identity only.
pub fn issue(
    signer: &Signer,
    trust_domain: &str,
    account: &ServiceAccount,
    body: &[u8],
) -> Result<CertificateResponse, Refusal> {
    let wanted: CertificateRequest = serde_json::from_slice(body)
        .map_err(|e| Refusal::BadRequest(format!("the request is not a CertificateRequest: {e}")))?;
    let identity = SpiffeId::new(trust_domain, &account.namespace, &account.name);
    if wanted.identity != identity.to_string() {
        return Err(Refusal::Forbidden(format!(
            "the token is ServiceAccount {}/{}'s: it cannot get a certificate for {}",
            account.namespace, account.name, wanted.identity
        )));
    }
    let signed = signer.sign(&wanted.csr, &identity)?;
    tracing::info!(%identity, not_after = signed.not_after, "certificate issued");
    Ok(CertificateResponse {
        certificate: signed.certificate,
        chain: signer.chain_pem().to_string(),
        not_after: signed.not_after,
        trust_anchors: signer.anchors_pem().to_string(),
    })
}

/// Serves the identity service over TLS until `stop`, then lets open
/// connections finish (see [`crate::tls::serve_https`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<IdentityService>,
    stop: crate::tls::Stop,
) {
    crate::tls::serve_https(
        listener,
        tls,
        "identity",
        move |request| {
            let service = service.clone();
            async move { service.handle(request).await }
        },
        stop,
    )
    .await
}
