//! The scenarios. Each measures every system it compares in the same run,
//! in rounds that rotate the order, so drift on the machine (a busy core,
//! a warm cache) falls on all of them alike; a figure is the median of its
//! rounds.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::lab::{Lab, Usage, last_json, reset_peak_rss, tree, usage};
use crate::report::Table;
use crate::setup::{ECHO_RELAY, EVEN_POOL, MIXED_POOL, ONE_BACKEND, TCP_RELAY, deployment_pods};

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    pub rounds: usize,
    pub seconds: u64,
    pub quick: bool,
}

/// The pods and addresses every scenario uses, found once.
pub struct Cluster {
    pub lab: Lab,
    pub client: String,
    pub client_mtls: String,
    pub client_plaintext: String,
    pub client_nometrics: String,
    pub backend_ip: String,
    pub backend_mtls: String,
    pub backend_plaintext: String,
    pub haproxy: String,
    pub haproxy_ip: String,
    pub nginx: String,
    pub nginx_ip: String,
    pub iperf_ip: String,
    /// With `--baseline`: the pods whose proxies run the baseline binary
    /// (client, backend).
    pub baseline: Option<(String, String)>,
}

const SVC: &str = "bench.svc.cluster.local";

impl Cluster {
    pub fn find(lab: Lab) -> anyhow::Result<Cluster> {
        let one = |deployment: &str| -> anyhow::Result<String> {
            deployment_pods(&lab, deployment)?
                .into_iter()
                .next()
                .with_context(|| format!("no pod of {deployment}"))
        };
        let (haproxy, nginx) = (one("haproxy")?, one("nginx")?);
        Ok(Cluster {
            client: one("client")?,
            client_mtls: one("client-mtls")?,
            client_plaintext: one("client-plaintext")?,
            client_nometrics: one("client-nometrics")?,
            backend_ip: lab.pod_ip(&one("backend")?)?,
            backend_mtls: one("backend-mtls")?,
            backend_plaintext: one("backend-plaintext")?,
            haproxy_ip: lab.pod_ip(&haproxy)?,
            nginx_ip: lab.pod_ip(&nginx)?,
            iperf_ip: lab.pod_ip(&one("iperf")?)?,
            baseline: match deployment_pods(&lab, "client-baseline")?.first() {
                Some(client) => Some((client.clone(), one("backend-baseline")?)),
                None => None,
            },
            haproxy,
            nginx,
            lab,
        })
    }

    /// The processes doing a system's proxying, for CPU and memory.
    pub fn proxy_pids(&self, proxies: &[(&str, &str)]) -> Vec<u32> {
        proxies
            .iter()
            .filter_map(|(pod, container)| self.lab.container_pid(pod, container).ok())
            .flat_map(tree)
            .collect()
    }
}

/// A way from a client pod to a gRPC server through one system.
#[derive(Clone, Debug)]
pub struct Path {
    pub system: &'static str,
    pub client: String,
    pub to: String,
    /// (pod, container) of every proxy on the way.
    pub proxies: Vec<(String, String)>,
}

impl Path {
    pub fn proxies(&self) -> Vec<(&str, &str)> {
        self.proxies.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect()
    }
}

const PROXY: &str = "strait-proxy";

impl Cluster {
    /// The systems compared on one backend.
    pub fn one_backend(&self) -> Vec<Path> {
        let path = |system, client: &str, to: String, proxies: Vec<(&str, &str)>| Path {
            system,
            client: client.to_string(),
            to,
            proxies: proxies
                .into_iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect(),
        };
        vec![
            path("direct", &self.client, format!("{}:50051", self.backend_ip), vec![]),
            path(
                "strait",
                &self.client_plaintext,
                format!("backend.{SVC}:50051"),
                vec![(&self.client_plaintext, PROXY)],
            ),
            path(
                "strait pair",
                &self.client_plaintext,
                format!("backend-plaintext.{SVC}:50051"),
                vec![(&self.client_plaintext, PROXY), (&self.backend_plaintext, PROXY)],
            ),
            path(
                "strait pair mTLS",
                &self.client_mtls,
                format!("backend-mtls.{SVC}:50051"),
                vec![(&self.client_mtls, PROXY), (&self.backend_mtls, PROXY)],
            ),
            path(
                "HAProxy",
                &self.client,
                format!("{}:{ONE_BACKEND}", self.haproxy_ip),
                vec![(&self.haproxy, "haproxy")],
            ),
            path(
                "nginx",
                &self.client,
                format!("{}:{ONE_BACKEND}", self.nginx_ip),
                vec![(&self.nginx, "nginx")],
            ),
        ]
    }

    /// The balancers compared over a pool of pods (`even` or `mixed`).
    fn pool(&self, service: &str, port: u16) -> Vec<Path> {
        vec![
            Path {
                system: "strait",
                client: self.client_plaintext.clone(),
                to: format!("{service}.{SVC}:50051"),
                proxies: vec![(self.client_plaintext.clone(), PROXY.into())],
            },
            Path {
                system: "HAProxy",
                client: self.client.clone(),
                to: format!("{}:{port}", self.haproxy_ip),
                proxies: vec![(self.haproxy.clone(), "haproxy".into())],
            },
            Path {
                system: "nginx",
                client: self.client.clone(),
                to: format!("{}:{port}", self.nginx_ip),
                proxies: vec![(self.nginx.clone(), "nginx".into())],
            },
        ]
    }
}

/// One run of the load generator through a path, with the proxies' CPU.
pub struct Measured {
    pub load: Value,
    pub proxy_cpu_seconds: f64,
    /// The proxies' usage after the run; its peak RSS is the run's own.
    pub proxy_usage: Usage,
}

