//! The mesh's certificates: a trust anchor and an issuer for users to
//! install (`ca generate`), and loading the issuer the identity service
//! signs with, whether our own PKCS#8 key or an RSA key as Helm makes them.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {problem}")]
    Load { what: String, problem: String },
}

/// Writes `ca.crt` (the trust anchor, ten years), and `issuer.crt` and
/// `issuer.key` (an intermediate CA signed by it, one year) into `dir`.
pub fn generate(dir: &Path, trust_domain: &str) -> Result<(), PkiError> {
    let now = time::OffsetDateTime::now_utc();
    let anchor_key = KeyPair::generate()?;
    let mut anchor = CertificateParams::new(Vec::<String>::new())?;
    anchor.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    anchor
        .distinguished_name
        .push(DnType::CommonName, format!("root.{trust_domain}"));
    anchor.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    anchor.not_before = now - time::Duration::minutes(5);
    anchor.not_after = now + time::Duration::days(3650);
    let anchor = rcgen::CertifiedIssuer::self_signed(anchor, anchor_key)?;

    let issuer_key = KeyPair::generate()?;
    let mut issuer = CertificateParams::new(Vec::<String>::new())?;
    issuer.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    issuer
        .distinguished_name
        .push(DnType::CommonName, format!("identity.{trust_domain}"));
    issuer.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    issuer.not_before = now - time::Duration::minutes(5);
    issuer.not_after = now + time::Duration::days(365);
    let issuer_cert = issuer.signed_by(&issuer_key, &anchor)?;

    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    for (name, contents) in [
        ("ca.crt", anchor.pem()),
        ("issuer.crt", issuer_cert.pem()),
        ("issuer.key", issuer_key.serialize_pem()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| PkiError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// DER for a length, as ASN.1 wants it.
fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_length(contents.len()));
    out.extend_from_slice(contents);
    out
}

/// Wraps a PKCS#1 RSA key in PKCS#8, which is what the crypto library here
/// reads (Helm's `genCA` writes PKCS#1).
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const RSA_ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(RSA_ALGORITHM);
    body.extend(der(0x04, pkcs1));
    der(0x30, &body)
}

/// Reads a private key (PKCS#8, or RSA PKCS#1) for signing.
pub fn load_key(pem: &str, what: &str) -> Result<KeyPair, PkiError> {
    let error = |problem: String| PkiError::Load {
        what: what.to_string(),
        problem,
    };
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| error(format!("no private key: {e}")))?;
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(key) => pkcs1_to_pkcs8(key.secret_pkcs1_der()),
        _ => {
            return Err(error(
                "the key must be PKCS#8 (PRIVATE KEY) or RSA (RSA PRIVATE KEY)".into(),
            ));
        }
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| error(e.to_string()))
}

/// Reads every certificate of a PEM bundle.
pub fn load_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Load {
            what: what.to_string(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Load {
            what: what.to_string(),
            problem: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_back() {
        let dir = std::env::temp_dir().join(format!("strait-pki-{}", std::process::id()));
        generate(&dir, "cluster.local").unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(load_certs(&read("ca.crt"), "anchor").unwrap().len(), 1);
        assert!(load_key(&read("issuer.key"), "issuer key").is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn der_lengths_follow_asn1() {
        assert_eq!(der_length(5), [5]);
        assert_eq!(der_length(0x80), [0x81, 0x80]);
        assert_eq!(der_length(0x1234), [0x82, 0x12, 0x34]);
    }

    #[test]
    fn an_rsa_key_as_helm_writes_it_signs() {
        let key = load_key(include_str!("../tests/fixtures/rsa-pkcs1.key"), "issuer key").unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["x.example".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer);
        assert!(leaf.is_ok());
    }

    #[test]
    fn bad_keys_are_named() {
        let error = load_key("not a key", "issuer key").unwrap_err().to_string();
        assert!(error.starts_with("issuer key: no private key"), "{error}");
    }
}
