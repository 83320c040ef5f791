//! The `destination` scenario: discovery at scale, before and after the
//! destination service, in one run.
//!
//! - **After**: `strait-bench subscribe` in a pod plays N proxies (one
//!   mutually authenticated connection each, as the proxy makes) following
//!   one of M Services of their own and one Service they all follow; the
//!   bench then adds endpoints to that Service's EndpointSlice and reads
//!   when each simulated proxy learnt of them.
//! - **Before**: the watches proxies held before the destination service
//!   (each one: every Service in the cluster, and the EndpointSlices of the
//!   Service it used), opened N times against the lab's API server, through
//!   the same endpoint changes.
//!
//! The Services have no selector: their EndpointSlices are the bench's
//! (`endpointslice.kubernetes.io/managed-by: strait-bench`), as Kubernetes
//! allows, so an endpoint change is one API write and no pod.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lab::{Lab, usage};
use crate::report::Table;
use crate::scenarios::{Cluster, Effort, fmt};

const NAMESPACE: &str = "bench-dst";
/// Where the many Services of the proxy-memory comparison go.
const MANY: &str = "bench-many";
const DESTINATION: &str = "strait-destination.strait-system.svc.cluster.local:8086";
/// The control plane's own trust anchor and issuer.
pub const IDENTITY_SECRET: &str = "strait-system/strait-identity-generated";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/default";

/// How big a run is.
struct Size {
    proxies: usize,
    services: usize,
    changes: usize,
    /// Services in the cluster for the second proxy-memory reading.
    many_services: usize,
}

impl Size {
    fn of(effort: Effort) -> Size {
        if effort.quick {
            Size {
                proxies: 100,
                services: 10,
                changes: 3,
                many_services: 100,
            }
        } else {
            Size {
                proxies: 1000,
                services: 100,
                changes: 10,
                many_services: 1000,
            }
        }
    }
}