/// The loads the profile and syscalls scenarios drive the proxies with,
/// by name, and the load generator's arguments for them (the duration is
/// the effort's): the throughput scenario's closed loop on one connection,
/// and the latency scenario's open loop at its higher rate.
pub const LOADS: &[(&str, &[&str])] = &[
    (
        "closed loop, 1 conn × 100 streams",
        &["--connections", "1", "--concurrency", "100"],
    ),
    (
        "open loop, 10,000/s, 1 conn",
        &["--rate", "10000", "--concurrency", "2000"],
    ),
];

/// The latency and throughput tables' column of [`peak_rss_per_proxy`];
/// the report's summary reads it by this name.
pub const PEAK_RSS_COLUMN: &str = "peak RSS MB per proxy";

/// The largest peak RSS of one proxy over a path's runs, in MB.
fn peak_rss_per_proxy(runs: &[Measured]) -> f64 {
    runs.iter()
        .map(|m| m.proxy_usage.largest_peak_rss_bytes)
        .max()
        .unwrap_or(0) as f64
        / 1e6
}

pub fn measure(cluster: &Cluster, path: &Path, args: &[&str]) -> anyhow::Result<Measured> {
    let pids = cluster.proxy_pids(&path.proxies());
    reset_peak_rss(&pids);
    let before = usage(&pids);
    let mut command = vec!["strait-bench", "load", "--to", &path.to];
    command.extend_from_slice(args);
    let load = cluster.lab.exec_json(&path.client, &command)?;
    let after = usage(&pids);
    Ok(Measured {
        load,
        proxy_cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        proxy_usage: after,
    })
}

