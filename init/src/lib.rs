//! strait-init: the pod's init container.
//!
//! It runs once in the pod's network namespace, before any other container,
//! and installs the nat rules that send inbound TCP to the proxy's inbound
//! listener and outbound TCP to its outbound listener. The rules are rendered
//! as one iptables-restore script per address family and applied atomically.
//! In CNI mode `strait-cni` writes the same rules from the same builder, and
//! its `validate` command (no privilege) checks they work, with [`validate`].

pub mod config;
pub mod iptables;
pub mod rules;
pub mod validate;

pub use config::{Action, Args, Backend, Config, ConfigError, Ipv6Mode};
pub use rules::Family;

/// The rule scripts for a clean namespace, as `--dry-run` prints them.
pub fn dry_run(config: &Config) -> String {
    let mut out = String::new();
    for family in config.families(iptables::namespace_has_ipv6()) {
        out.push_str(&format!("# {} (iptables-restore --noflush)\n", family.tool()));
        out.push_str(&rules::render(config, family, &rules::Jumps::default()));
    }
    out
}
