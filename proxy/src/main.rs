use std::io::IsTerminal;
use std::process::ExitCode;

use strait_contract::Chain;
use strait_contract::logging::{self, TextStyle};
use strait_proxy::{Config, Proxy};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("wait-ready") {
        return wait_ready(&args[2..]);
    }
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("strait-proxy: bad setting {error}");
            return ExitCode::from(2);
        }
    };
    let style = TextStyle {
        ansi: std::io::stdout().is_terminal(),
        target: false,
    };
    if let Err(error) = logging::init(&config.log_level, config.log_format, std::io::stdout, style) {
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
    let mut builder = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.worker_threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("strait-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let built = Proxy::build(config).map_err(|e| Chain(&e).to_string());
        let bound = match built.and_then(|proxy| proxy.bind().map_err(|e| Chain(&e).to_string())) {
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

/// `strait-proxy wait-ready [--timeout 120s]`: waits until the proxy in
/// this pod is ready, for a postStart hook that holds the application back
/// when the proxy is not a native sidecar.
fn wait_ready(args: &[String]) -> ExitCode {
    let timeout = match args {
        [] => std::time::Duration::from_secs(120),
        [flag, value] if flag == "--timeout" => match strait_contract::parse_duration(value) {
            Ok(timeout) => timeout,
            Err(error) => {
                eprintln!("strait-proxy wait-ready: --timeout: {error}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: strait-proxy wait-ready [--timeout DURATION]");
            return ExitCode::from(2);
        }
    };
    let admin = std::env::var(strait_proxy::config::ADMIN_ADDR)
        .ok()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map_or(4191, |a| a.port());
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ready(admin) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("strait-proxy wait-ready: the proxy was not ready within {timeout:?}");
    ExitCode::FAILURE
}

fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    if stream.write_all(b"GET /ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}