pub fn destination(cluster: &Cluster, effort: Effort) -> anyhow::Result<(Table, Value)> {
    let lab = &cluster.lab;
    let size = Size::of(effort);
    // Containers have a /tmp and /run of their own but see the rest of the
    // host: the simulated proxies read their addresses and identity files
    // from here.
    let work = work_dir();
    std::fs::create_dir_all(&work)?;

    // A meshed proxy's memory with the lab's own few Services...
    let proxy_pid = lab.container_pid(&cluster.client_mtls, "strait-proxy")?;
    let services_before = count(lab, "/api/v1/services")?;
    let proxy_rss_few = usage(&[proxy_pid]).rss_bytes;

    let manifest = work.join("services.yaml");
    std::fs::write(&manifest, services(NAMESPACE, "svc", size.services, true))?;
    lab.up(&manifest, &[])?;
    let addresses = cluster_ips(lab, NAMESPACE)?;
    let hot = addresses
        .iter()
        .find(|(name, _)| name == "svc-0")
        .map(|(_, ip)| format!("{ip}:80"))
        .context("svc-0 has no ClusterIP")?;
    let list = work.join("addresses");
    std::fs::write(
        &list,
        addresses
            .iter()
            .filter(|(n, _)| n != "svc-0")
            .map(|(_, ip)| format!("{ip}:80\n"))
            .collect::<String>(),
    )?;
    let identity = identity_files(lab, &work)?;

    // After: the destination service.
    let injector = lab
        .pods("strait-system", "strait-injector-")?
        .into_iter()
        .next()
        .map(|(pod, _)| pod)
        .context("no control-plane pod")?;
    let injector_pid = lab.container_pid(&injector, "injector")?;
    let control_before = usage(&[injector_pid]);
    let api_before = api_stats(lab)?;
    let proxies = size.proxies.to_string();
    let changes = size.changes.to_string();
    // From the unmeshed client: the simulated proxies' connections, like a
    // proxy's own, are not redirected through a proxy.
    let mut subscribers = lab.spawn_exec(
        &cluster.client,
        &[
            "strait-bench",
            "subscribe",
            "--to",
            DESTINATION,
            "--anchors",
            &identity.anchors,
            "--issuer-cert",
            &identity.issuer_cert,
            "--issuer-key",
            &identity.issuer_key,
            "--client-id",
            CLIENT_ID,
            "--proxies",
            &proxies,
            "--addresses",
            &list.display().to_string(),
            "--hot",
            &hot,
            "--changes",
            &changes,
        ],
    )?;
    let lines = lines_of(subscribers.stdout.take().context("the subscribers' output")?);
    let storm = next_with(&lines, "storm", Duration::from_secs(300))?;
    next_with(&lines, "ready", Duration::from_secs(10))?;
    let control_subscribed = usage(&[injector_pid]);
    let api_ready = api_stats(lab)?;
    let mut fan_out_ms: Vec<f64> = Vec::new();
    for change in 0..size.changes {
        let address = format!("198.18.201.{}", change + 1);
        let written = write_hot_endpoints(lab, 201, change + 1)?;
        let line = next_with(&lines, "endpoint", Duration::from_secs(60))?;
        if line["endpoint"] != format!("{address}:8080") {
            bail!("expected {address}:8080 to reach every subscriber, got {line}");
        }
        fan_out_ms.extend(
            line["received_unix_ns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .map(|at| (at as f64 - written as f64) / 1e6),
        );
    }
    let done = next_with(&lines, "done", Duration::from_secs(30))?;
    let control_after = usage(&[injector_pid]);
    let api_after = api_stats(lab)?;
    let _ = subscribers.kill();
    let _ = subscribers.wait();
    let control_user = "system:serviceaccount:strait-system:strait-injector";
    let after_bytes = delta(&api_before, &api_after, control_user, "bytesSent");
    let after_start_bytes = delta(&api_before, &api_ready, control_user, "bytesSent");
    let after_change_bytes = delta(&api_ready, &api_after, control_user, "bytesSent");
    let after_watches = api_after[control_user]["openWatches"].as_u64().unwrap_or_default();

    // Before: the per-proxy watches, through the same number of changes.
    let socket = lab.state().join("api.sock");
    let before = runtime()?.block_on(per_proxy_watches(lab, &socket, &size))?;

    // A meshed proxy's memory with many more Services in the cluster.
    let many = work.join("many.yaml");
    std::fs::write(&many, services(MANY, "many", size.many_services, false))?;
    lab.up(&many, &[])?;
    std::thread::sleep(Duration::from_secs(5));
    let services_after = count(lab, "/api/v1/services")?;
    let proxy_rss_many = usage(&[proxy_pid]).rss_bytes;

    let _ = std::fs::remove_dir_all(&work);
    fan_out_ms.sort_by(f64::total_cmp);
    let subscriptions = storm["storm"]["subscriptions"].as_u64().unwrap_or_default() as f64;
    let per_thousand = |value: f64| value * 1000.0 / subscriptions.max(1.0);
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let control_cpu = control_after.cpu_seconds - control_before.cpu_seconds;
    let control_rss = control_subscribed.rss_bytes as f64 - control_before.rss_bytes as f64;
    let n = size.proxies;
    let mut table = Table::new(
        &format!(
            "Discovery at scale: {n} proxies, {} Services, {} endpoint changes (before: per-proxy API watches; after: the destination service)",
            size.services, size.changes
        ),
        &["measure", "before", "after", "after/before"],
    );
    let ratio = |after: f64, before: f64| {
        if before > 0.0 {
            fmt(after / before, 4)
        } else {
            "–".into()
        }
    };
    let watches_before = before["open_watches"].as_f64().unwrap_or_default();
    table.row(vec![
        "API-server watches open".into(),
        fmt(watches_before, 0),
        fmt(after_watches as f64, 0),
        ratio(after_watches as f64, watches_before),
    ]);
    let start_before = before["bytes_at_start"].as_f64().unwrap_or_default();
    table.row(vec![
        format!("API-server bytes sent to start {n} proxies' discovery"),
        fmt(start_before, 0),
        fmt(after_start_bytes, 0),
        ratio(after_start_bytes, start_before),
    ]);
    let changes_before = before["bytes_for_changes"].as_f64().unwrap_or_default();
    table.row(vec![
        format!("API-server bytes sent for the {} endpoint changes", size.changes),
        fmt(changes_before, 0),
        fmt(after_change_bytes, 0),
        ratio(after_change_bytes, changes_before),
    ]);
    table.row(vec![
        format!("fan-out p50 / p99, ms (EndpointSlice write → all {n} proxies)"),
        "–".into(),
        format!(
            "{} / {}",
            fmt(quantile(&fan_out_ms, 0.5), 1),
            fmt(quantile(&fan_out_ms, 0.99), 1)
        ),
        "–".into(),
    ]);
    table.row(vec![
        format!(
            "start storm: {} subscriptions opened at once → all have their first snapshot, ms",
            subscriptions
        ),
        "–".into(),
        fmt(storm["storm"]["all_ms"].as_f64().unwrap_or(f64::NAN), 0),
        "–".into(),
    ]);
    table.row(vec![
        "control plane CPU seconds per 1,000 subscriptions (storm and changes)".into(),
        "–".into(),
        fmt(per_thousand(control_cpu), 3),
        "–".into(),
    ]);
    table.row(vec![
        "control plane RSS per 1,000 subscriptions, MiB".into(),
        "–".into(),
        fmt(mib(per_thousand(control_rss)), 1),
        "–".into(),
    ]);
    table.row(vec![
        format!("a meshed proxy's RSS, MiB, {services_before} → {services_after} Services in the cluster"),
        fmt(mib(proxy_rss_few as f64), 1),
        fmt(mib(proxy_rss_many as f64), 1),
        ratio(proxy_rss_many as f64, proxy_rss_few as f64),
    ]);
    let raw = json!({
        "size": {"proxies": n, "services": size.services, "changes": size.changes},
        "storm": storm["storm"],
        "done": done["done"],
        "fan_out_ms": {"p50": quantile(&fan_out_ms, 0.5), "p99": quantile(&fan_out_ms, 0.99), "max": fan_out_ms.last(), "samples": fan_out_ms.len()},
        "control_plane": {"cpu_seconds": control_cpu, "rss_bytes_before": control_before.rss_bytes, "rss_bytes_subscribed": control_subscribed.rss_bytes},
        "api_after": {"open_watches": after_watches, "bytes": after_bytes, "bytes_at_start": after_start_bytes, "bytes_for_changes": after_change_bytes},
        "api_before": before,
        "proxy_rss": {"services": [services_before, services_after], "bytes": [proxy_rss_few, proxy_rss_many]},
    });
    Ok((table, raw))
}

fn work_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/var/tmp").join(format!("strait-bench-destination-{}", std::process::id()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// `count` Services named `prefix-I` in `namespace` (created first), each
/// port 80 → 8080 and, with `slices`, an EndpointSlice of two endpoints.
fn services(namespace: &str, prefix: &str, count: usize, slices: bool) -> String {
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n");
    for i in 0..count {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {prefix}-{i}, namespace: {namespace}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
        ));
        if slices {
            yaml.push_str(&slice_yaml(
                namespace,
                &format!("{prefix}-{i}"),
                &endpoints(200, i % 250, 2),
            ));
        }
    }
    yaml
}

