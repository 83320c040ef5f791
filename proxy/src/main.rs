use std::io::IsTerminal;
use std::process::ExitCode;

use strait_proxy::{Config, Proxy};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("strait-proxy: bad setting {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = init_logging(&config.log_level) {
        eprintln!(
            "strait-proxy: bad setting {}={:?}: {error}",
            strait_proxy::config::LOG_LEVEL,
            config.log_level
        );
        return ExitCode::from(2);
    }
    tracing::info!(config = %config.describe(), "starting");
    // One TLS implementation for every client in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("strait-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let built = Proxy::build(config).map_err(|e| e.to_string());
        let bound = match built.and_then(|proxy| proxy.bind().map_err(|e| e.to_string())) {
            Ok(bound) => bound,
            Err(error) => {
                eprintln!("strait-proxy: {error}");
                return ExitCode::FAILURE;
            }
        };
        bound.run(termination()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn init_logging(level: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; only POST /shutdown will stop the proxy");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
