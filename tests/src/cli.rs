//! The `strait-lab` command line (the contract in DESIGN.md).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::LabClient;
use crate::kubelet::container::Process;
use crate::kubelet::nsenter::PodNamespaces;
use crate::kubelet::sandbox::{self, SandboxArgs};
use crate::paths::{LabPaths, bin_dir};
use crate::{manifest, network, table};

#[derive(Debug, Parser)]
#[command(
    name = "strait-lab",
    version,
    about = "A Kubernetes-shaped cluster on one Linux machine, for strait"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the lab (if needed) and apply Kubernetes YAML; returns once all pods are ready.
    Up {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Start the lab in CNI mode: strait's chart with `cni.enabled`, so
        /// strait-cni's DaemonSet chains the plugin into the node's CNI
        /// configuration and meshed pods need no privileged init container.
        #[arg(long)]
        cni: bool,
        /// How long to wait for the pods to become ready.
        #[arg(long, default_value = "180s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Pods, services, and the image digest each of strait's containers runs.
    Status {
        /// `table` (default) or `json`.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Run a command inside a pod, as its container's user.
    Exec {
        /// NAMESPACE/POD
        target: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An object (or list) from the API server, as JSON: the path as
    /// `kubectl get --raw` takes it, e.g.
    /// `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations`.
    Get { path: String },
    /// Delete an object by its API path, as `kubectl delete --raw` does, e.g.
    /// `/apis/apps/v1/namespaces/strait-system/daemonsets/strait-cni`.
    Delete { path: String },
    /// Change a Deployment's replicas.
    Scale { target: String, replicas: u32 },
    /// Crash a pod; its Deployment replaces it.
    Kill { target: String },
    /// Set (`KEY=VALUE`) or remove (`KEY-`) annotations of a pod, as
    /// `kubectl annotate --overwrite` does.
    Annotate {
        /// NAMESPACE/POD
        target: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// A container's output.
    Logs {
        target: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
    },
    /// Stop everything and remove every namespace, link and rule the lab made.
    Down,
    /// The guided demo: per-pod request share and CPU, without and with the
    /// mesh; `demo canary`: Gateway API routes (a method match, a 90/10
    /// split, retries hiding a failing canary).
    Demo {
        #[arg(value_parser = ["canary"])]
        act: Option<String>,
    },
    /// Take the API server off the lab network, or bring it back; or show
    /// who loads it (`stats`: per user, requests, lists, watches, open
    /// watches, refusals and bytes sent).
    Apiserver {
        #[arg(value_parser = ["stop", "start", "stats"])]
        action: String,
    },
    /// Start a real Prometheus that scrapes every proxy, and print its URL.
    Prometheus {
        /// Port on the host's loopback for its UI and API (0 picks a free one).
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// How often it scrapes.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        scrape_interval: Duration,
    },
    #[command(hide = true)]
    Daemon,
    #[command(hide = true)]
    PortForward(crate::forward::ForwardArgs),
    #[command(hide = true)]
    Sandbox(SandboxArgs),
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    strait_contract::parse_duration(text).map_err(|e| e.to_string())
}

/// `NAMESPACE/NAME`, or `NAME` in `default`.
pub fn split_target(target: &str) -> (String, String) {
    match target.split_once('/') {
        Some((namespace, name)) => (namespace.to_string(), name.to_string()),
        None => ("default".to_string(), target.to_string()),
    }
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("strait-lab needs root: it creates network namespaces, links and iptables rules");
    }
    Ok(())
}

pub async fn run(command: Command, paths: LabPaths) -> anyhow::Result<i32> {
    let client = LabClient::new(&paths);
    match command {
        Command::Up { files, timeout, cni } => {
            require_root()?;
            up(&paths, &client, &files, timeout, cni).await?;
        }
        Command::Status { output } => status(&client, &output).await?,
        Command::Get { path } => println!("{:#}", client.get(&path).await?),
        Command::Delete { path } => {
            client.delete(&path).await?;
            println!("{path} deleted");
        }
        Command::Exec {
            target,
            container,
            command,
        } => {
            require_root()?;
            return exec(&paths, &client, &target, container.as_deref(), &command).await;
        }
        Command::Scale { target, replicas } => {
            let (namespace, name) = split_target(&target);
            let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale");
            client
                .merge_patch(&path, &json!({"spec": {"replicas": replicas}}))
                .await?;
            println!("deployment {namespace}/{name} scaled to {replicas}");
        }
        Command::Kill { target } => {
            let (namespace, name) = split_target(&target);
            client
                .post(&format!("/lab/v1/namespaces/{namespace}/pods/{name}/kill"), &json!({}))
                .await?;
            println!("pod {namespace}/{name} killed");
        }
        Command::Annotate { target, changes } => {
            let (namespace, name) = split_target(&target);
            let mut annotations = serde_json::Map::new();
            for change in &changes {
                let (key, value) = match (change.split_once('='), change.strip_suffix('-')) {
                    (Some((key, value)), _) => (key, json!(value)),
                    (None, Some(key)) => (key, Value::Null),
                    (None, None) => bail!("{change:?}: expected KEY=VALUE or KEY-"),
                };
                annotations.insert(key.to_string(), value);
            }
            client
                .merge_patch(
                    &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                    &json!({"metadata": {"annotations": annotations}}),
                )
                .await?;
            println!("pod {namespace}/{name} annotated");
        }
        Command::Logs { target, container } => {
            let (namespace, name) = split_target(&target);
            let pod = client
                .get(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))
                .await?;
            let container = pick_container(&pod, container.as_deref())?;
            let log = paths.container_log(&namespace, &name, container["name"].as_str().unwrap_or_default());
            let text = std::fs::read(&log).with_context(|| format!("no output recorded at {}", log.display()))?;
            std::io::Write::write_all(&mut std::io::stdout(), &text)?;
        }
        Command::Down => {
            require_root()?;
            down(&paths, &client).await?;
        }
        Command::Demo { act } => {
            require_root()?;
            match act.as_deref() {
                Some("canary") => crate::canary::run(&paths, &client).await?,
                _ => crate::demo::run(&paths, &client).await?,
            }
        }
        Command::Apiserver { action } if action == "stats" => {
            let stats = client.get("/lab/v1/apiserver/stats").await?;
            print_api_stats(&stats);
        }
        Command::Apiserver { action } => {
            let answer = client.post(&format!("/lab/v1/apiserver/{action}"), &json!({})).await?;
            println!("apiserver: {}", answer["apiserver"].as_str().unwrap_or_default());
        }
        Command::Daemon => {
            require_root()?;
            crate::daemon::run(paths).await?;
        }
        Command::Prometheus { port, scrape_interval } => {
            require_root()?;
            ensure_running(&paths, &client, None).await?;
            let interval = strait_contract::format_duration(scrape_interval);
            client
                .post(&format!("/lab/v1/prometheus?scrapeInterval={interval}"), &json!({}))
                .await?;
            let url = forward_prometheus(&paths, port).await?;
            println!("Prometheus scrapes every proxy of the lab every {interval}:");
            println!("  {url}");
            println!("For example: {url}/graph?g0.expr=sum%20by%20(dst_pod)%20(rate(strait_requests_total%5B1m%5D))");
        }
        Command::Sandbox(_) | Command::PortForward(_) => bail!("this command runs before the runtime starts"),
    }
    Ok(0)
}

/// One line per user of the API server, busiest first.
fn print_api_stats(stats: &Value) {
    let columns = ["requests", "lists", "watches", "openWatches", "forbidden", "bytesSent"];
    let mut users: Vec<(&String, &Value)> = stats.as_object().into_iter().flatten().collect();
    users.sort_by_key(|(_, s)| std::cmp::Reverse(s["bytesSent"].as_u64().unwrap_or_default()));
    println!(
        "{:<60} {:>9} {:>7} {:>8} {:>12} {:>10} {:>12}",
        "USER", "REQUESTS", "LISTS", "WATCHES", "OPEN-WATCHES", "FORBIDDEN", "BYTES-SENT"
    );
    for (user, tally) in users {
        let [requests, lists, watches, open, forbidden, bytes] = columns.map(|c| tally[c].as_u64().unwrap_or_default());
        println!("{user:<60} {requests:>9} {lists:>7} {watches:>8} {open:>12} {forbidden:>10} {bytes:>12}");
    }
}

/// Makes the lab's Prometheus reachable on the host's loopback (once per
/// lab) and returns its URL.
async fn forward_prometheus(paths: &LabPaths, port: u16) -> anyhow::Result<String> {
    let address_file = paths.state.join("prometheus").join("forward.addr");
    let running = std::fs::read_to_string(paths.state.join("prometheus").join("forward.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
    if !running {
        let _ = std::fs::remove_file(&address_file);
        let log = std::fs::File::create(paths.state.join("prometheus").join("forward.log"))?;
        let child = std::process::Command::new(bin_dir().join("strait-lab"))
            .arg("port-forward")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--to={}", crate::prometheus::listen()))
            .arg("--address-file")
            .arg(&address_file)
            .env(crate::paths::LAB_NAME_ENV, &paths.name)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start the port forwarder")?;
        std::fs::write(
            paths.state.join("prometheus").join("forward.pid"),
            child.id().to_string(),
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(address) = std::fs::read_to_string(&address_file) {
            return Ok(format!("http://{}", address.trim()));
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(paths.state.join("prometheus").join("forward.log")).unwrap_or_default();
            bail!("the port forwarder did not start: {log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the daemon in a fresh node namespace unless it already runs;
/// `cni` asks for CNI mode (`Some(true)`) or not, `None` takes the lab as
/// it is.
pub async fn ensure_running(paths: &LabPaths, client: &LabClient, cni: Option<bool>) -> anyhow::Result<()> {
    if client.is_running().await {
        let running = paths.cni_mode_marker().exists();
        if let Some(wanted) = cni
            && wanted != running
        {
            let mode = |on: bool| if on { "in CNI mode" } else { "without CNI mode" };
            bail!(
                "the lab {} runs {}, not {}: `strait-lab down` first",
                paths.name,
                mode(running),
                mode(wanted)
            );
        }
        return Ok(());
    }
    let cni = cni.unwrap_or(false);
    sweep(paths);
    std::fs::create_dir_all(&paths.state)?;
    let node = paths.node_netns();
    network::run("ip", &["netns", "add", &node])?;
    let log = std::fs::File::create(paths.daemon_log())?;
    let mut daemon = std::process::Command::new("setsid")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{node}"))
        .arg("--")
        .arg(bin_dir().join("strait-lab"))
        .arg("daemon")
        .env(crate::paths::LAB_NAME_ENV, &paths.name)
        .env(crate::daemon::CNI_ENV, if cni { "on" } else { "off" })
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the lab daemon")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.is_running().await {
        if let Some(status) = daemon.try_wait()? {
            let log = std::fs::read_to_string(paths.daemon_log()).unwrap_or_default();
            sweep(paths);
            bail!("the lab daemon exited ({status}):\n{log}");
        }
        if Instant::now() > deadline {
            bail!(
                "the lab daemon did not answer within 30s; see {}",
                paths.daemon_log().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Pods created before the webhook answers would start without the mesh.
    if std::env::var(crate::daemon::MESH_ENV).as_deref() != Ok("off") {
        let ready = async {
            wait_ready(
                client,
                &[crate::controlplane::NAMESPACE.to_string()],
                Duration::from_secs(120),
            )
            .await
            .context("strait's control plane did not become ready")?;
            wait_webhooks_reachable(client, Duration::from_secs(60)).await
        };
        if let Err(error) = ready.await {
            return Err(error.context(daemon_fate(paths, &mut daemon)));
        }
    }
    Ok(())
}

/// What became of a daemon this command started, for an error: its exit
/// status if it has gone, and the end of its log.
fn daemon_fate(paths: &LabPaths, daemon: &mut std::process::Child) -> String {
    let status = match daemon.try_wait() {
        Ok(Some(status)) => format!("the lab daemon (pid {}) has exited: {status}", daemon.id()),
        Ok(None) => format!("the lab daemon (pid {}) still runs", daemon.id()),
        Err(error) => format!("the lab daemon's state is unknown: {error}"),
    };
    let log = std::fs::read_to_string(paths.daemon_log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!("{status}; the end of {}:\n{tail}", paths.daemon_log().display())
}

/// Waits until the API server can reach every webhook: the injector pod
/// being ready is not enough, its Service must route to it too.
async fn wait_webhooks_reachable(client: &LabClient, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = client.get("/lab/v1/webhooks").await?;
        let unreachable: Vec<String> = answer["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["reachable"] != true)
            .map(|w| {
                format!(
                    "{}: {}",
                    w["name"].as_str().unwrap_or_default(),
                    w["problem"].as_str().unwrap_or_default()
                )
            })
            .collect();
        if unreachable.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the API server cannot reach the webhooks: {}", unreachable.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn up(
    paths: &LabPaths,
    client: &LabClient,
    files: &[PathBuf],
    timeout: Duration,
    cni: bool,
) -> anyhow::Result<()> {
    let mut objects = Vec::new();
    for file in files {
        objects.extend(manifest::read_file(file)?);
    }
    ensure_running(paths, client, Some(cni)).await?;
    for object in &objects {
        manifest::apply(client, object).await?;
    }
    let mut namespaces: Vec<String> = objects
        .iter()
        .filter(|o| o.resource.namespaced)
        .map(|o| o.namespace().to_string())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let pods = match wait_ready(client, &namespaces, timeout).await {
        Ok(pods) => pods,
        Err(error) => bail!("{error}{}", failing_logs(paths, client, &namespaces).await),
    };
    print!("{}", table::pods(&pods));
    Ok(())
}

/// The last lines of every container that is not ready, to say why.
async fn failing_logs(paths: &LabPaths, client: &LabClient, namespaces: &[String]) -> String {
    let mut out = String::new();
    for namespace in namespaces {
        let Ok(pods) = client.get(&format!("/api/v1/namespaces/{namespace}/pods")).await else {
            continue;
        };
        for pod in pods["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let statuses = ["/status/initContainerStatuses", "/status/containerStatuses"]
                .iter()
                .flat_map(|p| pod.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default());
            for status in statuses
                .filter(|s| s["ready"] != true && s["state"].get("terminated").is_none_or(|t| t["exitCode"] != 0))
            {
                let container = status["name"].as_str().unwrap_or_default();
                let log = std::fs::read_to_string(paths.container_log(namespace, name, container)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                if !tail.is_empty() {
                    out.push_str(&format!("\n--- {namespace}/{name} {container}:\n"));
                    out.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
        }
    }
    out
}

/// Waits until every Deployment in `namespaces` has all its replicas of the
/// current template ready and every pod there is ready (or has completed).
pub async fn wait_ready(client: &LabClient, namespaces: &[String], timeout: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pods = Vec::new();
        let mut waiting = Vec::new();
        for namespace in namespaces {
            let listed = client.get(&format!("/api/v1/namespaces/{namespace}/pods")).await?;
            let deployments = client
                .get(&format!("/apis/apps/v1/namespaces/{namespace}/deployments"))
                .await?;
            for deployment in deployments["items"].as_array().into_iter().flatten() {
                let wanted = deployment
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let status = |field: &str| {
                    deployment
                        .pointer(&format!("/status/{field}"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                };
                if status("readyReplicas") != wanted
                    || status("updatedReplicas") != wanted
                    || status("replicas") != wanted
                {
                    waiting.push(format!(
                        "deployment {namespace}/{}: {}/{wanted} ready",
                        deployment["metadata"]["name"].as_str().unwrap_or_default(),
                        status("readyReplicas")
                    ));
                }
            }
            let daemonsets = client
                .get(&format!("/apis/apps/v1/namespaces/{namespace}/daemonsets"))
                .await?;
            for daemonset in daemonsets["items"].as_array().into_iter().flatten() {
                let status = |field: &str| daemonset.pointer(&format!("/status/{field}")).and_then(Value::as_i64);
                let wanted = status("desiredNumberScheduled");
                if wanted.is_none() || status("numberReady") != wanted || status("updatedNumberScheduled") != wanted {
                    waiting.push(format!(
                        "daemonset {namespace}/{}: {}/{} ready",
                        daemonset["metadata"]["name"].as_str().unwrap_or_default(),
                        status("numberReady").unwrap_or(0),
                        wanted.unwrap_or(1)
                    ));
                }
            }
            for pod in listed["items"].as_array().cloned().unwrap_or_default() {
                let done = matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded"));
                if !done && !crate::controllers::pod_ready(&pod) {
                    waiting.push(format!(
                        "pod {namespace}/{}: {}",
                        pod["metadata"]["name"].as_str().unwrap_or_default(),
                        describe_waiting(&pod)
                    ));
                }
                pods.push(pod);
            }
        }
        if waiting.is_empty() {
            return Ok(pods);
        }
        if Instant::now() > deadline {
            bail!("not ready after {}s:\n  {}", timeout.as_secs(), waiting.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe_waiting(pod: &Value) -> String {
    let statuses = ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .flat_map(|p| pod.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default());
    let mut parts = Vec::new();
    for status in statuses {
        if status["ready"] == true {
            continue;
        }
        let state = status
            .get("state")
            .and_then(Value::as_object)
            .and_then(|s| s.iter().next())
            .map(|(k, v)| {
                let detail = v
                    .get("message")
                    .or_else(|| v.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format!("{k} {detail}")
            });
        parts.push(format!(
            "{} {}",
            status["name"].as_str().unwrap_or_default(),
            state.unwrap_or_default().trim()
        ));
    }
    if let Some(message) = pod.pointer("/status/message").and_then(Value::as_str) {
        parts.push(message.to_string());
    }
    if parts.is_empty() {
        pod.pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending")
            .to_string()
    } else {
        parts.join("; ")
    }
}

async fn status(client: &LabClient, output: &str) -> anyhow::Result<()> {
    let pods = client.get("/api/v1/pods").await?;
    let services = client.get("/api/v1/services").await?;
    let list = |v: &Value| v["items"].as_array().cloned().unwrap_or_default();
    match output {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"pods": pods["items"], "services": services["items"]}))?
        ),
        "table" => {
            print!("{}", table::pods(&list(&pods)));
            println!();
            print!("{}", table::services(&list(&services)));
            println!();
            print!("{}", table::images(&list(&pods)));
        }
        other => bail!("unknown output format {other:?}: use table or json"),
    }
    Ok(())
}

/// The container a command is for: the one named, else the pod's default
/// container (kubectl's annotation), else its first application container.
fn pick_container<'a>(pod: &'a Value, name: Option<&str>) -> anyhow::Result<&'a Value> {
    let default = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str);
    let name = name.or(default);
    let all = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .flat_map(|p| pod.pointer(p).and_then(Value::as_array).into_iter().flatten());
    let mut all = all.collect::<Vec<_>>().into_iter();
    match name {
        None => all.next().ok_or_else(|| anyhow!("the pod has no containers")),
        Some(name) => all
            .find(|c| c["name"] == name)
            .ok_or_else(|| anyhow!("the pod has no container {name:?}")),
    }
}

async fn exec(
    paths: &LabPaths,
    client: &LabClient,
    target: &str,
    container: Option<&str>,
    command: &[String],
) -> anyhow::Result<i32> {
    let (namespace, name) = split_target(target);
    let pod = client
        .get(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))
        .await?;
    let spec = pick_container(&pod, container)?;
    let container_name = spec["name"].as_str().unwrap_or_default();
    let read_pid = |file: PathBuf| -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("pod {namespace}/{name} is not running (no {})", file.display()))?;
        Ok(text.trim().parse()?)
    };
    let pod_holder = read_pid(paths.sandbox_pid(&namespace, &name))?;
    let mount_holder = read_pid(paths.container_holder_pid(&namespace, &name, container_name))?;
    let namespaces = PodNamespaces::of(pod_holder, mount_holder)
        .with_context(|| format!("container {container_name} of pod {namespace}/{name} is not running"))?;
    // As `kubectl exec`: the container's environment, user and capabilities.
    let saved = paths.container_process(&namespace, &name, container_name);
    let container_process = Process::load(&saved)
        .with_context(|| format!("container {container_name} of pod {namespace}/{name} has not started"))?;
    let mut process = std::process::Command::new(&command[0]);
    process.args(&command[1..]);
    container_process.enter(&namespaces, &mut process);
    let status = process
        .status()
        .with_context(|| format!("cannot run {:?} in {namespace}/{name}", command[0]))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}

/// Stops the daemon if it answers, then removes whatever the lab left.
async fn down(paths: &LabPaths, client: &LabClient) -> anyhow::Result<()> {
    if client.is_running().await {
        let _ = client.post("/lab/v1/shutdown", &json!({})).await;
        let pid = std::fs::read_to_string(paths.daemon_pid())
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let deadline = Instant::now() + Duration::from_secs(40);
        while let Some(pid) = pid {
            if !process_alive(pid) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    sweep(paths);
    println!("lab {} is down", paths.name);
    Ok(())
}

/// Whether `pid` is still this lab's daemon: a pid file outlives its
/// process, and the number may since have gone to another lab's daemon.
fn is_daemon_of(pid: i32, paths: &LabPaths) -> bool {
    let wanted = format!("{}={}", crate::paths::LAB_NAME_ENV, paths.name);
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|&b| b == 0).any(|entry| entry == wanted.as_bytes()))
}

fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Removes every trace of a lab, whether it stopped cleanly or crashed:
/// its processes, its network namespaces (with their links and rules) and
/// its state directory. Safe to run twice.
pub fn sweep(paths: &LabPaths) {
    if let Some(pid) = std::fs::read_to_string(paths.daemon_pid())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&pid| is_daemon_of(pid, paths))
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let listed = network::run("ip", &["netns", "list"]).unwrap_or_default();
    let prefix = paths.netns_prefix();
    let ours: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    for netns in &ours {
        sandbox::kill_netns_processes(netns);
    }
    for netns in &ours {
        sandbox::remove_netns(netns);
    }
    let _ = std::fs::remove_dir_all(&paths.state);
}