/// `count` addresses 198.18.THIRD.(start+1)...
fn endpoints(third: usize, start: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|k| format!("198.18.{third}.{}", (start + k) % 254 + 1))
        .collect()
}

fn slice_yaml(namespace: &str, service: &str, addresses: &[String]) -> String {
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("  - {{addresses: [\"{a}\"], conditions: {{ready: true}}}}\n"))
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-bench\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {service}, endpointslice.kubernetes.io/managed-by: strait-bench}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

/// Replaces the hot Service's slice with its two endpoints plus
/// 198.18.THIRD.1 ..= 198.18.THIRD.UPTO; returns when (Unix ns) the write
/// was sent.
fn write_hot_endpoints(lab: &Lab, third: usize, upto: usize) -> anyhow::Result<u128> {
    let mut addresses = endpoints(200, 0, 2);
    addresses.extend((1..=upto).map(|k| format!("198.18.{third}.{k}")));
    let file = work_dir().join("hot.yaml");
    std::fs::write(&file, slice_yaml(NAMESPACE, "svc-0", &addresses))?;
    let written = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    lab.up(&file, &[])?;
    Ok(written)
}

/// Every Service of `namespace` with its ClusterIP.
fn cluster_ips(lab: &Lab, namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    let list = api_get(lab, &format!("/api/v1/namespaces/{namespace}/services"))?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["metadata"]["name"].as_str()?.to_string(),
                s["spec"]["clusterIP"].as_str().filter(|ip| *ip != "None")?.to_string(),
            ))
        })
        .collect())
}

