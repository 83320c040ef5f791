//! The `profile` scenario: where a call's proxy CPU goes. `perf record`
//! samples the one-hop proxy (the client's sidecar, plaintext to an
//! unmeshed backend) while the load generator drives it in each of
//! [`LOADS`]: closed loop, 1 connection × 100 streams, as in the throughput
//! scenario, and open loop at 10,000 calls/s, as in the latency one. Each sampled
//! function is counted under the component its name (or its library) says
//! it belongs to, and the component's share of the samples, times the
//! measured CPU per call, is the microseconds per call it costs.
//!
//! Needs `perf` (Debian's `linux-perf`, which `scripts/deps.sh` installs)
//! and a kernel that lets root sample a process (perf_event_paranoid).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::report::Table;
use crate::scenarios::{Cluster, Effort, LOADS, Path, fmt, measure};

/// Samples per second.
const FREQUENCY: &str = "1999";
/// Functions listed in the raw results, the most sampled first.
const TOP: usize = 25;

/// A component and the crate names (the first path segment of a Rust
/// symbol) or libraries counted under it, in report order.
const COMPONENTS: &[(&str, &[&str])] = &[
    ("HTTP/2 (h2: frames, HPACK, streams, flow control)", &["h2", "slab"]),
    ("HTTP library (hyper, hyper-util)", &["hyper", "hyper_util"]),
    ("header maps and URIs (http)", &["http", "http_body", "http_body_util"]),
    (
        "async runtime (tokio, futures)",
        &[
            "tokio",
            "tokio_util",
            "futures_util",
            "futures_core",
            "futures_channel",
            "mio",
        ],
    ),
    ("buffers (bytes)", &["bytes"]),
    ("strait's own code", &["strait_proxy", "strait_contract", "strait_api"]),
    (
        "metrics and logs",
        &["prometheus_client", "tracing", "tracing_core", "tracing_subscriber"],
    ),
    ("TLS (rustls, ring)", &["rustls", "tokio_rustls", "ring", "webpki"]),
    ("C library (malloc, free, memcpy, syscall stubs)", &["libc.so.6"]),
    ("clock reads (vDSO clock_gettime)", &["[vdso]"]),
    ("kernel (syscalls, TCP/IP, netfilter)", &["[kernel.kallsyms]"]),
];
const OTHER: &str = "other Rust (core, alloc, std, unresolved)";

/// One sampled function: its share of the proxy's samples (%), its
/// library and its name.
struct Sampled {
    percent: f64,
    dso: String,
    symbol: String,
}

pub fn profile(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    if Command::new("perf").arg("--version").output().is_err() {
        bail!("the profile scenario needs perf (apt-get install linux-perf; scripts/deps.sh installs it)");
    }
    let path = cluster
        .one_backend()
        .into_iter()
        .find(|p| p.system == "strait")
        .context("no one-hop path")?;
    let pid = *cluster
        .proxy_pids(&path.proxies())
        .first()
        .context("the one-hop proxy is not running")?;
    let mut columns = vec!["component".to_string()];
    for (load, _) in LOADS {
        columns.push(format!("share, {load}"));
        columns.push(format!("µs per call, {load}"));
    }
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut table = Table::new("Where a call's proxy CPU goes (one hop, sampled by perf)", &columns);
    let mut order: Vec<&str> = COMPONENTS.iter().map(|(name, _)| *name).collect();
    order.push(OTHER);
    let mut rows: Vec<Vec<String>> = order.iter().map(|name| vec![name.to_string()]).collect();
    let mut all = vec!["all".to_string()];
    let mut raw = Vec::new();
    for (load, args) in LOADS {
        let sampled = sample(cluster, &path, pid, args, effort)?;
        let mut shares: BTreeMap<&str, f64> = BTreeMap::new();
        for s in &sampled.functions {
            *shares.entry(component(&s.dso, &s.symbol)).or_default() += s.percent;
        }
        let total: f64 = shares.values().sum::<f64>().max(1e-9);
        let per_call = sampled.cpu_us_per_call;
        for (row, name) in rows.iter_mut().zip(&order) {
            let share = shares.get(name).copied().unwrap_or(0.0) / total;
            row.push(format!("{}%", fmt(share * 100.0, 1)));
            row.push(fmt(share * per_call, 2));
        }
        all.push("100%".into());
        all.push(fmt(per_call, 2));
        let top: Vec<Value> = sampled
            .functions
            .iter()
            .take(TOP)
            .map(|s| {
                json!({
                    "percent": s.percent / total * 100.0,
                    "us_per_call": s.percent / total * per_call,
                    "dso": s.dso,
                    "symbol": s.symbol,
                })
            })
            .collect();
        raw.push(json!({
            "load": load,
            "cpu_us_per_call": per_call,
            "calls": sampled.calls,
            "measured": sampled.load,
            "components": shares,
            "top": top,
        }));
    }
    for row in rows {
        table.row(row);
    }
    table.row(all);
    Ok((table, Value::Array(raw)))
}

/// One load's samples of the proxy: its functions, the most sampled first,
/// and the calls made and the proxy's CPU per call meanwhile.
struct Samples {
    functions: Vec<Sampled>,
    calls: f64,
    cpu_us_per_call: f64,
    load: Value,
}

