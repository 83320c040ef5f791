//! The settings of one run, from flags or the `STRAIT_*` variables the
//! injector writes (a flag wins over its variable).

use clap::{Parser, ValueEnum};
use strait_contract::names::{self, env};
use strait_contract::{Cidr, PortSet, parse_cidrs};

use crate::rules::Family;

/// Command line; every setting also reads a `STRAIT_*` variable.
#[derive(Debug, Default, Parser)]
#[command(name = "strait-init", version, about)]
pub struct Args {
    /// Ports whose inbound traffic bypasses the proxy (`22,8000-8100`) [env: STRAIT_SKIP_INBOUND_PORTS]
    #[arg(long)]
    pub skip_inbound_ports: Option<String>,
    /// Destination ports whose outbound traffic bypasses the proxy [env: STRAIT_SKIP_OUTBOUND_PORTS]
    #[arg(long)]
    pub skip_outbound_ports: Option<String>,
    /// Destination CIDRs whose outbound traffic bypasses the proxy [env: STRAIT_SKIP_OUTBOUND_CIDRS]
    #[arg(long)]
    pub skip_outbound_cidrs: Option<String>,
    /// The proxy's uid; its own connections are never redirected [env: STRAIT_PROXY_UID]
    #[arg(long)]
    pub proxy_uid: Option<String>,
    /// The proxy's inbound listener port [env: STRAIT_INBOUND_PORT]
    #[arg(long)]
    pub inbound_port: Option<String>,
    /// The proxy's outbound listener port [env: STRAIT_OUTBOUND_PORT]
    #[arg(long)]
    pub outbound_port: Option<String>,
    /// The proxy's admin port, never redirected [env: STRAIT_ADMIN_PORT]
    #[arg(long)]
    pub admin_port: Option<String>,
    /// iptables backend: auto, nft or legacy [env: STRAIT_IPTABLES_MODE]
    #[arg(long)]
    pub iptables_mode: Option<String>,
    /// IPv6 rules: auto (when the namespace has IPv6), on or off [env: STRAIT_IPV6]
    #[arg(long)]
    pub ipv6: Option<String>,
    /// Print the rules instead of applying them.
    #[arg(long, conflicts_with = "cleanup")]
    pub dry_run: bool,
    /// Remove strait's chains and the jumps to them, nothing else.
    #[arg(long)]
    pub cleanup: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Apply,
    DryRun,
    Cleanup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub action: Action,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound_ports: PortSet,
    pub skip_outbound_ports: PortSet,
    pub skip_outbound_cidrs: Vec<Cidr>,
    pub backend: Backend,
    pub ipv6: Ipv6Mode,
}

#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The flag or variable the bad value came from.
    pub setting: String,
    pub problem: String,
}

/// One setting's raw value and where it came from, for error messages.
struct Raw {
    value: String,
    source: String,
}

impl Raw {
    fn pick(flag: Option<String>, flag_name: &str, var: &str, env: &impl Fn(&str) -> Option<String>) -> Option<Raw> {
        if let Some(value) = flag {
            return Some(Raw {
                value,
                source: format!("--{flag_name}"),
            });
        }
        env(var).map(|value| Raw {
            value,
            source: var.to_string(),
        })
    }

    fn parse<T>(self, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        parse(&self.value).map_err(|problem| ConfigError {
            setting: self.source,
            problem,
        })
    }
}

fn number<T: std::str::FromStr>(what: &'static str) -> impl FnOnce(&str) -> Result<T, String> {
    move |text| text.trim().parse::<T>().map_err(|_| format!("invalid {what} {text:?}"))
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("invalid port {text:?}: expected a number from 1 to 65535")),
    }
}

fn choice<T: ValueEnum>(text: &str) -> Result<T, String> {
    T::from_str(text.trim(), true).map_err(|_| {
        let names: Vec<_> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!("invalid value {text:?}: expected one of {}", names.join(", "))
    })
}

impl Config {
    /// Resolves flags and variables (read through `env`, so tests need not
    /// touch the process environment) into a checked configuration.
    pub fn from_args(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let setting = |flag, name, var| Raw::pick(flag, name, var, &env);
        let action = match (args.dry_run, args.cleanup) {
            (true, _) => Action::DryRun,
            (_, true) => Action::Cleanup,
            _ => Action::Apply,
        };
        let port_or = |flag, name, var, default: u16| -> Result<u16, ConfigError> {
            setting(flag, name, var).map_or(Ok(default), |raw: Raw| raw.parse(port))
        };
        let ports = |flag, name, var| -> Result<PortSet, ConfigError> {
            setting(flag, name, var).map_or(Ok(PortSet::default()), |raw: Raw| {
                raw.parse(|text| PortSet::parse(text).map_err(|e| e.to_string()))
            })
        };
        Ok(Config {
            action,
            inbound_port: port_or(
                args.inbound_port,
                "inbound-port",
                env::INBOUND_PORT,
                names::INBOUND_PORT,
            )?,
            outbound_port: port_or(
                args.outbound_port,
                "outbound-port",
                env::OUTBOUND_PORT,
                names::OUTBOUND_PORT,
            )?,
            admin_port: port_or(args.admin_port, "admin-port", env::ADMIN_PORT, names::ADMIN_PORT)?,
            proxy_uid: setting(args.proxy_uid, "proxy-uid", env::PROXY_UID)
                .map_or(Ok(names::PROXY_UID), |raw| raw.parse(number("uid")))?,
            skip_inbound_ports: ports(args.skip_inbound_ports, "skip-inbound-ports", env::SKIP_INBOUND_PORTS)?,
            skip_outbound_ports: ports(
                args.skip_outbound_ports,
                "skip-outbound-ports",
                env::SKIP_OUTBOUND_PORTS,
            )?,
            skip_outbound_cidrs: setting(
                args.skip_outbound_cidrs,
                "skip-outbound-cidrs",
                env::SKIP_OUTBOUND_CIDRS,
            )
            .map_or(Ok(Vec::new()), |raw| {
                raw.parse(|text| parse_cidrs(text).map_err(|e| e.to_string()))
            })?,
            backend: setting(args.iptables_mode, "iptables-mode", env::IPTABLES_MODE)
                .map_or(Ok(Backend::Auto), |raw| raw.parse(choice))?,
            ipv6: setting(args.ipv6, "ipv6", env::IPV6).map_or(Ok(Ipv6Mode::Auto), |raw| raw.parse(choice))?,
        })
    }

    /// The address families to write rules for, given whether the namespace
    /// has IPv6 at all.
    pub fn families(&self, namespace_has_ipv6: bool) -> Vec<Family> {
        let v6 = match self.ipv6 {
            Ipv6Mode::On => true,
            Ipv6Mode::Off => false,
            Ipv6Mode::Auto => namespace_has_ipv6,
        };
        if v6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

#[cfg(test)]
mod tests;
