use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use strait_contract::logging::{self, LogFormat, TextStyle};
use strait_injector::bootstrap::{self, OwnSecret, WebhookCert};
use strait_injector::destination::{self, DestinationService};
use strait_injector::identity::review::KubeTokenReviewer;
use strait_injector::identity::sign::Signer;
use strait_injector::identity::{self, IdentityService};
use strait_injector::namespaces::NamespaceCache;
use strait_injector::serve::{IssuerSource, ServeConfig, WebhookCertSource, WebhookMetrics, serve_webhook};
use strait_injector::tls::{self, FileCert};
use strait_injector::{InjectSettings, admin, offline, pki};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "strait-injector", version, about = "strait's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the admission webhook (and the admin port).
    Serve,
    /// Inject the proxy into every pod template of Kubernetes YAML, with
    /// the chart's settings given as STRAIT_* variables (the injector
    /// Deployment's).
    Inject {
        /// A file, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// The namespace objects without one will be applied to (their
        /// proxies' SPIFFE identities name it); written into them.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The mesh's trust anchors (PEM), which every injected proxy needs
        /// (else STRAIT_TRUST_ANCHORS_FILE).
        #[arg(long)]
        trust_anchors: Option<PathBuf>,
    },
    /// Certificates for the mesh's identity.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Write a new trust anchor (ca.crt) and issuer (issuer.crt, issuer.key).
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = strait_contract::names::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("STRAIT_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let format = std::env::var(logging::LOG_FORMAT).unwrap_or_else(|_| "text".into());
    let style = TextStyle {
        ansi: std::io::stderr().is_terminal(),
        target: true,
    };
    let logs = LogFormat::parse(&format)
        .map_err(|problem| format!("{}={format:?}: {problem}", logging::LOG_FORMAT))
        .and_then(|format| {
            logging::init(&filter, format, std::io::stderr, style)
                .map_err(|problem| format!("STRAIT_LOG_LEVEL={filter:?}: {problem}"))
        });
    if let Err(problem) = logs {
        eprintln!("strait-injector: bad setting {problem}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Inject {
            file,
            namespace,
            trust_anchors,
        } => inject(&file, namespace.as_deref(), trust_anchors.as_deref()),
        Command::Ca {
            command: CaCommand::Generate { out, trust_domain },
        } => pki::generate(&out, &trust_domain)
            .map_err(anyhow::Error::from)
            .map(|()| {
                println!("wrote {}/ca.crt, issuer.crt and issuer.key", out.display());
            }),
        Command::Serve => serve(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("strait-injector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn inject(file: &str, namespace: Option<&str>, trust_anchors: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let mut settings = InjectSettings::from_env(|name| std::env::var(name).ok())?;
    if let Some(path) = trust_anchors {
        settings.trust_anchors_pem =
            std::fs::read_to_string(path).with_context(|| format!("--trust-anchors {}", path.display()))?;
    }
    if !settings.trust_anchors_pem.trim().is_empty() {
        pki::load_certs(&settings.trust_anchors_pem, "the trust anchors")?;
    }
    let (yaml, notes) = offline::inject_yaml(&text, &settings, namespace).with_context(|| file.to_string())?;
    for note in notes {
        eprintln!("{note}");
    }
    print!("{yaml}");
    Ok(())
}

fn serve() -> anyhow::Result<()> {
    let config = ServeConfig::from_env(|name| std::env::var(name).ok()).context("bad setting")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(config))
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The identity issuer (certificate, key) and trust anchors, from the
/// user's files or from the control plane's own Secret.
async fn issuer(config: &ServeConfig, secrets: &Api<Secret>) -> anyhow::Result<(String, String, String)> {
    match &config.issuer {
        IssuerSource::Files { cert, key } => {
            let read =
                |path: &std::path::Path| std::fs::read_to_string(path).with_context(|| format!("{}", path.display()));
            Ok((read(cert)?, read(key)?, config.inject.trust_anchors_pem.clone()))
        }
        IssuerSource::Bootstrap { secret } => {
            let own = OwnSecret {
                api: secrets,
                namespace: &config.namespace,
                name: secret,
            };
            let trust_domain = config.inject.trust_domain.clone();
            let mut data = own
                .get_or_create(&["ca.crt", "tls.crt", "tls.key"], || {
                    bootstrap::new_mesh_ca(&trust_domain)
                })
                .await?;
            let mut take = |key: &str| data.remove(key).unwrap_or_default();
            Ok((take("tls.crt"), take("tls.key"), take("ca.crt")))
        }
    }
}

/// The webhook's TLS configuration; in bootstrap mode also starts keeping
/// the `caBundle` in step, reporting through `in_step`.
async fn webhook_tls(
    config: &ServeConfig,
    client: &kube::Client,
    secrets: &Api<Secret>,
    in_step: watch::Sender<bool>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    match &config.webhook_cert {
        WebhookCertSource::Files { cert, key } => {
            let _ = in_step.send(true);
            Ok(FileCert::new(cert.clone(), key.clone())?
                .server_config(&ALPN)
                .context("webhook TLS")?)
        }
        WebhookCertSource::Bootstrap {
            secret,
            configuration,
            dns_names,
        } => {
            let own = OwnSecret {
                api: secrets,
                namespace: &config.namespace,
                name: secret,
            };
            let ca = own
                .get_or_create(&["ca.crt", "ca.key"], bootstrap::new_webhook_ca)
                .await?;
            let cert = WebhookCert::new(&ca["ca.crt"], &ca["ca.key"], dns_names.clone())?;
            tokio::spawn(bootstrap::keep_ca_bundle(
                client.clone(),
                configuration.clone(),
                ca["ca.crt"].clone(),
                in_step,
            ));
            Ok(tls::server_config(Arc::new(cert), &ALPN).context("webhook TLS")?)
        }
    }
}

async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("Kubernetes client")?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &config.namespace);
    let (in_step_tx, in_step) = watch::channel(false);
    let tls = webhook_tls(&config, &client, &secrets, in_step_tx).await?;
    let (issuer_cert, issuer_key, anchors) = issuer(&config, &secrets).await?;
    anyhow::ensure!(
        !anchors.trim().is_empty(),
        "no trust anchors: set STRAIT_TRUST_ANCHORS_FILE, or STRAIT_IDENTITY_SECRET for the control plane's own"
    );
    let signer = Signer::load(&issuer_cert, &issuer_key, config.cert_lifetime)?.trusting(&anchors)?;
    let (chain, key) = signer.serving_certificate(&config.identity_names())?;
    let identity_tls = identity_tls(chain, key)?;
    let (chain, key) = signer.serving_certificate(&config.destination_names())?;
    let destination_tls =
        destination::serve::server_config(chain, key, &pki::load_certs(&anchors, "the trust anchors")?)
            .context("destination service TLS")?;
    let index = Arc::new(destination::Index::new(&config.inject.trust_domain));
    let destinations_synced = destination::reflect::start(client.clone(), index.clone());
    tokio::spawn(destination::status::write(client.clone(), index.clone()));

    let namespaces = NamespaceCache::start(client.clone());
    let mut registry = prometheus_client::registry::Registry::with_prefix("strait_control");
    let webhook_metrics = WebhookMetrics::register(&mut registry);
    let service = Arc::new(IdentityService::new(
        signer,
        Arc::new(KubeTokenReviewer::new(client)),
        config.inject.trust_domain.clone(),
        &mut registry,
    ));
    let listen = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))
    };
    let (identity_listener, destination_listener, webhook, admin_listener) = (
        listen(config.identity_listen).await?,
        listen(config.destination_listen).await?,
        listen(config.webhook_addr).await?,
        listen(config.admin_addr).await?,
    );
    let (stop_tx, stop) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let pending = {
        let (namespaces, draining) = (namespaces.clone(), draining.clone());
        Arc::new(move || {
            let mut pending = Vec::new();
            if !namespaces.is_synced() || !*destinations_synced.borrow() {
                pending.push("caches not synced");
            }
            if !*in_step.borrow() {
                pending.push("the webhook configuration's caBundle is not set yet");
            }
            if draining.load(Ordering::Relaxed) {
                pending.push("draining");
            }
            pending
        })
    };
    tokio::spawn(admin::serve(admin_listener, Arc::new(registry), pending));
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(identity::serve(identity_listener, identity_tls, service, stop.clone()));
    let destinations = DestinationService::new(index, &config.inject.trust_domain, stop.clone());
    servers.spawn(destination::serve::serve(
        destination_listener,
        destination_tls,
        destinations,
        stop.clone(),
    ));
    let mut inject = config.inject.clone();
    inject.trust_anchors_pem = anchors;
    servers.spawn(serve_webhook(
        webhook,
        tls,
        namespaces,
        Arc::new(inject),
        webhook_metrics,
        stop,
    ));
    tracing::info!(webhook = %config.webhook_addr, admin = %config.admin_addr, "control plane running");

    let signal = shutdown_signal().await;
    // Not ready at once, so the API server's and the proxies' endpoints
    // drop this replica; serving meanwhile, then closing connections once
    // their requests are answered.
    draining.store(true, Ordering::Relaxed);
    tracing::info!(signal, delay = ?config.shutdown_delay, "draining: not ready, still serving");
    tokio::time::sleep(config.shutdown_delay).await;
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    tracing::info!("control plane stopped");
    Ok(())
}

/// The first of SIGTERM (the kubelet stopping the pod) and SIGINT.
async fn shutdown_signal() -> &'static str {
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGTERM; only SIGINT stops the control plane");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn identity_tls(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
