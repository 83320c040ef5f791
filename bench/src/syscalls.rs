//! The `syscalls` scenario: how many system calls a call costs each proxy,
//! and which. `perf stat` counts the `syscalls:sys_enter_*` tracepoints of
//! the proxies on a path while the load generator drives it in each of
//! [`LOADS`]: closed loop, 1 connection × 100 streams, where calls share
//! reads and writes; and open loop at 10,000 calls/s on 1 connection, where
//! they mostly arrive one at a time.
//! The counts over the calls made are system calls per call; the proxies'
//! CPU over the same calls is set beside them (counting every system call
//! adds to it: the throughput scenario's figure is the one to compare).
//!
//! Needs `perf` (Debian's `linux-perf`) and tracepoints readable by root.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::report::Table;
use crate::scenarios::{Cluster, Effort, LOADS, fmt, measure};

/// The systems measured, by their names in [`Cluster::one_backend`].
const SYSTEMS: &[&str] = &["strait", "strait pair mTLS", "HAProxy", "nginx"];
/// Calls the load generator makes before it measures; they are counted
/// here too.
const WARMUP: u32 = 200;
/// System calls named in the table's last column, the most frequent first.
const NAMED: usize = 5;

pub fn syscalls(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    if Command::new("perf").arg("--version").output().is_err() {
        bail!("the syscalls scenario needs perf (apt-get install linux-perf; scripts/deps.sh installs it)");
    }
    let mut table = Table::new(
        "System calls per call (counted by perf stat)",
        &[
            "system",
            "load",
            "proxies",
            "proxy CPU µs per call, while counted",
            "system calls per call",
            "per call and proxy",
            "the most frequent, per call",
        ],
    );
    let mut raw = Vec::new();
    let seconds = effort.seconds.to_string();
    let paths: Vec<_> = cluster
        .one_backend()
        .into_iter()
        .filter(|p| SYSTEMS.contains(&p.system))
        .collect();
    for ((load, args), path) in LOADS.iter().flat_map(|load| paths.iter().map(move |path| (load, path))) {
        let pids = cluster.proxy_pids(&path.proxies());
        if pids.is_empty() {
            bail!("{}: its proxies are not running", path.system);
        }
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        // Counting from before the load starts until it has ended, so every
        // call made (the warm-up's too) is in the count: perf stat prints
        // its counts when interrupted.
        let counting = Command::new("perf")
            .args(["stat", "--no-big-num", "-x", "\t", "-e", "syscalls:sys_enter_*", "-p"])
            .arg(list.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start perf stat")?;
        let duration = format!("{seconds}s");
        let warmup = WARMUP.to_string();
        let mut args = args.to_vec();
        args.extend(["--duration", &duration, "--warmup", &warmup]);
        let measured = measure(cluster, path, &args);
        let _ = kill(Pid::from_raw(counting.id() as i32), Signal::SIGINT);
        let counted = counting.wait_with_output().context("perf stat")?;
        let measured = measured?;
        if !(counted.status.success() || counted.status.signal() == Some(Signal::SIGINT as i32)) {
            bail!("perf stat failed: {}", String::from_utf8_lossy(&counted.stderr).trim());
        }
        let counts = parse(&String::from_utf8_lossy(&counted.stderr));
        if counts.is_empty() {
            bail!("{}: perf stat counted no system calls of pids {list:?}", path.system);
        }
        let calls = (measured.load["ok"].as_f64().unwrap_or(0.0) + WARMUP as f64).max(1.0);
        let total: u64 = counts.values().sum();
        let mut frequent: Vec<(&String, &u64)> = counts.iter().collect();
        frequent.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let named: Vec<String> = frequent
            .iter()
            .take(NAMED)
            .map(|(name, count)| format!("{name} {}", fmt(**count as f64 / calls, 2)))
            .collect();
        let proxies = path.proxies.len().max(1);
        table.row(vec![
            path.system.into(),
            (*load).into(),
            proxies.to_string(),
            fmt(measured.proxy_cpu_seconds / calls * 1e6, 1),
            fmt(total as f64 / calls, 2),
            fmt(total as f64 / calls / proxies as f64, 2),
            named.join(", "),
        ]);
        let per_call: BTreeMap<&String, f64> = counts
            .iter()
            .map(|(name, count)| (name, *count as f64 / calls))
            .collect();
        raw.push(json!({
            "system": path.system,
            "load": load,
            "calls": calls,
            "proxy_cpu_seconds": measured.proxy_cpu_seconds,
            "syscalls": total,
            "per_call": per_call,
            "measured": measured.load,
        }));
    }
    Ok((table, Value::Array(raw)))
}

/// `perf stat -x '\t'` lines, `1234\t\tsyscalls:sys_enter_read\t…`: each
/// system call's count, zero counts left out. A count perf could not read
/// (`<not counted>`, `<not supported>`) is left out too.
fn parse(stat: &str) -> BTreeMap<String, u64> {
    stat.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let count: u64 = fields.next()?.trim().parse().ok()?;
            let name = fields.nth(1)?.trim().strip_prefix("syscalls:sys_enter_")?;
            (count > 0).then(|| (name.to_string(), count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_lines_are_read() {
        let stat = "# started\n\
                    120\t\tsyscalls:sys_enter_recvfrom\t7217291\t100.00\t\t\n\
                    0\t\tsyscalls:sys_enter_iopl\t7217291\t100.00\t\t\n\
                    <not counted>\t\tsyscalls:sys_enter_read\t0\t0.00\t\t\n\
                    35\t\tsyscalls:sys_enter_writev\t7217291\t100.00\t\t\n\
                    7\t\tcycles\t7217291\t100.00\t\t\n";
        let counts = parse(stat);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(counts["recvfrom"], 120);
        assert_eq!(counts["writev"], 35);
    }
}