/// Samples the proxy `pid` with `perf record` while the load generator
/// drives `path` with `args` for the effort's duration.
fn sample(cluster: &Cluster, path: &Path, pid: u32, args: &[&str], effort: Effort) -> anyhow::Result<Samples> {
    let data = cluster.lab.state().join("profile.perf");
    let seconds = effort.seconds.to_string();
    let recording = Command::new("perf")
        .args(["record", "--quiet", "-F", FREQUENCY, "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start perf record")?;
    let duration = format!("{seconds}s");
    let mut args = args.to_vec();
    args.extend(["--duration", &duration]);
    let measured = measure(cluster, path, &args);
    let recorded = recording.wait_with_output().context("perf record")?;
    let measured = measured?;
    if !recorded.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&recorded.stderr).trim()
        );
    }
    // The proxy's own root, so its binary and C library are read for
    // their symbols.
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,sym",
            "-t",
            "\t",
            "-i",
        ])
        .arg(&data)
        .arg("--symfs")
        .arg(format!("/proc/{pid}/root"))
        .output()
        .context("perf report")?;
    if !report.status.success() {
        bail!("perf report failed: {}", String::from_utf8_lossy(&report.stderr).trim());
    }
    let functions = parse(&String::from_utf8_lossy(&report.stdout));
    if functions.is_empty() {
        bail!("perf recorded no samples of the proxy (pid {pid})");
    }
    let calls = measured.load["ok"].as_f64().unwrap_or(0.0).max(1.0);
    Ok(Samples {
        functions,
        calls,
        cpu_us_per_call: measured.proxy_cpu_seconds / calls * 1e6,
        load: measured.load,
    })
}

/// perf report's `--stdio -t '\t'` lines, `  12.34%\tdso\t[.] symbol`,
/// most sampled first.
fn parse(report: &str) -> Vec<Sampled> {
    let mut sampled: Vec<Sampled> = report
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let percent = fields.next()?.trim().trim_end_matches('%').parse().ok()?;
            let dso = fields.next()?.trim().to_string();
            let symbol = fields.next()?.trim();
            let symbol = symbol
                .split_once("] ")
                .map_or(symbol, |(_, name)| name)
                .trim()
                .to_string();
            Some(Sampled { percent, dso, symbol })
        })
        .collect();
    sampled.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    sampled
}

/// The component a function belongs to: by its library for what is not
/// the proxy's binary, else by the first crate its (demangled) name
/// mentions, so `<h2::…::Ptr as core::ops::Deref>::deref` and
/// `core::ptr::drop_in_place<h2::…>` both count as HTTP/2.
fn component(dso: &str, symbol: &str) -> &'static str {
    for (name, members) in COMPONENTS {
        if members.contains(&dso) {
            return name;
        }
    }
    let mut first: Option<(usize, &'static str)> = None;
    for (name, members) in COMPONENTS {
        for member in *members {
            let Some(at) = find_crate(symbol, member) else { continue };
            if first.is_none_or(|(best, _)| at < best) {
                first = Some((at, name));
            }
        }
    }
    first.map_or(OTHER, |(_, name)| name)
}

/// Where `krate::` first appears in `symbol` as a path's first segment.
fn find_crate(symbol: &str, krate: &str) -> Option<usize> {
    let needle = format!("{krate}::");
    symbol.match_indices(&needle).map(|(at, _)| at).find(|&at| {
        at == 0
            || matches!(
                symbol.as_bytes()[at - 1],
                b'<' | b' ' | b'(' | b'&' | b'*' | b',' | b'['
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_counted_under_the_first_crate_they_name() {
        assert_eq!(
            component("strait-proxy", "h2::hpack::table::Table::index"),
            COMPONENTS[0].0
        );
        assert_eq!(
            component(
                "strait-proxy",
                "<h2::proto::streams::store::Ptr as core::ops::deref::Deref>::deref"
            ),
            COMPONENTS[0].0
        );
        assert_eq!(
            component("strait-proxy", "core::ptr::drop_in_place<http::header::map::HeaderMap>"),
            COMPONENTS[2].0
        );
        assert_eq!(
            component(
                "strait-proxy",
                "<hyper::proto::h2::client::H2ClientFuture<B,T,E> as core::future::future::Future>::poll"
            ),
            COMPONENTS[1].0
        );
        assert_eq!(
            component("strait-proxy", "hyper_util::rt::tokio::TokioIo<T>::poll_read"),
            COMPONENTS[1].0
        );
        assert_eq!(
            component("strait-proxy", "strait_proxy::http::route::Router::handle"),
            COMPONENTS[5].0
        );
        assert_eq!(component("libc.so.6", "malloc"), COMPONENTS[8].0);
        assert_eq!(component("[vdso]", "0x0000000000000b46"), COMPONENTS[9].0);
        assert_eq!(component("[kernel.kallsyms]", "tcp_sendmsg"), COMPONENTS[10].0);
        assert_eq!(component("strait-proxy", "core::slice::sort::stable"), OTHER);
        assert_eq!(component("strait-proxy", "0x000000000036dadd"), OTHER);
    }

    #[test]
    fn perf_report_lines_are_read() {
        let report = "# header\n     2.85%\tstrait-proxy\t[.] tokio::sync::mpsc::Sender::send\n     0.10%\t[kernel.kallsyms]\t[k] tcp_sendmsg\n\n";
        let sampled = parse(report);
        assert_eq!(sampled.len(), 2);
        assert_eq!(sampled[0].symbol, "tokio::sync::mpsc::Sender::send");
        assert_eq!(sampled[1].dso, "[kernel.kallsyms]");
        assert!((sampled[0].percent - 2.85).abs() < 1e-9);
    }
}
