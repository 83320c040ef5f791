//! The mesh's certificates: a trust anchor and an issuer for users to
//! install (`ca generate`), and loading the issuer the identity service
//! signs with, whether our own PKCS#8 key or an RSA key as Helm makes them.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use pkcs8::der::Encode;
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

/// A CA's certificate and private key (PKCS#8), as PEM.
#[derive(Clone, Debug)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(common_name: &str, days: i64) -> Result<CertificateParams, PkiError> {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
    Ok(params)
}

/// A new self-signed CA (ECDSA P-256) named `common_name`, valid `days`.
pub fn self_signed_ca(common_name: &str, days: i64) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate()?;
    let key_pem = key.serialize_pem();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params(common_name, days)?, key)?;
    Ok(CaMaterial {
        cert_pem: ca.pem(),
        key_pem,
    })
}

/// Writes `ca.crt` (the trust anchor, ten years), and `issuer.crt` and
/// `issuer.key` (an intermediate CA signed by it, one year) into `dir`.
pub fn generate(dir: &Path, trust_domain: &str) -> Result<(), PkiError> {
    let anchor_key = KeyPair::generate()?;
    let anchor = rcgen::CertifiedIssuer::self_signed(ca_params(&format!("root.{trust_domain}"), 3650)?, anchor_key)?;

    let issuer_key = KeyPair::generate()?;
    let mut issuer = ca_params(&format!("identity.{trust_domain}"), 365)?;
    issuer.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
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
        // The key readable by its owner only, as `openssl genpkey` leaves it.
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut file| {
                // An existing file keeps its mode on open: set it too.
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
                std::io::Write::write_all(&mut file, contents.as_bytes())
            });
        written.map_err(|source| PkiError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Reads a private key for signing, in any of the PEM forms CAs are kept
/// in: PKCS#8 (`PRIVATE KEY`), RSA PKCS#1 (`RSA PRIVATE KEY`, as Helm's
/// `genCA` writes) or SEC1 (`EC PRIVATE KEY`, as `openssl ecparam` and
/// cert-manager write). PKCS#1 and SEC1 keys are re-wrapped as PKCS#8
/// (RFC 5208) with RustCrypto's `pkcs1`, `sec1` and `pkcs8`, for rcgen.
pub fn load_key(pem: &str, what: &str) -> Result<KeyPair, PkiError> {
    let error = |problem: String| PkiError::Load {
        what: what.to_string(),
        problem,
    };
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| error(format!("no private key: {e}")))?;
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(key) => pkcs1_to_pkcs8(key.secret_pkcs1_der()).map_err(error)?,
        PrivateKeyDer::Sec1(key) => sec1_to_pkcs8(key.secret_sec1_der()).map_err(error)?,
        _ => return Err(error("expected a PKCS#8, RSA (PKCS#1) or EC (SEC1) private key".into())),
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| error(e.to_string()))
}

/// An RSA PKCS#1 key (RFC 8017 A.1.2) inside a PKCS#8 PrivateKeyInfo.
fn pkcs1_to_pkcs8(pkcs1_der: &[u8]) -> Result<Vec<u8>, String> {
    pkcs1::RsaPrivateKey::try_from(pkcs1_der).map_err(|e| format!("not an RSA private key: {e}"))?;
    pkcs8::PrivateKeyInfo::new(pkcs1::ALGORITHM_ID, pkcs1_der)
        .to_der()
        .map_err(|e| e.to_string())
}

/// A SEC1 EC key (RFC 5915) inside a PKCS#8 PrivateKeyInfo whose algorithm
/// names its curve (RFC 5480).
fn sec1_to_pkcs8(sec1_der: &[u8]) -> Result<Vec<u8>, String> {
    let key = sec1::EcPrivateKey::try_from(sec1_der).map_err(|e| format!("not an EC private key: {e}"))?;
    let curve = key
        .parameters
        .and_then(|parameters| parameters.named_curve())
        .ok_or("the EC key does not name its curve")?;
    if key.public_key.is_none() {
        return Err("the EC key does not hold its public key (write it with openssl ec or pkcs8)".into());
    }
    let algorithm = pkcs8::AlgorithmIdentifierRef {
        oid: sec1::ALGORITHM_OID,
        parameters: Some((&curve).into()),
    };
    pkcs8::PrivateKeyInfo::new(algorithm, sec1_der)
        .to_der()
        .map_err(|e| e.to_string())
}

/// A random positive serial number (RFC 5280 §4.1.2.2: at most 20 octets).
pub fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// A certificate chain and its private key, as rustls serves them.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    private: &PrivateKeyDer<'_>,
    what: &str,
) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, PkiError> {
    let signing = rustls::crypto::ring::sign::any_supported_type(private).map_err(|e| PkiError::Load {
        what: what.to_string(),
        problem: e.to_string(),
    })?;
    Ok(std::sync::Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
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
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!((mode("issuer.key"), mode("ca.crt")), (0o600, 0o644));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ec_keys_as_openssl_and_cert_manager_write_them_sign() {
        for fixture in [
            include_str!("../tests/fixtures/ec-p256-sec1.key"),
            include_str!("../tests/fixtures/ec-p384-sec1.key"),
        ] {
            let key = load_key(fixture, "issuer key").unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            assert!(rcgen::CertifiedIssuer::self_signed(params, key).is_ok());
        }
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
