//! Driving the lab from the benchmark: bring it up, run commands in pods,
//! and read processes' CPU time and memory from /proc, since every container
//! is a process tree on this machine.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use serde_json::Value;

/// Set by [`Lab::end`].
static ENDING: AtomicBool = AtomicBool::new(false);
/// Held while `strait-lab down` runs.
static DOWN: Mutex<()> = Mutex::new(());

/// Parks the calling thread for good if the run is ending ([`Lab::end`]):
/// whatever it was about to do (a scenario, the report) would only meet a
/// lab that is going or gone, and the ending thread exits the process.
pub fn park_if_ending() {
    while ENDING.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// One lab, by name, driven through `strait-lab` from `bin_dir`.
pub struct Lab {
    pub name: String,
    pub bin_dir: PathBuf,
}

impl Lab {
    pub fn new(name: &str, bin_dir: &Path) -> Lab {
        Lab {
            name: name.to_string(),
            bin_dir: bin_dir.to_path_buf(),
        }
    }

    /// Where `strait-lab` keeps this lab's state: its API socket, daemon
    /// log, pods' files and images.
    pub fn state(&self) -> PathBuf {
        PathBuf::from("/run/strait-lab").join(&self.name)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(self.bin_dir.join("strait-lab"));
        command.env("STRAIT_LAB_NAME", &self.name);
        command
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output().context("run strait-lab")?;
        checked(out, &format!("strait-lab {}", args.join(" ")))
    }

    /// Applies `manifest`, bringing the lab up if it is down. Once the run
    /// is [`Lab::end`]ing, the calling thread parks instead: the lab stays
    /// down.
    pub fn up(&self, manifest: &Path, env: &[(&str, &str)]) -> anyhow::Result<()> {
        park_if_ending();
        let out = self
            .command()
            .args(["up", "-f"])
            .arg(manifest)
            .envs(env.iter().copied())
            .output()?;
        checked(out, "strait-lab up").map(drop)
    }

    /// Takes the lab down. One `strait-lab down` at a time, in a process
    /// group of its own, so a second Ctrl-C at the terminal does not stop
    /// it halfway. Once the run is [`Lab::end`]ing, another thread's call
    /// parks instead (the ending thread takes the lab down).
    pub fn down(&self) {
        park_if_ending();
        self.take_down();
    }

    /// Ends the run for good (a signal): every other thread that then
    /// brings the lab up or down, or calls [`park_if_ending`], parks; the
    /// lab is taken down, once any `down` already under way has finished.
    pub fn end(&self) {
        ENDING.store(true, Ordering::SeqCst);
        self.take_down();
    }

    fn take_down(&self) {
        let _one_at_a_time = DOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self.command().arg("down").process_group(0).output();
    }

    pub fn scale(&self, deployment: &str, replicas: u32) -> anyhow::Result<()> {
        self.run(&["scale", deployment, &replicas.to_string()]).map(drop)
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.run(&["status", "-o", "json"])?)?)
    }

    /// Running pods whose name starts with `prefix`, as NAMESPACE/NAME.
    pub fn pods(&self, namespace: &str, prefix: &str) -> anyhow::Result<Vec<(String, Value)>> {
        let status = self.status()?;
        let mut pods: Vec<(String, Value)> = status["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|p| {
                (
                    format!("{namespace}/{}", p["metadata"]["name"].as_str().unwrap_or_default()),
                    p.clone(),
                )
            })
            .collect();
        pods.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(pods)
    }

    pub fn pod_ip(&self, pod: &str) -> anyhow::Result<String> {
        let (namespace, name) = pod.split_once('/').context("NAMESPACE/POD")?;
        self.pods(namespace, name)?
            .into_iter()
            .find_map(|(_, p)| p["status"]["podIP"].as_str().map(str::to_string))
            .with_context(|| format!("{pod} has no IP"))
    }

    /// Runs a command in a pod's first container.
    pub fn exec(&self, pod: &str, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        self.run(&args)
    }

    /// Starts a command in a pod without waiting; its output is piped.
    pub fn spawn_exec(&self, pod: &str, command: &[&str]) -> anyhow::Result<std::process::Child> {
        Ok(self
            .command()
            .args(["exec", pod, "--"])
            .args(command)
            .stdout(std::process::Stdio::piped())
            .spawn()?)
    }

    /// Runs a command that prints one JSON line last, and parses it.
    pub fn exec_json(&self, pod: &str, command: &[&str]) -> anyhow::Result<Value> {
        let out = self.exec(pod, command)?;
        last_json(&out).with_context(|| format!("{command:?} printed {out:?}"))
    }

    /// Writes one key of a Secret to `path` (decoded) and returns the
    /// path as text.
    pub fn secret_file(&self, secret: &str, key: &str, path: &Path) -> anyhow::Result<String> {
        use base64::Engine;
        let (namespace, name) = secret.split_once('/').context("NAMESPACE/SECRET")?;
        let object: Value =
            serde_json::from_str(&self.run(&["get", &format!("/api/v1/namespaces/{namespace}/secrets/{name}")])?)?;
        let encoded = object["data"][key]
            .as_str()
            .with_context(|| format!("the Secret {secret} has no {key}"))?;
        std::fs::write(path, base64::engine::general_purpose::STANDARD.decode(encoded)?)?;
        Ok(path.display().to_string())
    }

    /// The pid of a container's main process.
    pub fn container_pid(&self, pod: &str, container: &str) -> anyhow::Result<u32> {
        let (namespace, name) = pod.split_once('/').context("NAMESPACE/POD")?;
        let path = self.state().join(format!("pods/{namespace}_{name}/{container}.pid"));
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok(text.trim().parse()?)
    }
}

