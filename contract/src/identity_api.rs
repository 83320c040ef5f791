//! The identity service's wire format, shared by the service (in
//! strait-injector) and its clients (the proxies). JSON over HTTPS; every
//! request carries the proxy's projected ServiceAccount token as a bearer
//! token (audience `strait-identity`).

use serde::{Deserialize, Serialize};

/// `POST /v1/certificates`: a CSR for the workload's own identity.
pub const CERTIFICATES_PATH: &str = "/v1/certificates";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// The SPIFFE ID the proxy expects; refused if the token is another's.
    pub identity: String,
    /// PKCS#10, PEM.
    pub csr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The leaf, PEM; its only name is the identity.
    pub certificate: String,
    /// The issuer chain up to (not including) a trust anchor, PEM.
    pub chain: String,
    /// When the leaf expires, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The trust anchors the mesh trusts now, PEM (one or more: during a
    /// rotation, the old and the new). Proxies verify peers and the identity
    /// service against these from then on, so a rotation needs no restart.
    /// Empty from an identity service that predates it: keep what you have.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_anchors: String,
}

/// Any error, with the HTTP status saying which kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}
