//! A real Prometheus (Debian's `prometheus` package) for the lab. The daemon
//! runs it in the node namespace, where every pod is reachable, and keeps
//! file-based service discovery current as pods come and go: every meshed
//! pod's proxy (admin port, `/metrics`) and strait's control plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use strait_contract::names::{ADMIN_PORT, MESHED_LABEL};
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::apiserver::resource::Resource;
use crate::apiserver::store::Store;
use crate::network::NODE_IP;
use crate::paths::LabPaths;

pub const PORT: u16 = 9090;
/// The control plane's admin port, in the chart.
const CONTROL_PLANE_ADMIN_PORT: u16 = 9990;
const PROXIES_FILE: &str = "proxies.json";
const CONTROL_PLANE_FILE: &str = "control-plane.json";

pub fn listen() -> SocketAddr {
    SocketAddr::from((NODE_IP, PORT))
}

#[derive(Default)]
pub struct Prometheus {
    running: Mutex<Option<Child>>,
}

impl Prometheus {
    /// Starts Prometheus scraping every `interval`, unless it runs already,
    /// and returns once it answers.
    pub async fn start(&self, paths: &LabPaths, store: Arc<Store>, interval: Duration) -> anyhow::Result<()> {
        let mut running = self.running.lock().await;
        if let Some(child) = running.as_mut()
            && child.try_wait()?.is_none()
        {
            return Ok(());
        }
        let dir = paths.state.join("prometheus");
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(dir.join("prometheus.yml"), config(interval))?;
        write_targets(&dir, &store)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={}", listen()))
            .args(["--storage.tsdb.retention.time=2h", "--log.level=warn"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot run prometheus (Debian's prometheus package; scripts/deps.sh installs it)")?;
        *running = Some(child);
        let follow_dir = dir.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(error) = write_targets(&follow_dir, &store) {
                    tracing::warn!(%error, "cannot update Prometheus targets");
                }
            }
        });
        wait_ready(&dir).await
    }
}

fn config(interval: Duration) -> String {
    let interval = strait_contract::format_duration(interval);
    format!(
        "# Written by strait-lab: the lab's proxies and control plane, found by file_sd.\n\
         global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n\
         scrape_configs:\n\
         - job_name: strait-proxies\n\
         \x20 file_sd_configs: [{{files: [{PROXIES_FILE}]}}]\n\
         - job_name: strait-control-plane\n\
         \x20 file_sd_configs: [{{files: [{CONTROL_PLANE_FILE}]}}]\n"
    )
}

/// One file_sd group per pod, labelled with its namespace and name.
fn target_group(pod: &Value, port: u16) -> Option<Value> {
    let ip = pod.pointer("/status/podIP").and_then(Value::as_str)?;
    if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return None;
    }
    Some(json!({
        "targets": [format!("{ip}:{port}")],
        "labels": {
            "namespace": pod.pointer("/metadata/namespace"),
            "pod": pod.pointer("/metadata/name"),
        },
    }))
}

/// Writes the target files, only when they change (Prometheus watches them).
fn write_targets(dir: &Path, store: &Store) -> std::io::Result<()> {
    let (pods, _) = store.list(Resource::named("pods"), None);
    let label = |pod: &Value, key: &str| pod.pointer("/metadata/labels").and_then(|l| l.get(key)).cloned();
    let proxies: Vec<Value> = pods
        .iter()
        .filter(|pod| label(pod, MESHED_LABEL).is_some())
        .filter_map(|pod| target_group(pod, ADMIN_PORT))
        .collect();
    let control_plane: Vec<Value> = pods
        .iter()
        .filter(|pod| {
            label(pod, "app.kubernetes.io/name") == Some(json!("strait"))
                && label(pod, "app.kubernetes.io/component") == Some(json!("control-plane"))
        })
        .filter_map(|pod| target_group(pod, CONTROL_PLANE_ADMIN_PORT))
        .collect();
    for (file, groups) in [(PROXIES_FILE, proxies), (CONTROL_PLANE_FILE, control_plane)] {
        let path: PathBuf = dir.join(file);
        let text = serde_json::to_string_pretty(&groups).unwrap_or_default();
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            let partial = dir.join(format!(".{file}.partial"));
            std::fs::write(&partial, &text)?;
            std::fs::rename(&partial, &path)?;
        }
    }
    Ok(())
}

/// Waits (bounded) for Prometheus's `/-/ready`.
async fn wait_ready(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(listen()).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!(
                "GET /-/ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                listen()
            );
            let mut answer = Vec::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_end(&mut answer).await.is_ok()
                && answer.starts_with(b"HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            bail!("Prometheus did not become ready within 30s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
