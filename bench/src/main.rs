//! strait-bench: measures strait on the lab, side by side with direct
//! connections, HAProxy and nginx, and writes `bench/results/REPORT.md`.
//! `run` drives everything from the host; `load`, `connect` and `startup`
//! are the measuring tools it runs inside the lab's pods.

mod destination;
mod lab;
mod load;
mod plot;
mod profile;
mod report;
mod scenarios;
mod setup;
mod subscribe;
mod syscalls;
mod tools;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use lab::Lab;
use report::{Run, Section};
use scenarios::{Cluster, Effort};

#[derive(Parser)]
#[command(
    name = "strait-bench",
    about = "strait's benchmarks, side by side with the alternatives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scenarios on a lab of their own and write the report.
    Run {
        /// A few minutes instead of the full run: one round, short measurements.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Where the report goes.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// An older `strait-proxy` binary (say, main's, built with
        /// `scripts/baseline.sh`) to measure this build against in the same
        /// run: adds the `baseline` scenario.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// With a `--baseline` built with `-Cprofile-generate`: the directory
        /// its proxies write their LLVM profiles to as they exit; made here,
        /// so it must not exist (`scripts/pgo.sh` merges them into the
        /// proxy's profile).
        #[arg(long, requires = "baseline")]
        baseline_profiles: Option<PathBuf>,
    },
    /// The load generator (runs in a pod).
    Load(load::LoadArgs),
    /// New connections per second (runs in a pod).
    Connect(tools::ConnectArgs),
    /// strait-proxy start to ready (runs in a pod).
    Startup(tools::StartupArgs),
    /// Simulated proxies following Services on the destination service (runs in a pod).
    Subscribe(subscribe::SubscribeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            quick,
            only,
            out,
            baseline,
            baseline_profiles,
        } => run(quick, &only, &out, baseline.as_deref(), baseline_profiles.as_deref()),
        Command::Load(args) => runtime().and_then(|rt| rt.block_on(load::run(args))),
        Command::Connect(args) => runtime().and_then(|rt| rt.block_on(tools::connect(args))),
        Command::Startup(args) => runtime().and_then(|rt| rt.block_on(tools::startup(args))),
        Command::Subscribe(args) => runtime().and_then(|rt| rt.block_on(subscribe::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("strait-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The lab goes down, and the run's work directory goes, however the run
/// ends (a signal aside: see [`down_on_signal`]).
struct LabGuard<'a> {
    lab: &'a Lab,
    work: &'a Path,
}

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        self.lab.down();
        let _ = std::fs::remove_dir_all(self.work);
    }
}

/// Ctrl-C (SIGINT) or SIGTERM would end the run without unwinding, so
/// [`LabGuard`] would not run and the lab's pods, namespaces and rules would
/// stay until the next run. A thread ends the run instead: it stops the
/// other threads at their next step with the lab ([`Lab::end`]), takes the
/// lab down, removes `work`, then dies of the signal, as the caller (a
/// shell, make) expects. SIGHUP is left alone: `nohup make bench` goes on.
fn down_on_signal(lab: &Lab, work: &Path) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("install the handlers of SIGINT and SIGTERM")?;
    let lab = Lab::new(&lab.name, &lab.bin_dir);
    let work = work.to_path_buf();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = writeln!(
                std::io::stderr(),
                "strait-bench: signal {signal}: taking the lab {:?} down",
                lab.name
            );
            lab.end();
            let _ = std::fs::remove_dir_all(&work);
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

fn require(bin_dir: &Path) -> anyhow::Result<()> {
    for binary in [
        "strait-lab",
        "lab-app",
        "strait-proxy",
        "strait-init",
        "strait-injector",
    ] {
        if !bin_dir.join(binary).exists() {
            bail!(
                "{binary} is not next to strait-bench in {}: build everything first (scripts/images.sh)",
                bin_dir.display()
            );
        }
    }
    for tool in ["haproxy", "nginx", "iperf3", "h2load", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("{tool} is missing (scripts/deps.sh installs the Debian packages)");
        }
    }
    if !std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
    {
        bail!("the benchmark runs a lab, which needs root");
    }
    Ok(())
}

