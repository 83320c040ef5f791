use rcgen::{BasicConstraints, IsCa};

use super::*;

fn signer() -> Signer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Signer::load(&cert.pem(), &key.serialize_pem(), Duration::from_secs(3600)).unwrap()
}

fn csr(key: &KeyPair, names: Vec<String>) -> String {
    CertificateParams::new(names)
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

fn uris(pem: &str) -> Vec<String> {
    let der = load_certs(pem, "leaf").unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn the_certificate_names_only_the_identity_whatever_the_csr_asked() {
    let signer = signer();
    let key = KeyPair::generate().unwrap();
    let identity = SpiffeId::new("cluster.local", "demo", "web");
    let request = csr(
        &key,
        vec![
            "admin.example.com".into(),
            "spiffe://cluster.local/ns/kube-system/sa/root".into(),
        ],
    );
    let signed = signer.sign(&request, &identity).unwrap();
    assert_eq!(uris(&signed.certificate), ["spiffe://cluster.local/ns/demo/sa/web"]);
    let lifetime = signed.not_after - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((3500..=3600).contains(&lifetime), "{lifetime}");
}

#[test]
fn garbage_and_unaccepted_keys_are_refused() {
    let signer = signer();
    let identity = SpiffeId::new("cluster.local", "demo", "web");
    assert!(matches!(
        signer.sign("not a csr", &identity),
        Err(SignError::MalformedCsr(_))
    ));
    let tampered = csr(&KeyPair::generate().unwrap(), vec![]).replace('A', "B");
    assert!(matches!(
        signer.sign(&tampered, &identity),
        Err(SignError::MalformedCsr(_))
    ));
    let rsa = load_key(include_str!("../../../tests/fixtures/rsa-pkcs1.key"), "rsa").unwrap();
    let error = signer.sign(&csr(&rsa, vec![]), &identity).unwrap_err();
    assert!(matches!(error, SignError::KeyType(_)), "{error}");
}

#[test]
fn an_issuer_key_that_is_not_the_certificates_is_refused_at_load() {
    let dir = std::env::temp_dir().join(format!("strait-mismatch-{}", std::process::id()));
    crate::pki::generate(&dir, "cluster.local").unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let other = KeyPair::generate().unwrap().serialize_pem();
    let error = Signer::load(&read("issuer.crt"), &other, Duration::from_secs(60))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("it is not the key of the issuer certificate"), "{error}");
    let rsa = include_str!("../../../tests/fixtures/rsa-pkcs1.key");
    assert!(Signer::load(&read("issuer.crt"), rsa, Duration::from_secs(60)).is_err());
    assert!(Signer::load(&read("issuer.crt"), &read("issuer.key"), Duration::from_secs(60)).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_issuer_must_be_signed_by_one_of_the_trust_anchors_it_hands_out() {
    let base = std::env::temp_dir().join(format!("strait-trusting-{}", std::process::id()));
    let (old, new) = (base.join("old"), base.join("new"));
    crate::pki::generate(&old, "cluster.local").unwrap();
    crate::pki::generate(&new, "cluster.local").unwrap();
    let read = |dir: &std::path::Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let issuer = |dir: &std::path::Path| {
        Signer::load(
            &read(dir, "issuer.crt"),
            &read(dir, "issuer.key"),
            Duration::from_secs(60),
        )
        .unwrap()
    };
    let bundle = format!("{}{}", read(&old, "ca.crt"), read(&new, "ca.crt"));
    // Mid-rotation: both anchors, either issuer.
    for dir in [&old, &new] {
        let signer = issuer(dir).trusting(&bundle).unwrap();
        assert_eq!(signer.anchors_pem(), bundle);
    }
    // A new issuer before its anchor is trusted would cut the mesh off.
    let error = issuer(&new).trusting(&read(&old, "ca.crt")).err().unwrap().to_string();
    assert!(
        error.contains("does not chain to any of the 1 trust anchor(s)"),
        "{error}"
    );
    // An anchor that is not a certificate would make every proxy refuse the set.
    let broken = format!(
        "{}-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
        read(&old, "ca.crt")
    );
    assert!(issuer(&old).trusting(&broken).is_err());
    assert!(issuer(&old).trusting("not PEM").is_err());
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn an_issuer_under_an_intermediate_chains_through_its_file() {
    use rcgen::{CertifiedIssuer, DistinguishedName, DnType};
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let root = CertifiedIssuer::self_signed(ca("root"), KeyPair::generate().unwrap()).unwrap();
    let intermediate = CertifiedIssuer::signed_by(ca("intermediate"), KeyPair::generate().unwrap(), &root).unwrap();
    let issuer_key = KeyPair::generate().unwrap();
    let issuer = ca("issuer").signed_by(&issuer_key, &intermediate).unwrap();
    let file = format!("{}{}", issuer.pem(), intermediate.pem());
    let signer = Signer::load(&file, &issuer_key.serialize_pem(), Duration::from_secs(60)).unwrap();
    signer.trusting(&root.pem()).unwrap();
    // Without the intermediate in its file, the issuer does not reach the root.
    let alone = Signer::load(&issuer.pem(), &issuer_key.serialize_pem(), Duration::from_secs(60)).unwrap();
    assert!(alone.trusting(&root.pem()).is_err());
}
