//! `strait-lab demo`: one gRPC client holding one HTTP/2 connection, a
//! Deployment scaled from 3 to 5 replicas, first without the mesh (one pod
//! does everything) and then with it; per-pod request share and CPU time
//! side by side. The shares come from the server pods' proxies (every
//! server is meshed; in the plain namespace the client is not, so nothing
//! balances its calls), each counting the calls it passed to its app.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::{ensure_running, wait_ready};
use crate::client::LabClient;
use crate::manifest;
use crate::metrics_text::sum_by;
use crate::paths::{LabPaths, bin_dir};

const MANIFEST: &str = include_str!("../manifests/demo.yaml");
const CALL_SECONDS: &str = "4s";

/// Runs a command in a pod through this binary's `exec`, returning its output.
pub async fn exec(paths: &LabPaths, pod: &str, command: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(bin_dir().join("strait-lab"))
        .args(["exec", pod, "--"])
        .args(command)
        .env(crate::paths::LAB_NAME_ENV, &paths.name)
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "{command:?} in {pod} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub async fn pods(client: &LabClient, namespace: &str, app: &str) -> anyhow::Result<Vec<String>> {
    let listed = client
        .get(&format!(
            "/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{app}"
        ))
        .await?;
    let mut names: Vec<String> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

async fn cpu(client: &LabClient, namespace: &str, pod: &str) -> f64 {
    let answer = client
        .get(&format!("/lab/v1/namespaces/{namespace}/pods/{pod}/cpu"))
        .await
        .unwrap_or(Value::Null);
    answer
        .pointer("/cpuSeconds/grpc")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

/// Calls each server pod's proxy has passed to its app so far.
async fn served(paths: &LabPaths, namespace: &str, servers: &[String]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut counts = BTreeMap::new();
    for pod in servers {
        let text = exec(
            paths,
            &format!("{namespace}/{pod}"),
            &["lab-app", "http-get", "http://127.0.0.1:4191/metrics"],
        )
        .await?;
        let inbound = sum_by(&text, "strait_requests_total", &[("direction", "inbound")], "dst_pod");
        counts.insert(pod.clone(), inbound.values().sum());
    }
    Ok(counts)
}

/// One measurement: calls for a few seconds over one connection.
async fn measure(paths: &LabPaths, client: &LabClient, namespace: &str) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let client_pod = format!(
        "{namespace}/{}",
        pods(client, namespace, "client")
            .await?
            .first()
            .context("no client pod")?
    );
    let servers = pods(client, namespace, "grpc").await?;
    let mut cpu_before = BTreeMap::new();
    for pod in &servers {
        cpu_before.insert(pod.clone(), cpu(client, namespace, pod).await);
    }
    let counts_before = served(paths, namespace, &servers).await?;
    let args = [
        "lab-app",
        "grpc-client",
        "--to",
        "grpc:50051",
        "--duration",
        CALL_SECONDS,
        "--concurrency",
        "16",
        "--rate",
        "1000",
    ];
    exec(paths, &client_pod, &args).await?;
    let counts: BTreeMap<String, f64> = served(paths, namespace, &servers)
        .await?
        .into_iter()
        .map(|(pod, n)| (pod.clone(), n - counts_before.get(&pod).copied().unwrap_or(0.0)))
        .collect();
    let total: f64 = counts.values().sum::<f64>().max(1.0);
    let mut rows = Vec::new();
    for pod in servers.iter().cloned() {
        let used = cpu(client, namespace, &pod).await - cpu_before.get(&pod).copied().unwrap_or(0.0);
        let share = counts.get(&pod).copied().unwrap_or(0.0) / total;
        rows.push((pod, share, used));
    }
    Ok(rows)
}

async fn scale(client: &LabClient, namespace: &str, replicas: u32) -> anyhow::Result<()> {
    let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/grpc/scale");
    client
        .merge_patch(&path, &json!({"spec": {"replicas": replicas}}))
        .await?;
    wait_ready(client, &[namespace.to_string()], Duration::from_secs(120)).await?;
    // Give discovery a moment to carry the new endpoints to the proxies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn bar(share: f64) -> String {
    "█".repeat((share * 40.0).round() as usize)
}

pub async fn run(paths: &LabPaths, client: &LabClient) -> anyhow::Result<()> {
    println!("strait demo: one gRPC client holds ONE HTTP/2 connection to a Service whose");
    println!("Deployment is scaled from 3 to 5 replicas. Each call burns 300 µs of server CPU.\n");
    ensure_running(paths, client, None).await?;
    for object in manifest::parse(MANIFEST, "demo.yaml")? {
        manifest::apply(client, &object).await?;
    }
    wait_ready(
        client,
        &["plain".to_string(), "demo".to_string()],
        Duration::from_secs(180),
    )
    .await?;
    for (namespace, title) in [
        (
            "plain",
            "Without strait in the client pod, kube-proxy balances connections, and the client has one",
        ),
        ("demo", "With strait, the client's proxy balances every call"),
    ] {
        println!("{title} (namespace {namespace}):");
        println!("  {:<9} {:<26} {:>7}  {:>8}", "replicas", "pod", "share", "CPU");
        for replicas in [3, 5] {
            scale(client, namespace, replicas).await?;
            let rows = measure(paths, client, namespace).await?;
            for (i, (pod, share, used)) in rows.iter().enumerate() {
                let replicas = if i == 0 { replicas.to_string() } else { String::new() };
                println!(
                    "  {replicas:<9} {pod:<26} {:>6.1}%  {used:>7.2}s  {}",
                    share * 100.0,
                    bar(*share)
                );
            }
        }
        println!();
    }
    println!("Shares are each server proxy's strait_requests_total{{direction=\"inbound\"}} over the run;");
    println!("CPU is each server pod's application processes, from /proc.");
    println!(
        "The lab is still running: `target/release/strait-lab status` shows it, `target/release/strait-lab down` removes it."
    );
    Ok(())
}
