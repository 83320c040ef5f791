//! `strait-cni`: run by a container runtime (with `CNI_COMMAND` set) it is
//! the chained plugin; run by the DaemonSet it installs itself
//! (`strait-cni install`) and reports whether it is installed
//! (`strait-cni installed`, the readiness probe); in a meshed pod it is the
//! validator (`strait-cni validate`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rscni_plugin::cni::Plugin;
use strait_cni::install::{self, Layout};
use strait_cni::plugin::StraitCni;

#[derive(Debug, Parser)]
#[command(name = "strait-cni", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy the plugin to the node, chain it into the node's CNI
    /// configuration, keep it there, and remove it all on SIGTERM.
    Install(install::InstallArgs),
    /// Exit 0 when the node is set up, 1 saying what is missing.
    Installed(Layout),
    /// CNI mode's init container: check, with no privilege, that this pod's
    /// outbound TCP reaches the proxy (settings from the same `STRAIT_*`
    /// variables as strait-init's); exit 1 naming the cause when it does not.
    Validate,
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        let about = format!("strait-cni {}: strait's chained CNI plugin", env!("CARGO_PKG_VERSION"));
        // The error result is on stdout already, as the spec asks.
        return match Plugin::default().msg(&about).run(&StraitCni) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    match Cli::parse().command {
        Command::Install(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("strait-cni: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(install::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("strait-cni: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate => {
            let checked = strait_init::Config::from_args(strait_init::Args::default(), |name| std::env::var(name).ok())
                .map_err(anyhow::Error::from)
                .and_then(|config| strait_init::validate::validate(&config).map_err(anyhow::Error::from));
            match checked {
                Ok(found) => {
                    eprintln!("strait-cni: {found}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("strait-cni: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Installed(layout) => match layout.installed() {
            Ok(()) => ExitCode::SUCCESS,
            Err(problem) => {
                eprintln!("strait-cni: not installed: {problem}");
                ExitCode::FAILURE
            }
        },
    }
}
