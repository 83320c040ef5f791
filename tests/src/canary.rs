//! `strait-lab demo canary`: Gateway API routes in the mesh. A GRPCRoute
//! bound to the Service `grpc` (GAMMA) sends its Admin method to v2 and
//! splits the other calls 90/10 between v1 and v2; the shares are read
//! from the client's proxy (`strait_requests_total` by `route_name` and
//! `dst_service`). Then v2 fails every call: without a retry policy the
//! failures reach the client; with `retry.strait.io/grpc: unavailable` on
//! the route they are retried on v1, within the retry budget.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{ensure_running, wait_ready};
use crate::client::LabClient;
use crate::demo::{exec, pods};
use crate::manifest;
use crate::metrics_text::sum_by;
use crate::paths::LabPaths;

const MANIFEST: &str = include_str!("../manifests/canary.yaml");
const NAMESPACE: &str = "canary";
const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/canary/grpcroutes/canary";

/// The client proxy's outbound counts of `metric`, by `by`.
async fn counts(
    paths: &LabPaths,
    client_pod: &str,
    metric: &str,
    filter: &[(&str, &str)],
    by: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = exec(
        paths,
        client_pod,
        &["lab-app", "http-get", "http://127.0.0.1:4191/metrics"],
    )
    .await?;
    Ok(sum_by(&text, metric, filter, by))
}

/// Calls for a few seconds; returns the client's summary line.
async fn call(paths: &LabPaths, client_pod: &str, method: &str, seconds: &str, rate: &str) -> anyhow::Result<Value> {
    let out = exec(
        paths,
        client_pod,
        &[
            "lab-app",
            "grpc-client",
            "--to",
            "grpc:50051",
            "--method",
            method,
            "--duration",
            seconds,
            "--rate",
            rate,
            "--concurrency",
            "8",
        ],
    )
    .await?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the client printed no summary")?;
    Ok(serde_json::from_str(line)?)
}

/// The change in each count between two readings.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn print_shares(title: &str, counts: &BTreeMap<String, f64>) {
    let total: f64 = counts.values().sum::<f64>().max(1.0);
    println!("  {title}");
    for (service, n) in counts {
        let share = n / total;
        println!(
            "    {service:<10} {n:>7.0} calls {:>6.1}%  {}",
            share * 100.0,
            "█".repeat((share * 40.0).round() as usize)
        );
    }
}

/// Makes v2's servers fail every call, or answer again (their
/// `--fail-while` file).
async fn fail_v2(paths: &LabPaths, client: &LabClient, failing: bool) -> anyhow::Result<()> {
    for pod in pods(client, NAMESPACE, "grpc")
        .await?
        .iter()
        .filter(|p| p.starts_with("grpc-v2-"))
    {
        let marker = format!("/tmp/strait-lab-fail-{pod}");
        let command: &[&str] = if failing {
            &["touch", &marker]
        } else {
            &["rm", "-f", &marker]
        };
        exec(paths, &format!("{NAMESPACE}/{pod}"), command).await?;
    }
    Ok(())
}

/// Runs the canary demo on the running (or a new) lab.
pub async fn run(paths: &LabPaths, client: &LabClient) -> anyhow::Result<()> {
    println!("strait canary demo: a GRPCRoute bound to the Service grpc (Gateway API, GAMMA)");
    println!("sends the Admin method to v2 and splits the other calls 90/10 between v1 and v2.\n");
    ensure_running(paths, client, None).await?;
    for object in manifest::parse(MANIFEST, "canary.yaml")? {
        manifest::apply(client, &object).await?;
    }
    wait_ready(client, &[NAMESPACE.to_string()], Duration::from_secs(180)).await?;
    let client_pod = format!(
        "{NAMESPACE}/{}",
        pods(client, NAMESPACE, "client")
            .await?
            .first()
            .context("no client pod")?
    );
    let route = [("direction", "outbound"), ("route_name", "canary/canary")];

    println!("Act 1: the route at work. v1 has 2 pods and v2 one, so without the route v2 would take");
    println!("about a third of the calls; the client's proxy counts each call by route and backend:");
    let before = counts(paths, &client_pod, "strait_requests_total", &route, "dst_service").await?;
    call(paths, &client_pod, "Unary", "4s", "500").await?;
    let after = counts(paths, &client_pod, "strait_requests_total", &route, "dst_service").await?;
    print_shares("Unary calls, 90/10 split:", &delta(&before, &after));
    call(paths, &client_pod, "Admin", "1s", "200").await?;
    let admin = counts(paths, &client_pod, "strait_requests_total", &route, "dst_service").await?;
    print_shares("Admin calls, matched by method:", &delta(&after, &admin));

    println!("\nAct 2: v2 now fails every call with UNAVAILABLE; it takes 10% of the calls.");
    fail_v2(paths, client, true).await?;
    let without = call(paths, &client_pod, "Unary", "4s", "500").await?;
    println!(
        "  without a retry policy: {} of {} calls failed",
        without["calls"].as_u64().unwrap_or(0) - without["ok"].as_u64().unwrap_or(0),
        without["calls"],
    );
    println!("  adding to the route: retry.strait.io/grpc: unavailable, retry.strait.io/limit: \"3\"");
    // A merge patch, as `kubectl annotate` sends: the control plane writes the
    // route's status meanwhile, and a read-then-replace could meet a 409.
    let annotations = json!({"retry.strait.io/grpc": "unavailable", "retry.strait.io/limit": "3"});
    client
        .merge_patch(ROUTE, &json!({"metadata": {"annotations": annotations}}))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries_before = counts(
        paths,
        &client_pod,
        "strait_retries_total",
        &[("route_name", "canary/canary")],
        "outcome",
    )
    .await?;
    let with = call(paths, &client_pod, "Unary", "4s", "500").await?;
    let retries = delta(
        &retries_before,
        &counts(
            paths,
            &client_pod,
            "strait_retries_total",
            &[("route_name", "canary/canary")],
            "outcome",
        )
        .await?,
    );
    let count = |outcome: &str| retries.get(outcome).copied().unwrap_or(0.0);
    println!(
        "  with retry.strait.io/grpc: unavailable: {} of {} calls failed; {:.0} retried on v1, {:.0} refused by the budget",
        with["calls"].as_u64().unwrap_or(0) - with["ok"].as_u64().unwrap_or(0),
        with["calls"],
        count("retried"),
        count("budget_exhausted"),
    );
    println!("  (retries take about 10% of the calls, within the budget of 20% of the calls plus 10 a second)");
    fail_v2(paths, client, false).await?;
    println!("\nv2 answers again; the route keeps its retry policy. The lab is still running:");
    println!("`target/release/strait-lab status` shows it, `target/release/strait-lab down` removes it.");
    Ok(())
}
