//! A client of the identity service that does what a proxy does, or what an
//! attacker might: show a token, send a CSR, and report what came back.
//! It trusts the anchors in `STRAIT_TRUST_ANCHORS`, as the proxy does.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use strait_contract::identity_api::{CERTIFICATES_PATH, CertificateRequest};
use strait_contract::names::env;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// host:port of the identity service.
    #[arg(long, default_value = "strait-identity.strait-system.svc.cluster.local:8083")]
    service: String,
    /// A file holding the bearer token to show.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The bearer token itself.
    #[arg(long)]
    token: Option<String>,
    /// The SPIFFE ID to ask for.
    #[arg(long)]
    identity: String,
    /// The URI name the CSR asks for (default: the identity).
    #[arg(long)]
    csr_uri: Option<String>,
    /// Send this text in place of a CSR.
    #[arg(long)]
    csr_text: Option<String>,
}

/// Prints `{"status", "error", "uris"}`: the HTTP status, the service's
/// error message, and the URI names of the certificate it issued, if any.
pub async fn request(args: RequestArgs) -> anyhow::Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        (None, None) => bail!("give --token or --token-file"),
    };
    let csr = match &args.csr_text {
        Some(text) => text.clone(),
        None => {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            let uri = args.csr_uri.as_deref().unwrap_or(&args.identity);
            params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into()?)];
            params.serialize_request(&key)?.pem()?
        }
    };
    let body = serde_json::to_vec(&CertificateRequest {
        identity: args.identity.clone(),
        csr,
    })?;
    let (status, body) = post(&args.service, token.trim(), Bytes::from(body)).await?;
    let answer: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&body)}));
    let uris = answer["certificate"]
        .as_str()
        .map(uri_names)
        .transpose()?
        .unwrap_or_default();
    println!("{}", json!({"status": status, "error": answer["error"], "uris": uris}));
    Ok(())
}

async fn post(service: &str, token: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    let anchors = std::env::var(env::TRUST_ANCHORS).with_context(|| format!("{} is not set", env::TRUST_ANCHORS))?;
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(anchors.as_bytes()) {
        roots.add(certificate?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = service.rsplit_once(':').map_or(service, |(host, _)| host).to_string();
    let stream = TcpStream::connect(service)
        .await
        .with_context(|| format!("connect to {service}"))?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(host.clone())?, stream)
        .await
        .context("TLS handshake with the identity service")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::post(CERTIFICATES_PATH)
        .header(header::HOST, host)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn uri_names(pem: &str) -> anyhow::Result<Vec<String>> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("the issued certificate is not PEM")?;
    let (_, certificate) =
        x509_parser::parse_x509_certificate(&der).context("the issued certificate does not parse")?;
    let names = certificate
        .subject_alternative_name()?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    Ok(names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect())
}