/// Copies the baseline proxy where its pods mount it from: a directory of
/// its own that the proxy's user (not root) can read.
fn baseline_binary(binary: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = work.join("baseline");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("strait-proxy");
    std::fs::copy(binary, &copy).with_context(|| format!("the baseline proxy {}", binary.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    for path in [work, dir.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// Makes `dir` (it must not exist) for the baseline proxies' LLVM
/// profiles, writable by the proxy's user (not root), as /tmp is: anyone may
/// add a file. A directory of its own, so no existing one is opened to all.
/// Returns its absolute path, for the pods' hostPath volume.
fn profiles_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir)
        .with_context(|| format!("making the profiles' directory {} (it must not exist)", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))
        .with_context(|| format!("opening {} to the proxy's user", dir.display()))?;
    Ok(std::fs::canonicalize(dir)?)
}

fn run(
    quick: bool,
    only: &[String],
    out: &Path,
    baseline: Option<&Path>,
    baseline_profiles: Option<&Path>,
) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("strait-bench's directory")?
        .to_path_buf();
    require(&bin_dir)?;
    let selected: Vec<&str> = scenarios::ALL
        .iter()
        .copied()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s))
        // Without a baseline, "everything" leaves out what compares with one.
        .filter(|s| *s != "baseline" || baseline.is_some() || !only.is_empty())
        .collect();
    if let Some(unknown) = only.iter().find(|o| !scenarios::ALL.contains(&o.as_str())) {
        bail!(
            "no scenario {unknown:?}; the scenarios are {}",
            scenarios::ALL.join(", ")
        );
    }
    let effort = if quick {
        Effort {
            rounds: 1,
            seconds: 2,
            quick,
        }
    } else {
        Effort {
            rounds: 3,
            seconds: 8,
            quick,
        }
    };
    let work = std::env::temp_dir().join(format!("strait-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let lab = Lab::new(
        &std::env::var("STRAIT_BENCH_LAB").unwrap_or_else(|_| "strait-bench".into()),
        &bin_dir,
    );
    down_on_signal(&lab, &work)?;
    lab.down();
    let guard = LabGuard { lab: &lab, work: &work };
    eprintln!("strait-bench: bringing up the lab {:?}", lab.name);
    let baseline_dir = match baseline {
        Some(binary) => Some(baseline_binary(binary, &work)?),
        None => None,
    };
    let profiles = baseline_profiles.map(profiles_dir).transpose()?;
    let baseline = baseline_dir.as_deref().map(|dir| setup::Baseline {
        dir,
        profiles: profiles.as_deref(),
    });
    let (haproxy, nginx) = setup::cluster(&lab, &bin_dir, &work, baseline)?;
    let cluster = Cluster::find(Lab::new(&lab.name, &bin_dir))?;
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for name in &selected {
        lab::park_if_ending();
        eprintln!("strait-bench: {name}");
        // A scenario that fails is reported as such; the others still run.
        let (table, raw) = scenarios::by_name(name, &cluster, effort).unwrap_or_else(|error| {
            failed.push(name.to_string());
            let mut table = report::Table::new(&format!("{name}: the scenario failed"), &["error"]);
            table.row(vec![format!("{error:#}")]);
            (table, serde_json::json!({"error": format!("{error:#}")}))
        });
        eprintln!("{}", table.title);
        for row in &table.rows {
            eprintln!("  {}", row.join("  "));
        }
        sections.push(Section {
            name: name.to_string(),
            table,
            raw,
        });
    }
    lab::park_if_ending();
    if !failed.is_empty() {
        // Taking the lab down removes its state: keep the daemon's log, which
        // says why a lab stopped answering.
        let log = lab.state().join("daemon.log");
        std::fs::create_dir_all(out)?;
        if std::fs::copy(&log, out.join("lab-daemon.log")).is_ok() {
            eprintln!(
                "strait-bench: the lab's daemon log is in {}",
                out.join("lab-daemon.log").display()
            );
        }
    }
    drop(guard);
    lab::park_if_ending();

    std::fs::create_dir_all(out)?;
    let plots = plots(&sections, out);
    let machine = report::machine();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let summary = summary(&sections);
    let ratios = ratios(&sections);
    report::write(
        out,
        &Run {
            command: &command,
            quick,
            seconds: effort.seconds,
            rounds: effort.rounds,
            machine: &machine,
            sections: &sections,
            plots: &plots,
            peers: &[("HAProxy", haproxy), ("nginx", nginx)],
            summary: &summary,
            ratios: &ratios,
        },
    )?;
    eprintln!("strait-bench: wrote {}", out.join("REPORT.md").display());
    anyhow::ensure!(failed.is_empty(), "these scenarios failed: {}", failed.join(", "));
    Ok(())
}

