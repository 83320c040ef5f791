use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strait_injector::identity::pods::PodIndex;
use strait_injector::identity::review::KubeTokenReviewer;
use strait_injector::identity::sign::Signer;
use strait_injector::identity::{self, IdentityService};
use strait_injector::namespaces::NamespaceCache;
use strait_injector::serve::{ServeConfig, serve_webhook};
use strait_injector::tls::FileCert;
use strait_injector::{InjectSettings, admin, offline, pki};

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
    /// Inject the proxy into every pod template of Kubernetes YAML.
    Inject {
        /// A file, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Inject { file } => inject(&file),
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

fn inject(file: &str) -> anyhow::Result<()> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let settings = InjectSettings::from_env(|name| std::env::var(name).ok())?;
    let (yaml, notes) = offline::inject_yaml(&text, &settings).with_context(|| file.to_string())?;
    for note in notes {
        eprintln!("{note}");
    }
    print!("{yaml}");
    Ok(())
}

fn serve() -> anyhow::Result<()> {
    let config = ServeConfig::from_env(|name| std::env::var(name).ok()).context("bad setting")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = FileCert::new(config.webhook_cert.clone(), config.webhook_key.clone())?
        .server_config(&[b"h2", b"http/1.1"])
        .context("webhook TLS")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let issuer_cert =
        std::fs::read_to_string(&config.issuer_cert).with_context(|| format!("{}", config.issuer_cert.display()))?;
    let issuer_key =
        std::fs::read_to_string(&config.issuer_key).with_context(|| format!("{}", config.issuer_key.display()))?;
    let signer = Signer::load(&issuer_cert, &issuer_key, config.cert_lifetime)?;
    let (chain, key) = signer.serving_certificate(&config.identity_names())?;
    let identity_tls = identity_tls(chain, key)?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await.context("Kubernetes client")?;
        let namespaces = NamespaceCache::start(client.clone());
        let pods = PodIndex::start(client.clone());
        let mut registry = prometheus_client::registry::Registry::with_prefix("strait_control");
        let service = Arc::new(IdentityService::new(
            signer,
            Arc::new(KubeTokenReviewer::new(client)),
            pods.clone(),
            config.inject.trust_domain.clone(),
            &mut registry,
        ));
        let identity_listener = tokio::net::TcpListener::bind(config.identity_listen)
            .await
            .with_context(|| format!("listen on {}", config.identity_listen))?;
        tokio::spawn(identity::serve(identity_listener, identity_tls, service));
        let webhook = tokio::net::TcpListener::bind(config.webhook_addr)
            .await
            .with_context(|| format!("listen on {}", config.webhook_addr))?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("listen on {}", config.admin_addr))?;
        tracing::info!(webhook = %config.webhook_addr, admin = %config.admin_addr, "control plane running");
        let registry = Arc::new(prometheus_client::registry::Registry::with_prefix("strait_control"));
        let synced = namespaces.clone();
        tokio::spawn(admin::serve(
            admin_listener,
            registry,
            Arc::new(move || synced.is_synced()),
        ));
        let settings = Arc::new(config.inject);
        tokio::select! {
            () = serve_webhook(webhook, tls, namespaces, settings) => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        Ok(())
    })
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