fn count(lab: &Lab, path: &str) -> anyhow::Result<usize> {
    Ok(api_get(lab, path)?["items"].as_array().map_or(0, Vec::len))
}

fn api_get(lab: &Lab, path: &str) -> anyhow::Result<Value> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--unix-socket"])
        .arg(lab.state().join("api.sock"))
        .arg(format!("http://lab{path}"))
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!("GET {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn api_stats(lab: &Lab) -> anyhow::Result<Value> {
    api_get(lab, "/lab/v1/apiserver/stats")
}

fn delta(before: &Value, after: &Value, user: &str, field: &str) -> f64 {
    after[user][field].as_f64().unwrap_or_default() - before[user][field].as_f64().unwrap_or_default()
}

struct IdentityFiles {
    anchors: String,
    issuer_cert: String,
    issuer_key: String,
}

/// The control plane's own trust anchor and issuer, from its Secret, as
/// files the simulated proxies read.
fn identity_files(lab: &Lab, work: &Path) -> anyhow::Result<IdentityFiles> {
    let file = |key: &str| lab.secret_file(IDENTITY_SECRET, key, &work.join(key));
    Ok(IdentityFiles {
        anchors: file("ca.crt")?,
        issuer_cert: file("tls.crt")?,
        issuer_key: file("tls.key")?,
    })
}

/// Reads a child's output lines on a thread, as JSON.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<Value> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && sender.send(value).is_err()
            {
                return;
            }
        }
    });
    receiver
}

/// The next line with the key `key`, skipping others.
fn next_with(lines: &std::sync::mpsc::Receiver<Value>, key: &str, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("the subscribers printed no {key:?} line within {within:?}"))?;
        if line.get(key).is_some() {
            return Ok(line);
        }
    }
}

/// What proxies did before: each watched every Service and its Service's
/// EndpointSlices. Opens those watches for `size.proxies` proxies, makes
/// the same endpoint changes, and counts the bytes the API server sent.
async fn per_proxy_watches(lab: &Lab, socket: &Path, size: &Size) -> anyhow::Result<Value> {
    let received = Arc::new(AtomicU64::new(0));
    let mut watches = Vec::new();
    let stats_before = api_stats(lab)?;
    for proxy in 0..size.proxies {
        let own = format!("svc-{}", 1 + proxy % size.services.saturating_sub(1).max(1));
        for path in [
            "/api/v1/services?watch=true".to_string(),
            format!(
                "/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices?watch=true&labelSelector=kubernetes.io%2Fservice-name%3D{own}"
            ),
            format!(
                "/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices?watch=true&labelSelector=kubernetes.io%2Fservice-name%3Dsvc-0"
            ),
        ] {
            watches.push(tokio::spawn(watch(socket.to_path_buf(), path, received.clone())));
        }
    }
    let opened_at = Instant::now();
    // Every watch has had its initial events.
    let mut last = u64::MAX;
    while Instant::now() - opened_at < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = received.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let open = api_stats(lab)?;
    let at_start = received.load(Ordering::SeqCst);
    for change in 0..size.changes {
        write_hot_endpoints(lab, 202, change + 1)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats_after = api_stats(lab)?;
    for watch in &watches {
        watch.abort();
    }
    let user = "system:admin";
    Ok(json!({
        "proxies": size.proxies,
        "open_watches": delta(&stats_before, &open, user, "openWatches"),
        "bytes": received.load(Ordering::SeqCst),
        "bytes_at_start": at_start,
        "bytes_for_changes": received.load(Ordering::SeqCst) - at_start,
        "api_bytes_sent": delta(&stats_before, &stats_after, user, "bytesSent"),
    }))
}

/// One watch over the lab's API socket, counting what it receives.
async fn watch(socket: std::path::PathBuf, path: String, received: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut stream = tokio::net::UnixStream::connect(&socket).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: lab\r\nAccept: application/json\r\n\r\n").as_bytes())
        .await?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        received.fetch_add(read as u64, Ordering::SeqCst);
    }
}