/// The JSON line a command printed last.
pub fn last_json(out: &str) -> anyhow::Result<Value> {
    let last = out.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last)?)
}

fn checked(out: Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CPU seconds and memory of a process and all its descendants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// The largest peak RSS (VmHWM) of one of the processes, since it
    /// started or since [`reset_peak_rss`]: a proxy's own peak when the
    /// processes are a path's proxies.
    pub largest_peak_rss_bytes: u64,
    /// Memory no other process shares: what one more proxy costs a node
    /// (RSS also counts the binary's pages every proxy shares).
    pub private_bytes: u64,
}

fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ is 100 on every Linux port this runs on.
    100.0
}

/// Parent of every process, to find a container's whole tree.
fn parents() -> BTreeMap<u32, u32> {
    let mut parents = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces: fields start after its ')'.
        if let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// The process tree rooted at `root`.
pub fn tree(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut members = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &parents {
            if members.contains(ppid) && !members.contains(pid) {
                members.push(*pid);
                grew = true;
            }
        }
    }
    members
}

/// Resets the processes' peak RSS (VmHWM) to their RSS now (`5` to
/// `/proc/<pid>/clear_refs`, Linux 4.0 and later), so the next [`usage`]
/// reports the peak of what ran in between rather than of the process's
/// whole life (an earlier scenario's 1,000 connections, say). A process
/// gone meanwhile is skipped.
pub fn reset_peak_rss(pids: &[u32]) {
    for pid in pids {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

pub fn usage(pids: &[u32]) -> Usage {
    let mut usage = Usage::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            let fields: Vec<&str> = stat
                .rsplit_once(") ")
                .map(|(_, r)| r.split(' ').collect())
                .unwrap_or_default();
            // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
                .sum();
            usage.cpu_seconds += ticks / ticks_per_second();
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let kib = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            usage.rss_bytes += kib("VmRSS:");
            usage.largest_peak_rss_bytes = usage.largest_peak_rss_bytes.max(kib("VmHWM:"));
        }
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            usage.private_bytes += ["Private_Clean:", "Private_Dirty:"]
                .iter()
                .filter_map(|key| {
                    rollup
                        .lines()
                        .find(|l| l.starts_with(key))?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
                * 1024;
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's peak is its own: after a reset, memory this process touched
    /// and gave back before no longer counts.
    #[test]
    fn a_reset_peak_forgets_an_earlier_peak() {
        let me = [std::process::id()];
        // 256 MiB, touched, then returned to the system (an allocation
        // this large is a mapping of its own).
        let touched = vec![1u8; 256 << 20];
        assert_eq!(std::hint::black_box(&touched)[touched.len() - 1], 1);
        drop(touched);
        let before = usage(&me).largest_peak_rss_bytes;
        assert!(before >= 256 << 20, "peak {before} B after touching 256 MiB");
        reset_peak_rss(&me);
        let after = usage(&me).largest_peak_rss_bytes;
        assert!(
            after < before - (128 << 20),
            "peak {after} B after the reset, {before} B before"
        );
    }
}