/// Runs `each` for every path, `rounds` times in rotating order; returns
/// each path's results in round order.
fn rounds<T>(
    paths: &[Path],
    effort: Effort,
    mut each: impl FnMut(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Vec<T>>> {
    let mut results: Vec<Vec<T>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..effort.rounds.max(1) {
        for offset in 0..paths.len() {
            let index = (round + offset) % paths.len();
            results[index].push(each(&paths[index])?);
        }
    }
    Ok(results)
}

/// The throughput scenario's closed-loop shapes: (name, connections,
/// calls in flight).
const CLOSED_SHAPES: [(&str, &str, &str); 2] = [
    ("1 conn × 100 streams", "1", "100"),
    ("64 conns × 2 streams", "64", "128"),
];

/// Every path measured closed loop with `connections` and `concurrency`
/// calls in flight, in interleaved rounds: each path's runs.
fn closed_loop(
    cluster: &Cluster,
    paths: &[Path],
    effort: Effort,
    connections: &str,
    concurrency: &str,
) -> anyhow::Result<Vec<Vec<Measured>>> {
    let duration = format!("{}s", effort.seconds);
    rounds(paths, effort, |path| {
        measure(
            cluster,
            path,
            &[
                "--connections",
                connections,
                "--concurrency",
                concurrency,
                "--duration",
                &duration,
            ],
        )
    })
}

/// The median requests/s of a path's runs.
fn median_rps(runs: &[Measured]) -> f64 {
    median(runs.iter().map(|m| num(&m.load["rps"])).collect())
}

/// The median proxy CPU per completed request of a path's runs, in µs.
fn median_cpu_per_request(runs: &[Measured]) -> f64 {
    median(
        runs.iter()
            .map(|m| m.proxy_cpu_seconds / num(&m.load["ok"]).max(1.0) * 1e6)
            .collect(),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn num(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

pub fn fmt(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else if value == f64::INFINITY {
        "∞".into()
    } else {
        "–".into()
    }
}

/// gRPC unary at fixed rates: latency added over direct.
pub fn latency(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let paths = cluster.one_backend();
    let rates: &[u32] = if effort.quick { &[1000] } else { &[1000, 10000] };
    let mut table = Table::new(
        "gRPC unary at a fixed rate (open loop, 1 connection)",
        &[
            "system",
            "rate/s",
            "achieved/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "p50 added µs",
            "p99 × direct",
            "failed",
            PEAK_RSS_COLUMN,
        ],
    );
    let mut raw = Vec::new();
    for &rate in rates {
        let seconds = effort.seconds.to_string();
        let rate_text = rate.to_string();
        let results = rounds(&paths, effort, |path| {
            measure(
                cluster,
                path,
                &[
                    "--rate",
                    &rate_text,
                    "--concurrency",
                    "2000",
                    "--duration",
                    &format!("{seconds}s"),
                ],
            )
        })?;
        let pick = |i: usize, key: &str| median(results[i].iter().map(|m| num(&m.load["latency_us"][key])).collect());
        let (direct_p50, direct_p99) = (pick(0, "p50"), pick(0, "p99"));
        for (i, path) in paths.iter().enumerate() {
            let failed: f64 = results[i]
                .iter()
                .map(|m| num(&m.load["errors"]) + num(&m.load["dropped"]))
                .sum();
            let achieved = median(results[i].iter().map(|m| num(&m.load["rps"])).collect());
            table.row(vec![
                path.system.into(),
                rate.to_string(),
                fmt(achieved, 0),
                fmt(pick(i, "p50"), 0),
                fmt(pick(i, "p99"), 0),
                fmt(pick(i, "p999"), 0),
                fmt(pick(i, "p50") - direct_p50, 0),
                fmt(pick(i, "p99") / direct_p99, 2),
                fmt(failed, 0),
                if path.proxies.is_empty() {
                    "–".into()
                } else {
                    fmt(peak_rss_per_proxy(&results[i]), 1)
                },
            ]);
            raw.push(json!({"system": path.system, "rate": rate, "runs": results[i].iter().map(|m| m.load.clone()).collect::<Vec<_>>()}));
        }
    }
    Ok((table, Value::Array(raw)))
}

/// Closed loop: requests per second and proxy CPU per request.
pub fn throughput(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let paths = cluster.one_backend();
    let mut table = Table::new(
        "Maximum gRPC requests/s (closed loop) and proxy CPU",
        &[
            "system",
            "shape",
            "requests/s",
            "× direct",
            "× HAProxy",
            "proxy CPU µs/request",
            "requests/s per proxy core",
            PEAK_RSS_COLUMN,
        ],
    );
    let mut raw = Vec::new();
    for (shape, connections, concurrency) in CLOSED_SHAPES {
        let results = closed_loop(cluster, &paths, effort, connections, concurrency)?;
        let rps: Vec<f64> = results.iter().map(|r| median_rps(r)).collect();
        let haproxy = paths
            .iter()
            .position(|p| p.system == "HAProxy")
            .map_or(f64::NAN, |i| rps[i]);
        for (i, path) in paths.iter().enumerate() {
            let cpu_per_request = median_cpu_per_request(&results[i]);
            let per_core = median(
                results[i]
                    .iter()
                    .map(|m| num(&m.load["ok"]) / m.proxy_cpu_seconds.max(1e-9))
                    .collect(),
            );
            let peak = peak_rss_per_proxy(&results[i]);
            let proxied = !path.proxies.is_empty();
            table.row(vec![
                path.system.into(),
                shape.into(),
                fmt(rps[i], 0),
                fmt(rps[i] / rps[0], 2),
                fmt(rps[i] / haproxy, 2),
                if proxied { fmt(cpu_per_request, 1) } else { "–".into() },
                if proxied { fmt(per_core, 0) } else { "–".into() },
                if proxied { fmt(peak, 1) } else { "–".into() },
            ]);
            raw.push(json!({"system": path.system, "shape": shape, "runs": results[i].iter().map(|m| json!({"load": m.load, "proxy_cpu_seconds": m.proxy_cpu_seconds})).collect::<Vec<_>>()}));
        }
    }
    Ok((table, Value::Array(raw)))
}

/// This build's proxy against a baseline build (`--baseline`), in the same
/// run: one hop (the client's sidecar to an unmeshed backend) and the
/// mutual-TLS pair, each measured closed loop in the throughput scenario's
/// shapes, rounds interleaved. The figure to watch is proxy CPU per request,
/// as this ÷ baseline.
pub fn baseline(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let (client, backend) = cluster
        .baseline
        .clone()
        .context("the baseline scenario needs a baseline proxy: strait-bench run --baseline <strait-proxy binary>")?;
    let path = |system, client: &str, to: String, proxies: Vec<&str>| Path {
        system,
        client: client.to_string(),
        to,
        proxies: proxies
            .into_iter()
            .map(|p| (p.to_string(), PROXY.to_string()))
            .collect(),
    };
    let paths = vec![
        path(
            "strait",
            &cluster.client_mtls,
            format!("backend.{SVC}:50051"),
            vec![&cluster.client_mtls],
        ),
        path(
            "strait (baseline)",
            &client,
            format!("backend.{SVC}:50051"),
            vec![&client],
        ),
        path(
            "strait pair mTLS",
            &cluster.client_mtls,
            format!("backend-mtls.{SVC}:50051"),
            vec![&cluster.client_mtls, &cluster.backend_mtls],
        ),
        path(
            "strait pair mTLS (baseline)",
            &client,
            format!("backend-baseline.{SVC}:50051"),
            vec![&client, &backend],
        ),
    ];
    let mut table = Table::new(
        "This build against the baseline proxy (same run, closed loop)",
        &[
            "system",
            "shape",
            "requests/s",
            "proxy CPU µs/request",
            "CPU ÷ baseline",
            "requests/s ÷ baseline",
        ],
    );
    let mut raw = Vec::new();
    for (shape, connections, concurrency) in CLOSED_SHAPES {
        let results = closed_loop(cluster, &paths, effort, connections, concurrency)?;
        let rps: Vec<f64> = results.iter().map(|r| median_rps(r)).collect();
        let cpu: Vec<f64> = results.iter().map(|r| median_cpu_per_request(r)).collect();
        for (i, path) in paths.iter().enumerate() {
            // Each system is followed by its baseline.
            let base = i - i % 2 + 1;
            let ratio = |values: &[f64]| {
                if i == base {
                    "–".to_string()
                } else {
                    fmt(values[i] / values[base], 3)
                }
            };
            table.row(vec![
                path.system.into(),
                shape.into(),
                fmt(rps[i], 0),
                fmt(cpu[i], 1),
                ratio(&cpu),
                ratio(&rps),
            ]);
            raw.push(json!({"system": path.system, "shape": shape, "runs": results[i].iter().map(|m| json!({"load": m.load, "proxy_cpu_seconds": m.proxy_cpu_seconds})).collect::<Vec<_>>()}));
        }
    }
    Ok((table, Value::Array(raw)))
}

/// Memory of each proxy while idle.
pub fn idle_memory(cluster: &Cluster) -> anyhow::Result<(Table, Value)> {
    let mut table = Table::new(
        "Proxy memory, idle (before any load)",
        &["system", "RSS MB per proxy", "private MB per proxy"],
    );
    let mut raw = Vec::new();
    for path in cluster.one_backend().iter().filter(|p| !p.proxies.is_empty()) {
        let each: Vec<Usage> = path
            .proxies()
            .iter()
            .map(|proxy| usage(&cluster.proxy_pids(&[*proxy])))
            .collect();
        let column = |value: fn(&Usage) -> u64| {
            each.iter()
                .map(|u| fmt(value(u) as f64 / 1e6, 1))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        table.row(vec![
            path.system.into(),
            column(|u| u.rss_bytes),
            column(|u| u.private_bytes),
        ]);
        raw.push(json!({"system": path.system,
                        "rss_mb": each.iter().map(|u| u.rss_bytes as f64 / 1e6).collect::<Vec<_>>(),
                        "private_mb": each.iter().map(|u| u.private_bytes as f64 / 1e6).collect::<Vec<_>>()}));
    }
    Ok((table, Value::Array(raw)))
}

/// Requests per pod, and max/min over the `pods` that should answer
/// (infinite when some got none).
fn shares(by_pod: &Value, pods: usize) -> (Vec<(String, f64)>, f64) {
    let counts: Vec<(String, f64)> = by_pod
        .as_object()
        .into_iter()
        .flatten()
        .map(|(pod, n)| (pod.clone(), num(n)))
        .collect();
    let max = counts.iter().map(|c| c.1).fold(0.0, f64::max);
    let min = counts.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let ratio = if counts.len() < pods || min <= 0.0 {
        f64::INFINITY
    } else {
        max / min
    };
    (counts, ratio)
}

/// One client connection over five equal pods.
pub fn balance(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let mut paths = vec![Path {
        system: "kube-proxy only",
        client: cluster.client.clone(),
        to: format!("even.{SVC}:50051"),
        proxies: vec![],
    }];
    paths.extend(cluster.pool("even", EVEN_POOL));
    let duration = format!("{}s", effort.seconds);
    let results = rounds(&paths, effort, |path| {
        measure(
            cluster,
            path,
            &["--concurrency", "16", "--duration", &duration, "--warmup", "0"],
        )
    })?;
    let mut table = Table::new(
        "Balance: one client connection over 5 equal pods (5 ms per call)",
        &[
            "system",
            "pods answering",
            "max/min share",
            "requests per pod (last round)",
        ],
    );
    let mut raw = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let ratios: Vec<f64> = results[i].iter().map(|m| shares(&m.load["by_pod"], 5).1).collect();
        let (last, _) = results[i]
            .last()
            .map(|m| shares(&m.load["by_pod"], 5))
            .unwrap_or_default();
        table.row(vec![
            path.system.into(),
            last.len().to_string(),
            fmt(median(ratios), 3),
            last.iter().map(|(_, n)| fmt(*n, 0)).collect::<Vec<_>>().join(" / "),
        ]);
        raw.push(json!({"system": path.system, "runs": results[i].iter().map(|m| m.load.clone()).collect::<Vec<_>>()}));
    }
    Ok((table, Value::Array(raw)))
}

/// One pod of five ten times slower: the service's p99.
pub fn slow_pod(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let duration = format!("{}s", effort.seconds);
    let args = [
        "--rate",
        "400",
        "--concurrency",
        "2000",
        "--duration",
        duration.as_str(),
        "--warmup",
        "50",
    ];
    let healthy = rounds(&cluster.pool("even", EVEN_POOL), effort, |path| {
        measure(cluster, path, &args)
    })?;
    let paths = cluster.pool("mixed", MIXED_POOL);
    let degraded = rounds(&paths, effort, |path| measure(cluster, path, &args))?;
    let mut table = Table::new(
        "One of 5 pods 10× slower (50 ms vs 5 ms), 400 calls/s",
        &[
            "system",
            "p99 all healthy µs",
            "p99 with the slow pod µs",
            "ratio",
            "slow pod's share",
        ],
    );
    let mut raw = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let p99 = |runs: &[Measured]| median(runs.iter().map(|m| num(&m.load["latency_us"]["p99"])).collect());
        let slow_share = median(
            degraded[i]
                .iter()
                .map(|m| {
                    let by_pod = m.load["by_pod"].as_object().cloned().unwrap_or_default();
                    let total: f64 = by_pod.values().map(num).sum();
                    by_pod
                        .iter()
                        .filter(|(pod, _)| pod.starts_with("pool-slow"))
                        .map(|(_, n)| num(n))
                        .sum::<f64>()
                        / total.max(1.0)
                })
                .collect(),
        );
        let (before, after) = (p99(&healthy[i]), p99(&degraded[i]));
        table.row(vec![
            path.system.into(),
            fmt(before, 0),
            fmt(after, 0),
            fmt(after / before, 2),
            format!("{}%", fmt(slow_share * 100.0, 1)),
        ]);
        raw.push(json!({"system": path.system, "healthy": healthy[i].iter().map(|m| m.load.clone()).collect::<Vec<_>>(), "degraded": degraded[i].iter().map(|m| m.load.clone()).collect::<Vec<_>>()}));
    }
    Ok((table, Value::Array(raw)))
}

/// The `even` Service's EndpointSlice: ready endpoints by pod name.
fn ready_endpoints(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let socket = lab.state().join("api.sock");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&socket)
        .arg("http://lab/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Deven")
        .output()?;
    let slices: Value = serde_json::from_slice(&out.stdout)?;
    Ok(slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
        .collect())
}

/// Polls until the set of ready endpoints changes; returns it and when.
fn next_change(lab: &Lab, from: &[String], within: Duration) -> anyhow::Result<(Vec<String>, u128)> {
    let deadline = Instant::now() + within;
    loop {
        let now = crate::load::unix_millis();
        let ready = ready_endpoints(lab)?;
        if ready != from {
            return Ok((ready, now));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ready endpoints stayed {from:?} for {within:?}; pods: {}",
            lab.run(&["status"]).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Endpoint changes: from a new pod's EndpointSlice entry turning ready to
/// its first request, and from a pod's removal to its last.
pub fn endpoint_changes(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let lab = &cluster.lab;
    let (mut joins, mut leaves, mut failed) = (Vec::new(), Vec::new(), 0.0);
    let mut raw = Vec::new();
    for _ in 0..effort.rounds.max(1) {
        let before = ready_endpoints(lab)?;
        let to = format!("even.{SVC}:50051");
        let seconds = 6 + effort.seconds;
        let duration = format!("{seconds}s");
        let load = lab.spawn_exec(
            &cluster.client_plaintext,
            &[
                "strait-bench",
                "load",
                "--to",
                &to,
                "--rate",
                "500",
                "--concurrency",
                "2000",
                "--warmup",
                "0",
                "--duration",
                &duration,
            ],
        )?;
        std::thread::sleep(Duration::from_secs(1));
        lab.scale("bench/pool-b", 2)?;
        let (grown, ready_at) = next_change(lab, &before, Duration::from_secs(30))?;
        let added = grown.iter().find(|p| !before.contains(p)).cloned().unwrap_or_default();
        std::thread::sleep(Duration::from_secs(2));
        lab.scale("bench/pool-b", 1)?;
        let (shrunk, removed_at) = next_change(lab, &grown, Duration::from_secs(30))?;
        let removed = grown.iter().find(|p| !shrunk.contains(p)).cloned().unwrap_or_default();
        let out = load.wait_with_output()?;
        let result: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("{}"))?;
        let seen = &result["seen_ms"];
        let first = seen[&added][0].as_u64().map(|t| t as f64 - ready_at as f64);
        let last = seen[&removed][1].as_u64().map(|t| t as f64 - removed_at as f64);
        joins.extend(first);
        leaves.extend(last);
        failed += num(&result["errors"]) + num(&result["dropped"]);
        raw.push(json!({"added": added, "ready_at_ms": ready_at, "removed": removed, "removed_at_ms": removed_at, "load": result}));
    }
    let mut table = Table::new(
        "Endpoint changes under 500 calls/s through strait (median of rounds; EndpointSlice polled every 5 ms)",
        &["change", "ms", "failed calls"],
    );
    table.row(vec![
        "new pod's endpoint ready → its first request".into(),
        fmt(median(joins), 0),
        fmt(failed, 0),
    ]);
    // Negative: the pod stopped answering before its endpoint changed.
    table.row(vec![
        "pod's endpoint removed → its last request".into(),
        fmt(median(leaves), 0),
        fmt(failed, 0),
    ]);
    Ok((table, Value::Array(raw)))
}

/// Opaque TCP throughput of one stream (iperf3).
pub fn opaque(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let path = |system: &'static str, client: &str, to: String, proxies: Vec<(&str, &str)>| Path {
        system,
        client: client.to_string(),
        to,
        proxies: proxies
            .into_iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect(),
    };
    let paths = vec![
        path("direct", &cluster.client, format!("{}:5201", cluster.iperf_ip), vec![]),
        path("strait", &cluster.client_plaintext, format!("iperf.{SVC}:5201"), vec![]),
        path(
            "strait pair",
            &cluster.client_plaintext,
            format!("iperf-plaintext.{SVC}:5201"),
            vec![],
        ),
        path(
            "strait pair mTLS",
            &cluster.client_mtls,
            format!("iperf-mtls.{SVC}:5201"),
            vec![],
        ),
        path(
            "HAProxy (TCP)",
            &cluster.client,
            format!("{}:{TCP_RELAY}", cluster.haproxy_ip),
            vec![],
        ),
    ];
    let seconds = effort.seconds.max(2).to_string();
    let results = rounds(&paths, effort, |path| {
        let (host, port) = path.to.rsplit_once(':').context("host:port")?;
        let out = cluster.lab.exec(
            &path.client,
            &["iperf3", "--client", host, "--port", port, "--time", &seconds, "--json"],
        )?;
        let report: Value = serde_json::from_str(&out)?;
        Ok(num(&report["end"]["sum_received"]["bits_per_second"]) / 1e9)
    })?;
    let gbits: Vec<f64> = results.into_iter().map(median).collect();
    let haproxy = gbits[4];
    let mut table = Table::new(
        "Opaque TCP, one stream (iperf3)",
        &["system", "Gbit/s", "× direct", "× HAProxy"],
    );
    for (i, path) in paths.iter().enumerate() {
        table.row(vec![
            path.system.into(),
            fmt(gbits[i], 2),
            fmt(gbits[i] / gbits[0], 2),
            fmt(gbits[i] / haproxy, 2),
        ]);
    }
    let raw = paths
        .iter()
        .zip(&gbits)
        .map(|(p, g)| json!({"system": p.system, "gbit_per_s": g}))
        .collect();
    Ok((table, Value::Array(raw)))
}

/// New connections per second, each with one echo and closed with a reset
/// (see [`crate::tools::connect`]): direct, strait's one hop, the pair with
/// and without mTLS, and HAProxy's TCP relay.
pub fn connections(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let backend_ip = &cluster.backend_ip;
    let paths = [
        ("direct", &cluster.client, format!("{backend_ip}:7000")),
        ("strait", &cluster.client_plaintext, format!("backend.{SVC}:7000")),
        (
            "strait pair",
            &cluster.client_plaintext,
            format!("backend-plaintext.{SVC}:7000"),
        ),
        (
            "strait pair mTLS",
            &cluster.client_mtls,
            format!("backend-mtls.{SVC}:7000"),
        ),
        (
            "HAProxy (TCP)",
            &cluster.client,
            format!("{}:{ECHO_RELAY}", cluster.haproxy_ip),
        ),
    ];
    let seconds = format!("{}s", effort.seconds);
    let mut per_second = Vec::new();
    for (system, client, to) in &paths {
        let mut runs = Vec::new();
        for _ in 0..effort.rounds.max(1) {
            let out = cluster
                .lab
                .exec_json(client, &["strait-bench", "connect", "--to", to, "--duration", &seconds])?;
            runs.push(num(&out["per_second"]));
        }
        per_second.push((*system, median(runs)));
    }
    let mut table = Table::new(
        "New connections per second (connect, 1-byte echo, reset; 4 at a time)",
        &["system", "connections/s", "× direct", "× HAProxy"],
    );
    let rate = |system| {
        per_second
            .iter()
            .find(|(s, _)| *s == system)
            .map_or(f64::NAN, |(_, r)| *r)
    };
    let (direct, haproxy) = (rate("direct"), rate("HAProxy (TCP)"));
    for (system, rate) in &per_second {
        table.row(vec![
            (*system).into(),
            fmt(*rate, 0),
            fmt(rate / direct, 2),
            fmt(rate / haproxy, 2),
        ]);
    }
    let raw = per_second
        .iter()
        .map(|(s, r)| json!({"system": s, "per_second": r}))
        .collect();
    Ok((table, Value::Array(raw)))
}

/// Memory of the sidecar pair carrying 1,000 open connections.
pub fn held_connections(cluster: &Cluster) -> anyhow::Result<(Table, Value)> {
    let mut table = Table::new(
        "Proxy memory with 1,000 open connections through the pair",
        &[
            "system",
            "proxy",
            "RSS MB idle",
            "RSS MB with 1,000 open",
            "private MB with 1,000 open",
        ],
    );
    let mut raw = Vec::new();
    let pairs = [
        (
            "strait pair",
            &cluster.client_plaintext,
            &cluster.backend_plaintext,
            format!("backend-plaintext.{SVC}:7000"),
        ),
        (
            "strait pair mTLS",
            &cluster.client_mtls,
            &cluster.backend_mtls,
            format!("backend-mtls.{SVC}:7000"),
        ),
    ];
    for (system, client, server, to) in &pairs {
        let proxies = [(client.as_str(), PROXY), (server.as_str(), PROXY)];
        let idle: Vec<Usage> = proxies.iter().map(|p| usage(&cluster.proxy_pids(&[*p]))).collect();
        let mut holder = cluster.lab.spawn_exec(
            client,
            &[
                "lab-app",
                "abuse",
                "--kind",
                "hold",
                "--to",
                to,
                "--connections",
                "1000",
                "--seconds",
                "4s",
            ],
        )?;
        // The connections are all open once the holder prints its line.
        let mut line = String::new();
        if let Some(stdout) = holder.stdout.as_mut() {
            use std::io::BufRead;
            std::io::BufReader::new(stdout).read_line(&mut line)?;
        }
        let held: Vec<Usage> = proxies.iter().map(|p| usage(&cluster.proxy_pids(&[*p]))).collect();
        holder.wait()?;
        let opened: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
        for (i, side) in ["client", "server"].iter().enumerate() {
            table.row(vec![
                (*system).into(),
                (*side).into(),
                fmt(idle[i].rss_bytes as f64 / 1e6, 1),
                fmt(held[i].rss_bytes as f64 / 1e6, 1),
                fmt(held[i].private_bytes as f64 / 1e6, 1),
            ]);
        }
        raw.push(json!({"system": system, "opened": opened,
                        "idle_rss_mb": idle.iter().map(|u| u.rss_bytes as f64 / 1e6).collect::<Vec<_>>(),
                        "held_rss_mb": held.iter().map(|u| u.rss_bytes as f64 / 1e6).collect::<Vec<_>>()}));
    }
    Ok((table, Value::Array(raw)))
}

/// One of strait's images as `make images` built it and the lab unpacked it.
struct BuiltImage {
    name: String,
    compressed_bytes: f64,
    /// Its root filesystem, unpacked by the lab's kubelet.
    rootfs: std::path::PathBuf,
}

/// The images listed in `target/images/images.tsv`, with where the lab
/// unpacked each (by manifest digest).
fn built_images(cluster: &Cluster) -> anyhow::Result<Vec<BuiltImage>> {
    let images = cluster.lab.bin_dir.join("../images");
    let listing = images.join("images.tsv");
    let text = std::fs::read_to_string(&listing)
        .with_context(|| format!("read {} (`make images` writes it)", listing.display()))?;
    let bundles = cluster.lab.state().join("images/bundles");
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let (name, digest, compressed) = (fields.first()?, fields.get(2)?, fields.get(3)?);
            Some(BuiltImage {
                name: name.to_string(),
                compressed_bytes: compressed.parse().ok()?,
                rootfs: bundles.join(digest.replace(':', "-")).join("rootfs"),
            })
        })
        .collect())
}

/// Each image's size: compressed (what a registry stores and a node pulls)
/// and unpacked (what a node keeps).
pub fn images(cluster: &Cluster, _effort: Effort) -> anyhow::Result<(Table, Value)> {
    let mut table = Table::new("strait's images", &["image", "compressed MB", "unpacked MB"]);
    let mut raw = Vec::new();
    for image in built_images(cluster)? {
        let unpacked = std::process::Command::new("du")
            .args(["-sb", "--apparent-size"])
            .arg(&image.rootfs)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            });
        table.row(vec![
            image.name.clone(),
            fmt(image.compressed_bytes / 1e6, 2),
            unpacked.map_or_else(|| "-".to_string(), |b| fmt(b / 1e6, 2)),
        ]);
        raw.push(json!({"image": image.name, "compressed_bytes": image.compressed_bytes, "unpacked_bytes": unpacked}));
    }
    Ok((table, Value::Array(raw)))
}

