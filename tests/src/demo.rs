//! `strait-lab demo`: one gRPC client holding one HTTP/2 connection, a
//! Deployment scaled from 3 to 5 replicas, first without the mesh (one pod
//! does everything) and then with it; per-pod request share and CPU time
//! side by side. With the mesh, the shares come from the client proxy's own
//! metrics; without it, from the client's count of who answered.

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
async fn exec(paths: &LabPaths, pod: &str, command: &[&str]) -> anyhow::Result<String> {
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

async fn pods(client: &LabClient, namespace: &str, app: &str) -> anyhow::Result<Vec<String>> {
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

async fn proxy_counts(paths: &LabPaths, client_pod: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = exec(
        paths,
        client_pod,
        &["lab-app", "http-get", "http://127.0.0.1:4191/metrics"],
    )
    .await?;
    Ok(sum_by(
        &text,
        "strait_requests_total",
        &[("direction", "outbound"), ("dst_service", "grpc")],
        "dst_pod",
    ))
}

/// One measurement: calls for a few seconds over one connection.
async fn measure(
    paths: &LabPaths,
    client: &LabClient,
    namespace: &str,
    meshed: bool,
) -> anyhow::Result<Vec<(String, f64, f64)>> {
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
    let counts_before = if meshed {
        proxy_counts(paths, &client_pod).await?
    } else {
        BTreeMap::new()
    };
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
    let result: Value = serde_json::from_str(exec(paths, &client_pod, &args).await?.lines().last().unwrap_or("{}"))?;
    let counts: BTreeMap<String, f64> = if meshed {
        let after = proxy_counts(paths, &client_pod).await?;
        after
            .iter()
            .map(|(pod, n)| (pod.clone(), n - counts_before.get(pod).copied().unwrap_or(0.0)))
            .collect()
    } else {
        result["by_pod"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(pod, n)| (pod.clone(), n.as_f64().unwrap_or(0.0)))
            .collect()
    };
    let total: f64 = counts.values().sum::<f64>().max(1.0);
    let mut rows = Vec::new();
    for pod in servers {
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
    ensure_running(paths, client).await?;
    for object in manifest::parse(MANIFEST, "demo.yaml")? {
        manifest::apply(client, &object).await?;
    }
    wait_ready(
        client,
        &["plain".to_string(), "demo".to_string()],
        Duration::from_secs(180),
    )
    .await?;
    for (namespace, meshed, title) in [
        (
            "plain",
            false,
            "Without the mesh, kube-proxy balances connections, and the client has one",
        ),
        ("demo", true, "With strait, the client's proxy balances every call"),
    ] {
        println!("{title} (namespace {namespace}):");
        println!("  {:<9} {:<26} {:>7}  {:>8}", "replicas", "pod", "share", "CPU");
        for replicas in [3, 5] {
            scale(client, namespace, replicas).await?;
            let rows = measure(paths, client, namespace, meshed).await?;
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
    println!("Shares with the mesh come from the client proxy's strait_requests_total by dst_pod;");
    println!("CPU is each server pod's application processes, from /proc.");
    println!("The lab is still running: `strait-lab status` shows it, `strait-lab down` removes it.");
    Ok(())
}
