//! The identity service's certificate request handler on any body: a
//! refusal, or a certificate for the caller's own identity only. Half the
//! inputs are raw DER wrapped as a PEM CSR, so the CSR parser itself is
//! reached, not just the JSON around it.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use strait_injector::identity::issue;
use strait_injector::identity::review::ServiceAccount;
use strait_injector::identity::sign::Signer;

const TRUST_DOMAIN: &str = "cluster.local";
const IDENTITY: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("a CA certificate");
        Signer::load(&ca.pem(), &key.serialize_pem(), Duration::from_secs(3600)).expect("the signer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let body = match data.split_first() {
        Some((mode, der)) if mode % 2 == 1 => {
            let pem = format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            );
            serde_json::json!({"identity": IDENTITY, "csr": pem})
                .to_string()
                .into_bytes()
        }
        _ => data.to_vec(),
    };
    let account = ServiceAccount {
        namespace: "demo".into(),
        name: "web".into(),
    };
    if let Ok(issued) = issue(signer(), TRUST_DOMAIN, &account, &body) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.certificate.as_bytes()).expect("the certificate is PEM");
        let certificate = pem.parse_x509().expect("the certificate parses");
        let names = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| format!("{:?}", san.value.general_names))
            .unwrap_or_default();
        assert!(names.contains(IDENTITY), "issued for {names}");
    }
});