fn plots(sections: &[Section], out: &Path) -> Vec<(String, String)> {
    if !plot::fonts() {
        eprintln!("strait-bench: no DejaVu font (fonts-dejavu-core), so no plots");
        return Vec::new();
    }
    let wanted = [
        (
            "latency",
            "p99 µs",
            Some(("rate/s", "1000")),
            "gRPC unary at 1,000 calls/s: p99 latency (µs)",
        ),
        (
            "throughput",
            "requests/s",
            Some(("shape", "1 conn × 100 streams")),
            "Requests/s, 1 connection × 100 streams",
        ),
        (
            "balance",
            "max/min share",
            None,
            "Max/min per-pod share over 5 pods (1.0 is even)",
        ),
        (
            "slow-pod",
            "p99 with the slow pod µs",
            None,
            "p99 (µs) with one pod of five 10× slower",
        ),
        ("opaque", "Gbit/s", None, "Opaque TCP, one stream (Gbit/s)"),
    ];
    let mut made = Vec::new();
    for (name, column, filter, title) in wanted {
        let Some(section) = sections.iter().find(|s| s.name == name) else {
            continue;
        };
        let file = format!("{name}.png");
        match plot::bars(&section.table, column, filter, title, &out.join(&file)) {
            Ok(true) => made.push((name.to_string(), file)),
            Ok(false) => {}
            Err(error) => eprintln!("strait-bench: plot {name}: {error}"),
        }
    }
    made
}

/// What mutual TLS costs over the plaintext pair, as ratios.
fn ratios(sections: &[Section]) -> Vec<String> {
    let table = |name: &str| sections.iter().find(|s| s.name == name).map(|s| &s.table);
    let mut lines = Vec::new();
    let mut ratio = |what: &str, table: Option<&report::Table>, second: Option<&str>, column: &str| {
        let cell = |system| table.and_then(|t| t.cell(system, second, column));
        if let (Some(mtls), Some(plain)) = (cell("strait pair mTLS"), cell("strait pair"))
            && plain != 0.0
        {
            lines.push(format!("{what}: {:.2}× ({mtls:.1} vs {plain:.1})", mtls / plain));
        }
    };
    ratio("p50 at 1,000 calls/s", table("latency"), Some("1000"), "p50 µs");
    ratio("p99 at 1,000 calls/s", table("latency"), Some("1000"), "p99 µs");
    ratio(
        "calls/s, 1 connection × 100 streams",
        table("throughput"),
        Some("1 conn × 100 streams"),
        "requests/s",
    );
    ratio(
        "proxy CPU per call (both sidecars)",
        table("throughput"),
        Some("1 conn × 100 streams"),
        "proxy CPU µs/request",
    );
    ratio("opaque TCP throughput", table("opaque"), None, "Gbit/s");
    ratio(
        "new connections per second",
        table("connections"),
        None,
        "connections/s",
    );
    lines
}

