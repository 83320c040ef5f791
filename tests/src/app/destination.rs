//! A probe of the control plane's destination service
//! (`strait.destination.v1.Destination/Get`) with a client certificate of the
//! test's choosing, or none: it shows whom the service answers. The server's
//! certificate is not checked (that is the proxies' job, tested by every
//! discovery test).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use strait_api::client::Target;
use strait_api::destination::v1::destination_client::DestinationClient;
use strait_api::destination::v1::{GetDestination, update};

use super::mesh::{CertificateArgs, any_server, client_certificate};

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// host:port of the destination service.
    #[arg(long)]
    to: String,
    /// The original destination to ask about (ClusterIP:port or pod IP:port).
    #[arg(long)]
    address: String,
    /// Present no client certificate at all.
    #[arg(long, conflicts_with_all = ["client_id", "issuer_cert", "issuer_key", "expired"])]
    anonymous: bool,
    #[command(flatten)]
    certificate: Option<CertificateArgs>,
}

/// Prints `{"code", "message", "first", "service", "endpoints"}`: `code` is
/// the gRPC status (`Ok` when the first message arrived), `first` the kind
/// of the first message, `endpoints` the addresses it held.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let config = match (&args.certificate, args.anonymous) {
        (Some(certificate), false) => {
            let (chain, key) = client_certificate(certificate)?;
            any_server()?.with_client_auth_cert(chain, key)?
        }
        _ => any_server()?.with_no_client_auth(),
    };
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let target = Target::parse(&args.to)?;
    let connector = target.connector(move || Ok(config.clone()));
    let ask = async {
        let channel = target
            .endpoint()?
            .connect_with_connector(connector)
            .await
            .map_err(|e| anyhow::anyhow!("connect: {}", error_chain(&e)))?;
        let mut client = DestinationClient::new(channel);
        let response = client
            .get(GetDestination {
                address: args.address.clone(),
            })
            .await;
        let mut updates = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return anyhow::Ok(refused(&status)),
        };
        Ok(match updates.next().await {
            Some(Ok(message)) => {
                let (first, service, endpoints) = match message.kind {
                    Some(update::Kind::Snapshot(s)) => (
                        "snapshot",
                        s.service.map(|p| format!("{}/{}:{}", p.namespace, p.name, p.port)),
                        s.endpoints,
                    ),
                    Some(update::Kind::Add(_)) => ("add", None, Vec::new()),
                    Some(update::Kind::Remove(_)) => ("remove", None, Vec::new()),
                    Some(update::Kind::Routes(_)) => ("routes", None, Vec::new()),
                    None => ("none", None, Vec::new()),
                };
                let identities: Vec<&str> = endpoints.iter().map(|e| e.identity.as_str()).collect();
                let endpoints: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
                json!({"code": "Ok", "message": null, "first": first, "service": service,
                       "endpoints": endpoints, "identities": identities})
            }
            Some(Err(status)) => refused(&status),
            None => json!({"code": "Ok", "message": "the stream ended with no message", "first": null}),
        })
    };
    let line = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 10s")))
        .unwrap_or_else(|error| json!({"code": "Transport", "message": format!("{error:#}"), "first": null}));
    println!("{line}");
    Ok(())
}

fn refused(status: &tonic::Status) -> serde_json::Value {
    json!({"code": format!("{:?}", status.code()), "message": status.message(), "first": null})
}

/// An error with its causes, outermost first.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