/// Proxy start to ready, without a certificate to fetch: run from the proxy
/// image's root filesystem as the image's user (what a node runs), and, in
/// the same run, the locally built binary in a pod (the figure before the
/// images).
pub fn startup(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let runs = if effort.quick { "5" } else { "30" };
    let proxy = built_images(cluster)?
        .into_iter()
        .find(|image| image.name == "strait-proxy")
        .context("images.tsv lists no strait-proxy")?;
    let out = std::process::Command::new(cluster.lab.bin_dir.join("strait-bench"))
        .args(["startup", "--runs", runs, "--root"])
        .arg(&proxy.rootfs)
        .output()
        .context("run strait-bench startup")?;
    anyhow::ensure!(
        out.status.success(),
        "strait-bench startup --root: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let image = last_json(&String::from_utf8_lossy(&out.stdout)).context("strait-bench startup --root")?;
    let local = cluster
        .lab
        .exec_json(&cluster.client, &["strait-bench", "startup", "--runs", runs])?;
    let mut table = Table::new(
        "strait-proxy start → /ready (no identity)",
        &["started", "runs", "p50 ms", "min ms", "max ms"],
    );
    for (how, out) in [("from its image", &image), ("local binary, in a pod", &local)] {
        table.row(vec![
            how.into(),
            runs.into(),
            fmt(num(&out["p50_ms"]), 1),
            fmt(num(&out["min_ms"]), 1),
            fmt(num(&out["max_ms"]), 1),
        ]);
    }
    Ok((table, json!({"image": image, "local": local})))
}

/// Paths measured closed loop (1 conn × 100 streams) and open loop at
/// 1,000 calls/s, in interleaved rounds: the runs, and each path's median
/// requests/s, proxy CPU µs per request and p99 µs at 1,000/s.
struct CostRuns {
    closed: Vec<Vec<Measured>>,
    open: Vec<Vec<Measured>>,
    rps: Vec<f64>,
    cpu: Vec<f64>,
    p99: Vec<f64>,
}

impl CostRuns {
    fn measure(cluster: &Cluster, paths: &[Path], effort: Effort) -> anyhow::Result<CostRuns> {
        let duration = format!("{}s", effort.seconds);
        let closed = rounds(paths, effort, |path| {
            measure(cluster, path, &["--concurrency", "100", "--duration", &duration])
        })?;
        let open = rounds(paths, effort, |path| {
            measure(
                cluster,
                path,
                &["--rate", "1000", "--concurrency", "2000", "--duration", &duration],
            )
        })?;
        Ok(CostRuns {
            rps: closed.iter().map(|r| median_rps(r)).collect(),
            cpu: closed.iter().map(|r| median_cpu_per_request(r)).collect(),
            p99: open
                .iter()
                .map(|r| median(r.iter().map(|m| num(&m.load["latency_us"]["p99"])).collect()))
                .collect(),
            closed,
            open,
        })
    }

    /// The load generator's reports, for the raw results.
    fn raw(&self) -> Value {
        let loads = |runs: &[Vec<Measured>]| {
            runs.iter()
                .map(|r| r.iter().map(|m| m.load.clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        json!({"closed": loads(&self.closed), "open": loads(&self.open)})
    }
}

/// What metrics cost on the request path: strait one hop, on vs off.
pub fn metrics_cost(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let to = format!("backend.{SVC}:50051");
    let paths = vec![
        Path {
            system: "strait, metrics on",
            client: cluster.client_plaintext.clone(),
            to: to.clone(),
            proxies: vec![(cluster.client_plaintext.clone(), PROXY.into())],
        },
        Path {
            system: "strait, metrics off",
            client: cluster.client_nometrics.clone(),
            to,
            proxies: vec![(cluster.client_nometrics.clone(), PROXY.into())],
        },
    ];
    let runs = CostRuns::measure(cluster, &paths, effort)?;
    let (rps, cpu, p99) = (&runs.rps, &runs.cpu, &runs.p99);
    let mut table = Table::new(
        "The cost of metrics (one hop; closed loop 1 conn × 100 streams, and 1,000 calls/s)",
        &["setting", "requests/s", "proxy CPU µs/request", "p99 µs at 1,000/s"],
    );
    for (i, path) in paths.iter().enumerate() {
        table.row(vec![path.system.into(), fmt(rps[i], 0), fmt(cpu[i], 1), fmt(p99[i], 0)]);
    }
    table.row(vec![
        "on ÷ off".into(),
        fmt(rps[0] / rps[1], 3),
        fmt(cpu[0] / cpu[1], 3),
        fmt(p99[0] / p99[1], 3),
    ]);
    Ok((table, runs.raw()))
}

/// The sum of a metric's samples in a pod proxy's metrics whose labels
/// include every one of `labels` (`name="value"`).
fn proxy_metric(cluster: &Cluster, pod: &str, metric: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let text = cluster
        .lab
        .exec(pod, &["lab-app", "http-get", "http://127.0.0.1:4191/metrics"])?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(metric) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// What Gateway API routes cost on the request path (one hop): a GRPCRoute
/// of ten rules (every call checked against all ten) against none, closed
/// loop and at 1,000 calls/s; and what retries cost when a backend fails
/// 20% of its calls: the calls the backends get per client call, with and
/// without a retry policy.
pub fn routes(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let path = |system, service: &str| Path {
        system,
        client: cluster.client_plaintext.clone(),
        to: format!("{service}.{SVC}:50051"),
        proxies: vec![(cluster.client_plaintext.clone(), PROXY.into())],
    };
    let paths = vec![path("no route", "backend"), path("10-rule GRPCRoute", "backend-routed")];
    let runs = CostRuns::measure(cluster, &paths, effort)?;
    let (rps, cpu, p99) = (&runs.rps, &runs.cpu, &runs.p99);
    let duration = format!("{}s", effort.seconds);
    let mut table = Table::new(
        "Routes on the request path (one hop; closed loop 1 conn × 100 streams, and 1,000 calls/s), and retries against a backend failing 20%",
        &[
            "setting",
            "requests/s",
            "proxy CPU µs/request",
            "p99 µs at 1,000/s",
            "client calls ok",
            "backend calls per client call",
        ],
    );
    for (i, path) in paths.iter().enumerate() {
        table.row(vec![
            path.system.into(),
            fmt(rps[i], 0),
            fmt(cpu[i], 1),
            fmt(p99[i], 0),
            "–".into(),
            "1".into(),
        ]);
    }
    table.row(vec![
        "10 rules ÷ none".into(),
        fmt(rps[1] / rps[0], 3),
        fmt(cpu[1] / cpu[0], 3),
        fmt(p99[1] / p99[0], 3),
        "–".into(),
        "–".into(),
    ]);
    let mut raw_retries = Vec::new();
    let flaky = vec![
        path("20% failing, no retries", "flaky-raw"),
        path("20% failing, retries", "flaky"),
    ];
    for path in &flaky {
        let retried = |cluster: &Cluster| {
            proxy_metric(
                cluster,
                &path.client,
                "strait_retries_total",
                &["dst_service=\"flaky\"", "outcome=\"retried\""],
            )
        };
        let before = retried(cluster)?;
        let run = measure(
            cluster,
            path,
            &["--rate", "500", "--concurrency", "1000", "--duration", &duration],
        )?;
        let retries = retried(cluster)? - before;
        let ok = num(&run.load["ok"]);
        let calls = ok + num(&run.load["errors"]);
        table.row(vec![
            path.system.into(),
            fmt(num(&run.load["rps"]), 0),
            fmt(run.proxy_cpu_seconds / calls.max(1.0) * 1e6, 1),
            fmt(num(&run.load["latency_us"]["p99"]), 0),
            format!("{}%", fmt(ok / calls.max(1.0) * 100.0, 2)),
            fmt((calls + retries) / calls.max(1.0), 3),
        ]);
        raw_retries.push(json!({"system": path.system, "load": run.load, "retries": retries, "proxy_cpu_seconds": run.proxy_cpu_seconds}));
    }
    let mut raw = runs.raw();
    raw["retries"] = Value::Array(raw_retries);
    Ok((table, raw))
}

/// h2load (nghttp2) as a cross-check of our load generator.
pub fn h2load(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    // A gRPC frame of Request { payload: 16 bytes }, written inside the pod
    // (pods have their own /tmp) as printf octal escapes.
    let mut frame = vec![0u8, 0, 0, 0, 18, 0x0a, 16];
    frame.extend([7u8; 16]);
    let escaped: String = frame.iter().map(|b| format!("\\{b:03o}")).collect();
    let paths: Vec<Path> = cluster
        .one_backend()
        .into_iter()
        .filter(|p| p.system == "direct" || p.system == "strait")
        .collect();
    let requests = if effort.quick { "20000" } else { "100000" };
    let mut table = Table::new(
        "Cross-check: h2load vs strait-bench, closed loop 1 connection × 100 streams",
        &["system", "h2load requests/s", "strait-bench requests/s", "ratio"],
    );
    let mut raw = Vec::new();
    let duration = format!("{}s", effort.seconds);
    for path in &paths {
        let script = format!(
            "printf '{escaped}' > /tmp/strait-bench-unary.bin && h2load -n {requests} -c 1 -m 100 \
             -d /tmp/strait-bench-unary.bin -H 'content-type: application/grpc' -H 'te: trailers' \
             http://{}/strait.lab.Lab/Unary",
            path.to
        );
        let out = cluster.lab.exec(&path.client, &["sh", "-c", &script])?;
        let h2load_rps = out
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1)?.split(' ').next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        let ours = measure(cluster, path, &["--concurrency", "100", "--duration", &duration])?;
        let ours_rps = num(&ours.load["rps"]);
        table.row(vec![
            path.system.into(),
            fmt(h2load_rps, 0),
            fmt(ours_rps, 0),
            fmt(ours_rps / h2load_rps, 2),
        ]);
        raw.push(json!({"system": path.system, "h2load": out, "ours": ours.load}));
    }
    Ok((table, Value::Array(raw)))
}

/// Every scenario, by name, in report order.
pub const ALL: [&str; 18] = [
    "images",
    "memory",
    "held-connections",
    "latency",
    "throughput",
    "profile",
    "syscalls",
    "balance",
    "slow-pod",
    "endpoints",
    "opaque",
    "connections",
    "startup",
    "metrics-cost",
    "routes",
    "h2load",
    "destination",
    "baseline",
];

pub fn by_name(name: &str, cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    match name {
        "baseline" => baseline(cluster, effort),
        "images" => images(cluster, effort),
        "latency" => latency(cluster, effort),
        "throughput" => throughput(cluster, effort),
        "profile" => crate::profile::profile(cluster, effort),
        "syscalls" => crate::syscalls::syscalls(cluster, effort),
        "memory" => idle_memory(cluster),
        "held-connections" => held_connections(cluster),
        "balance" => balance(cluster, effort),
        "slow-pod" => slow_pod(cluster, effort),
        "endpoints" => endpoint_changes(cluster, effort),
        "opaque" => opaque(cluster, effort),
        "connections" => connections(cluster, effort),
        "startup" => startup(cluster, effort),
        "metrics-cost" => metrics_cost(cluster, effort),
        "routes" => routes(cluster, effort),
        "h2load" => h2load(cluster, effort),
        "destination" => crate::destination::destination(cluster, effort),
        other => anyhow::bail!("no scenario {other:?}; the scenarios are {}", ALL.join(", ")),
    }
}
