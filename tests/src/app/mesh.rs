//! A probe of a peer proxy's mesh port: a TLS client with a certificate of
//! the test's choosing (signed by the mesh's issuer, by a CA made up on the
//! spot, expired or not) that completes the handshake, sends the mesh header
//! and a message, and reports whether the echo came back. It shows what a
//! server proxy accepts; it does not check the server (that is the client
//! proxy's job, tested elsewhere).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType, date_time_ymd};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use strait_contract::{SpiffeId, mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, clap::Args)]
pub struct HandshakeArgs {
    /// IP:port of the peer proxy's inbound port.
    #[arg(long)]
    to: String,
    /// The peer's SPIFFE ID; the TLS server name is made from it.
    #[arg(long)]
    server_id: String,
    #[command(flatten)]
    certificate: CertificateArgs,
    /// The application port named in the mesh header.
    #[arg(long)]
    port: u16,
    /// What to send after the header; an echo server should send it back.
    #[arg(long, default_value = "ping")]
    send: String,
}

/// The client certificate a probe presents.
#[derive(Debug, clap::Args)]
pub struct CertificateArgs {
    /// The SPIFFE ID (URI name) the client certificate names.
    #[arg(long)]
    client_id: String,
    /// Sign with this issuer certificate (PEM)…
    #[arg(long, requires = "issuer_key")]
    issuer_cert: Option<PathBuf>,
    /// …and key (PEM). Without them, a CA is made up for the occasion.
    #[arg(long, requires = "issuer_cert")]
    issuer_key: Option<PathBuf>,
    /// Give the certificate a validity that ended in 2020.
    #[arg(long)]
    expired: bool,
}

/// Prints `{"accepted", "answer", "error"}`.
pub async fn handshake(args: HandshakeArgs) -> anyhow::Result<()> {
    let server: SpiffeId = args.server_id.parse().context("--server-id")?;
    let (chain, key) = client_certificate(&args.certificate)?;
    let mut config = any_server()?.with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![mesh::ALPN.to_vec()];
    let exchange = async {
        let stream = TcpStream::connect(&args.to).await?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(server.server_name())?, stream)
            .await?;
        tls.write_all(&mesh::header(args.port)).await?;
        tls.write_all(args.send.as_bytes()).await?;
        let mut answer = vec![0u8; args.send.len()];
        tls.read_exact(&mut answer).await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 10s")));
    let line = match outcome {
        Ok(answer) => json!({"accepted": answer == args.send, "answer": answer, "error": null}),
        Err(error) => json!({"accepted": false, "answer": null, "error": format!("{error:#}")}),
    };
    println!("{line}");
    Ok(())
}

/// A TLS 1.3 client configuration that accepts any server (signatures are
/// still checked), still to be given its client authentication.
pub fn any_server() -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider))))
}

/// A leaf for `args.client_id`, signed by the issuer given or by a CA made
/// up on the spot; the chain is leaf first, then the issuer.
pub fn client_certificate(
    args: &CertificateArgs,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (issuer_pem, issuer_key) = match (&args.issuer_cert, &args.issuer_key) {
        (Some(cert), Some(key)) => (
            std::fs::read_to_string(cert).with_context(|| format!("read {}", cert.display()))?,
            // Helm's genCA writes RSA keys in PKCS#1; the injector reads those.
            strait_injector::pki::load_key(
                &std::fs::read_to_string(key).with_context(|| format!("read {}", key.display()))?,
                "issuer key",
            )?,
        ),
        _ => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            (params.self_signed(&key)?.pem(), key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&issuer_pem, issuer_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(args.client_id.as_str().try_into()?)];
    if args.expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    }
    let leaf = params.signed_by(&key, &issuer)?;
    let mut chain = vec![leaf.der().clone()];
    chain.extend(
        rustls::pki_types::pem::PemObject::pem_slice_iter(issuer_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?,
    );
    Ok((chain, PrivateKeyDer::Pkcs8(key.serialize_der().into())))
}

/// Accepts any server certificate (signatures are still checked): the probe
/// is about what the server accepts.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
