//! Workload identities: SPIFFE IDs of ServiceAccounts.

use std::fmt;
use std::str::FromStr;

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SPIFFE ID {0:?}: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
pub struct SpiffeIdError(pub String);

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }
}

impl SpiffeId {
    /// The SPIFFE IDs among the URI names of an X.509 certificate (DER), in
    /// the order they appear; none for a certificate that does not parse or
    /// has no subjectAltName. SPIFFE X.509-SVIDs carry exactly one: callers
    /// that authenticate with it must refuse a certificate with several.
    pub fn all_in_certificate(der: &[u8]) -> Vec<SpiffeId> {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der) else {
            return Vec::new();
        };
        let Ok(Some(names)) = parsed.subject_alternative_name() else {
            return Vec::new();
        };
        names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => uri.parse().ok(),
                _ => None,
            })
            .collect()
    }

    /// The TLS server name (SNI) a client uses to reach this identity, and
    /// by which an inbound proxy recognises a connection meant for it.
    pub fn server_name(&self) -> String {
        format!(
            "{}.{}.serviceaccount.identity.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || SpiffeIdError(text.to_string());
        let rest = text.strip_prefix("spiffe://").ok_or_else(error)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [domain, "ns", namespace, "sa", account] if [domain, namespace, account].iter().all(|p| !p.is_empty()) => {
                Ok(SpiffeId::new(domain, namespace, account))
            }
            _ => Err(error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_shapes() {
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "demo", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        for bad in [
            "spiffe://cluster.local/ns/demo",
            "https://x/ns/a/sa/b",
            "spiffe://d/ns//sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
