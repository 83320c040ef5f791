use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use strait_lab::cli::{self, Cli, Command};
use strait_lab::kubelet::sandbox::sandbox_main;
use strait_lab::paths::LabPaths;

#[allow(unsafe_code)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only print what they read get the default SIGPIPE
    // action back, so `strait-lab status | head` ends quietly as
    // command-line tools do. Everything that serves or waits keeps Rust's
    // (ignored: a peer gone is an EPIPE error to handle): the daemon writes
    // to sockets and plugin pipes whose readers may be gone, and with the
    // default action one closed connection ended the whole lab.
    if matches!(
        cli.command,
        Command::Status { .. } | Command::Get { .. } | Command::Logs { .. } | Command::Apiserver { .. }
    ) {
        // SAFETY: before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The sandbox changes namespaces, which needs a single-threaded process.
    if let Command::Sandbox(args) = cli.command {
        return sandbox_main(args);
    }
    let paths = LabPaths::from_env();
    if let Command::PortForward(args) = cli.command {
        return strait_lab::forward::forward_main(args, &paths);
    }
    if !paths
        .name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || paths.name.is_empty()
    {
        eprintln!(
            "strait-lab: {}={:?}: use lowercase letters, digits and '-'",
            strait_lab::paths::LAB_NAME_ENV,
            paths.name
        );
        return ExitCode::from(2);
    }
    let filter = std::env::var("STRAIT_LAB_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("strait-lab: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command, paths)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("strait-lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}
