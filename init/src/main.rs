use std::process::ExitCode;

use clap::Parser;
use strait_init::{Action, Args, Config, iptables};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("strait-init: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match config.action {
        Action::DryRun => {
            print!("{}", strait_init::dry_run(&config));
            Ok(())
        }
        Action::Apply => iptables::apply(&config),
        Action::Cleanup => iptables::cleanup(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("strait-init: {error}");
            ExitCode::FAILURE
        }
    }
}
