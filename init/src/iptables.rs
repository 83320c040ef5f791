//! Runs the iptables tools: backend detection, atomic apply and cleanup.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::{Backend, Config};
use crate::rules::{self, Family, Jumps};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("no working iptables found: tried {tried}")]
    NoBackend { tried: String },
    #[error("the {family} nat table differs from strait's rules: {}", differences.join("; "))]
    Drift {
        family: &'static str,
        differences: Vec<String>,
    },
    #[error("{family} rules failed ({error}); the {applied} rules applied before were removed again")]
    RolledBack {
        family: &'static str,
        applied: &'static str,
        error: Box<IptablesError>,
    },
}

/// One family's save and restore commands for one backend.
#[derive(Clone, Debug)]
struct Tools {
    save: String,
    restore: String,
}

impl Tools {
    fn for_backend(backend: Backend, family: Family) -> Vec<Tools> {
        let base = family.tool();
        let named = |suffix: &str| Tools {
            save: format!("{base}-{suffix}-save"),
            restore: format!("{base}-{suffix}-restore"),
        };
        let plain = Tools {
            save: format!("{base}-save"),
            restore: format!("{base}-restore"),
        };
        match backend {
            Backend::Nft => vec![named("nft")],
            Backend::Legacy => vec![named("legacy")],
            Backend::Auto => vec![named("legacy"), plain],
        }
    }

    fn save(&self) -> Result<String, IptablesError> {
        run(&self.save, &["-t", "nat"], None)
    }

    fn restore(&self, script: &str) -> Result<(), IptablesError> {
        run(&self.restore, &["-w", "5", "--noflush"], Some(script)).map(drop)
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| IptablesError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(IptablesError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Counts the rules (not chain declarations) in iptables-save output.
fn rule_count(saved: &str) -> usize {
    saved.lines().filter(|line| line.starts_with("-A ")).count()
}

/// Picks the backend: the one forced by the config, else nft when it works,
/// unless only the legacy tables already hold nat rules in this namespace
/// (then strait's rules go where the others are, so both are evaluated).
/// Legacy is probed only when its nat table already exists here, because
/// probing it would create the table.
fn detect(config: &Config, family: Family) -> Result<(Tools, String), IptablesError> {
    let mut failures = Vec::new();
    let mut first_working = |candidates: Vec<Tools>| {
        candidates.into_iter().find_map(|tools| match tools.save() {
            Ok(saved) => Some((tools, saved)),
            Err(error) => {
                failures.push(error.to_string());
                None
            }
        })
    };
    let found = match config.backend {
        Backend::Nft | Backend::Legacy => first_working(Tools::for_backend(config.backend, family)),
        Backend::Auto => match first_working(Tools::for_backend(Backend::Nft, family)) {
            Some(nft) if rule_count(&nft.1) == 0 && legacy_nat_exists(family) => {
                let legacy = first_working(Tools::for_backend(Backend::Legacy, family));
                Some(legacy.filter(|(_, saved)| rule_count(saved) > 0).unwrap_or(nft))
            }
            Some(nft) => Some(nft),
            None => first_working(Tools::for_backend(Backend::Auto, family)),
        },
    };
    found.ok_or_else(|| IptablesError::NoBackend {
        tried: failures.join("; "),
    })
}

/// Whether the legacy nat table has been instantiated in this namespace.
fn legacy_nat_exists(family: Family) -> bool {
    let names = match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    };
    std::fs::read_to_string(names).is_ok_and(|text| text.lines().any(|line| line.trim() == "nat"))
}

/// Whether this network namespace has IPv6 configured at all.
pub fn namespace_has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|text| !text.trim().is_empty())
}

/// Installs the rules for every family, all or nothing.
pub fn apply(config: &Config) -> Result<(), IptablesError> {
    let mut applied: Vec<(Family, Tools)> = Vec::new();
    for family in config.families(namespace_has_ipv6()) {
        let result = detect(config, family).and_then(|(tools, saved)| {
            tools.restore(&rules::render(config, family, &Jumps::read(&saved)))?;
            Ok(tools)
        });
        match result {
            Ok(tools) => applied.push((family, tools)),
            Err(error) => {
                let Some((done, tools)) = applied.pop() else {
                    return Err(error);
                };
                remove(&tools)?;
                return Err(IptablesError::RolledBack {
                    family: family.tool(),
                    applied: done.tool(),
                    error: Box::new(error),
                });
            }
        }
    }
    Ok(())
}

/// Checks that every family's nat table holds exactly the rules `apply`
/// writes for `config` in strait's chains, in order, and both jumps (other
/// chains may hold anything).
pub fn verify(config: &Config) -> Result<(), IptablesError> {
    for family in config.families(namespace_has_ipv6()) {
        let (_, saved) = detect(config, family)?;
        let differences = rules::differences(config, family, &saved);
        if !differences.is_empty() {
            return Err(IptablesError::Drift {
                family: family.tool(),
                differences,
            });
        }
    }
    Ok(())
}

/// Whether this machine can run any iptables tool at all (a CNI plugin's
/// STATUS: without one, no pod can be given its redirects).
pub fn available() -> Result<(), IptablesError> {
    let mut tried = Vec::new();
    for tools in Tools::for_backend(Backend::Auto, Family::V4)
        .into_iter()
        .chain(Tools::for_backend(Backend::Nft, Family::V4))
    {
        match run(&tools.save, &["--version"], None) {
            Ok(_) => return Ok(()),
            Err(error) => tried.push(error.to_string()),
        }
    }
    Err(IptablesError::NoBackend {
        tried: tried.join("; "),
    })
}

/// Removes strait's chains and jumps for every family.
pub fn cleanup(config: &Config) -> Result<(), IptablesError> {
    for family in config.families(namespace_has_ipv6()) {
        let (tools, _) = detect(config, family)?;
        remove(&tools)?;
    }
    Ok(())
}

fn remove(tools: &Tools) -> Result<(), IptablesError> {
    match rules::render_cleanup(&tools.save()?) {
        Some(script) => tools.restore(&script),
        None => Ok(()),
    }
}
