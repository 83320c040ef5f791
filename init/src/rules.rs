//! Renders the nat rules as an iptables-restore script.
//!
//! The script only touches strait's own chains and the two jumps into them,
//! so it is applied with `--noflush` and leaves every other rule alone.
//! Declaring a chain in the script flushes it, which makes a second run
//! replace the rules instead of appending to them; the jumps are added only
//! when the namespace does not already have them.

use std::fmt::Write;

use crate::config::Config;

/// Chain that PREROUTING jumps to: inbound TCP.
pub const INBOUND_CHAIN: &str = "STRAIT_INBOUND";
/// Chain that OUTPUT jumps to: outbound TCP.
pub const OUTPUT_CHAIN: &str = "STRAIT_OUTPUT";

/// The jump rules exactly as iptables-save prints them.
pub const INBOUND_JUMP: &str = "-A PREROUTING -p tcp -j STRAIT_INBOUND";
pub const OUTPUT_JUMP: &str = "-A OUTPUT -p tcp -j STRAIT_OUTPUT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The command family name, for messages and binary names.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// What a namespace already has of strait's rules, read from iptables-save.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jumps {
    pub inbound: bool,
    pub output: bool,
}

impl Jumps {
    pub fn read(saved: &str) -> Self {
        let has = |rule: &str| saved.lines().any(|line| line.trim() == rule);
        Jumps {
            inbound: has(INBOUND_JUMP),
            output: has(OUTPUT_JUMP),
        }
    }
}

/// The script that installs (or reinstalls) the rules for one family.
pub fn render(config: &Config, family: Family, existing: &Jumps) -> String {
    let mut out = String::from("*nat\n");
    let mut rule = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    rule(format!(":{INBOUND_CHAIN} - [0:0]"));
    rule(format!(":{OUTPUT_CHAIN} - [0:0]"));

    rule(format!(
        "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {} -j RETURN",
        config.admin_port
    ));
    for range in config.skip_inbound_ports.ranges() {
        rule(format!(
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {} -j RETURN",
            dport(range)
        ));
    }
    rule(format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        config.inbound_port
    ));

    rule(format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        config.proxy_uid
    ));
    rule(format!("-A {OUTPUT_CHAIN} -d {} -j RETURN", family.loopback()));
    for range in config.skip_outbound_ports.ranges() {
        rule(format!(
            "-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {} -j RETURN",
            dport(range)
        ));
    }
    let v4 = family == Family::V4;
    for cidr in config.skip_outbound_cidrs.iter().filter(|c| c.is_ipv4() == v4) {
        // iptables-save prints a match on every address as no match at all.
        match cidr.to_string() {
            all if all.ends_with("/0") => rule(format!("-A {OUTPUT_CHAIN} -j RETURN")),
            cidr => rule(format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN")),
        }
    }
    rule(format!(
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        config.outbound_port
    ));

    if !existing.inbound {
        rule(INBOUND_JUMP.to_string());
    }
    if !existing.output {
        rule(OUTPUT_JUMP.to_string());
    }
    rule("COMMIT".to_string());
    out
}

/// How `saved` (iptables-save output of a nat table) differs from what
/// `render` writes for this family: each of strait's rules that is missing,
/// then, if strait's chains still differ (a rule added among them, or the
/// order changed), what they hold; a missing jump. Empty when the namespace
/// redirects exactly as configured.
pub fn differences(config: &Config, family: Family, saved: &str) -> Vec<String> {
    let expected = render(config, family, &Jumps::default());
    let saved: Vec<&str> = saved.lines().map(str::trim).collect();
    let mut differences = Vec::new();
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        let prefix = format!("-A {chain} ");
        let wanted: Vec<&str> = expected.lines().filter(|l| l.starts_with(&prefix)).collect();
        let held: Vec<&str> = saved.iter().copied().filter(|l| l.starts_with(&prefix)).collect();
        if wanted == held {
            continue;
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|w| !held.contains(w))
            .map(|w| w.to_string())
            .collect();
        if missing.is_empty() {
            differences.push(format!("{chain} holds [{}]", held.join(", ")));
        }
        differences.extend(missing);
    }
    for jump in [INBOUND_JUMP, OUTPUT_JUMP] {
        if !saved.contains(&jump) {
            differences.push(jump.to_string());
        }
    }
    differences
}

/// The script that removes strait's jumps and chains, given iptables-save
/// output; `None` when there is nothing of strait's to remove.
pub fn render_cleanup(saved: &str) -> Option<String> {
    let ours = |target: &str| format!("-j {target}");
    let mut out = String::from("*nat\n");
    let mut found = false;
    for line in saved.lines().map(str::trim) {
        let jumps_to_ours = [INBOUND_CHAIN, OUTPUT_CHAIN]
            .iter()
            .any(|chain| line.ends_with(&ours(chain)));
        if let Some(rest) = line.strip_prefix("-A ") {
            let builtin = !rest.starts_with(INBOUND_CHAIN) && !rest.starts_with(OUTPUT_CHAIN);
            if builtin && jumps_to_ours {
                let _ = writeln!(out, "-D {rest}");
                found = true;
            }
        }
    }
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        if saved.lines().any(|line| line.trim().starts_with(&format!(":{chain} "))) {
            let _ = writeln!(out, "-F {chain}\n-X {chain}");
            found = true;
        }
    }
    out.push_str("COMMIT\n");
    found.then_some(out)
}

fn dport(range: &strait_contract::PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}:{}", range.first, range.last)
    }
}

#[cfg(test)]
mod tests;