/// The figures set against DESIGN.md's targets.
fn summary(sections: &[Section]) -> Vec<String> {
    let table = |name: &str| sections.iter().find(|s| s.name == name).map(|s| &s.table);
    let mut lines = Vec::new();
    let mut check = |what: &str, target: &str, measured: Option<f64>, met: fn(f64) -> bool, unit: &str| {
        if let Some(value) = measured.filter(|v| v.is_finite()) {
            let verdict = if met(value) { "met" } else { "missed" };
            lines.push(format!(
                "{what}: target {target}; measured {value:.2}{unit} — {verdict}"
            ));
        }
    };
    let one_by_100 = Some("1 conn × 100 streams");
    if let Some(t) = table("throughput") {
        check(
            "requests/s through one hop vs HAProxy (1 conn × 100 streams)",
            "≥ 1.0×",
            t.cell("strait", one_by_100, "× HAProxy"),
            |v| v >= 1.0,
            "×",
        );
        check(
            "proxy CPU per request, plaintext",
            "≤ 8 µs",
            t.cell("strait", one_by_100, "proxy CPU µs/request"),
            |v| v <= 8.0,
            " µs",
        );
        check(
            "proxy CPU per request per hop, mTLS",
            "≤ 12 µs",
            t.cell("strait pair mTLS", one_by_100, "proxy CPU µs/request")
                .map(|v| v / 2.0),
            |v| v <= 12.0,
            " µs",
        );
        check(
            "proxy peak RSS under load",
            "≤ 12 MB",
            t.cell("strait", one_by_100, scenarios::PEAK_RSS_COLUMN),
            |v| v <= 12.0,
            " MB",
        );
    }
    if let Some(t) = table("latency") {
        check(
            "added p50 per hop at 1,000/s",
            "≤ 30 µs",
            t.cell("strait", Some("1000"), "p50 added µs"),
            |v| v <= 30.0,
            " µs",
        );
        check(
            "added p50, mTLS pair at 1,000/s",
            "≤ 60 µs",
            t.cell("strait pair mTLS", Some("1000"), "p50 added µs"),
            |v| v <= 60.0,
            " µs",
        );
        check(
            "p99 vs direct, one hop at 1,000/s",
            "≤ 1.2×",
            t.cell("strait", Some("1000"), "p99 × direct"),
            |v| v <= 1.2,
            "×",
        );
    }
    if let Some(t) = table("memory") {
        let idle = t
            .rows
            .iter()
            .find(|r| r[0] == "strait")
            .and_then(|r| r.get(1)?.parse::<f64>().ok());
        check("proxy RSS idle", "≤ 8 MB", idle, |v| v <= 8.0, " MB");
    }
    if let Some(t) = table("balance") {
        check(
            "balance, one connection over 5 pods",
            "max/min ≤ 1.05",
            t.cell("strait", None, "max/min share"),
            |v| v <= 1.05,
            "",
        );
    }
    if let Some(t) = table("slow-pod") {
        check(
            "p99 with one pod 10× slower vs all healthy",
            "≤ 1.5×",
            t.cell("strait", None, "ratio"),
            |v| v <= 1.5,
            "×",
        );
    }
    if let Some(t) = table("endpoints") {
        let first = t.rows.first().and_then(|r| r.get(1)?.parse::<f64>().ok());
        check(
            "new pod's endpoint ready → first request",
            "≤ 1000 ms",
            first,
            |v| v <= 1000.0,
            " ms",
        );
    }
    if let Some(t) = table("opaque") {
        check(
            "opaque TCP one hop vs HAProxy's relay",
            "≥ 1.2×",
            t.cell("strait", None, "× HAProxy"),
            |v| v >= 1.2,
            "×",
        );
        check(
            "opaque TCP, mTLS pair",
            "≥ 5 Gbit/s",
            t.cell("strait pair mTLS", None, "Gbit/s"),
            |v| v >= 5.0,
            " Gbit/s",
        );
    }
    if let Some(t) = table("startup") {
        let p50 = t.cell("from its image", None, "p50 ms");
        check(
            "proxy start → ready, from its image",
            "≤ 50 ms",
            p50,
            |v| v <= 50.0,
            " ms",
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::Table;

    #[test]
    fn the_summary_sets_each_throughput_figure_against_its_target() {
        let mut table = Table::new(
            "throughput",
            &[
                "system",
                "shape",
                "× HAProxy",
                "proxy CPU µs/request",
                scenarios::PEAK_RSS_COLUMN,
            ],
        );
        for system in ["strait", "strait pair mTLS"] {
            let row = [system, "1 conn × 100 streams", "1.5", "7.0", "11.0"];
            table.row(row.map(String::from).to_vec());
        }
        let sections = [Section {
            name: "throughput".into(),
            table,
            raw: serde_json::Value::Null,
        }];
        let lines = summary(&sections);
        let peak = lines.iter().find(|l| l.starts_with("proxy peak RSS under load"));
        assert_eq!(
            peak.map(String::as_str),
            Some("proxy peak RSS under load: target ≤ 12 MB; measured 11.00 MB — met"),
            "{lines:#?}"
        );
    }
}
