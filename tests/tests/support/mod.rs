//! Running a lab from a test: each test gets its own lab (its own node
//! namespace and pods), which `Drop` takes down even when the test fails.
//! Tests need root; they skip loudly elsewhere and never under STRAIT_CI.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Lab {
    pub name: String,
    manifests: Vec<PathBuf>,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_strait-lab")
}

pub fn manifest(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests").join(name)
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n")
}

/// `None` (after saying so) when the test cannot run here.
pub fn require_root(test: &str) -> Option<()> {
    if is_root() {
        return Some(());
    }
    assert!(
        std::env::var_os("STRAIT_CI").is_none(),
        "STRAIT_CI is set but the tests do not run as root"
    );
    eprintln!("SKIPPED: {test} needs root (the lab makes network namespaces, links and iptables rules)");
    None
}

impl Lab {
    /// Starts a lab named after the test with the given manifests (from
    /// `tests/manifests`) applied and all pods ready.
    pub fn up(test: &str, manifests: &[&str]) -> Option<Lab> {
        require_root(test)?;
        let name = format!("t-{}", test.replace('_', "-"))
            .chars()
            .take(40)
            .collect::<String>();
        let lab = Lab {
            name,
            manifests: manifests.iter().map(|m| manifest(m)).collect(),
        };
        lab.down();
        let mut args = vec!["up".to_string()];
        for file in &lab.manifests {
            args.push("-f".into());
            args.push(file.display().to_string());
        }
        let out = lab.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "strait-lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(lab)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .env("STRAIT_LAB_NAME", &self.name)
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "strait-lab {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies more manifests and waits for their pods.
    pub fn apply(&self, manifest_name: &str) {
        self.cli_ok(&["up", "-f", &manifest(manifest_name).display().to_string()]);
    }

    pub fn exec(&self, pod: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        self.cli(&args)
    }

    /// Runs a command in a pod; its standard output, or a panic with both streams.
    pub fn exec_ok(&self, pod: &str, command: &[&str]) -> String {
        let out = self.exec(pod, command);
        assert!(
            out.status.success(),
            "{command:?} in {pod} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a lab-app command in a pod and parses the JSON line it prints last.
    pub fn app(&self, pod: &str, args: &[&str]) -> Value {
        let mut command = vec!["lab-app"];
        command.extend_from_slice(args);
        let out = self.exec_ok(pod, &command);
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("lab-app {args:?} printed {out:?}: {e}"))
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.cli_ok(&["status", "-o", "json"])).unwrap()
    }

    /// Names of the running pods in `namespace` whose name starts with `prefix`.
    pub fn pods(&self, namespace: &str, prefix: &str) -> Vec<String> {
        let status = self.status();
        let mut pods: Vec<String> = status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .filter(|n| n.starts_with(prefix))
            .map(|n| format!("{namespace}/{n}"))
            .collect();
        pods.sort();
        pods
    }

    pub fn pod(&self, namespace: &str, prefix: &str) -> String {
        self.pods(namespace, prefix)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no pod {namespace}/{prefix}*"))
    }

    /// The proxy's metrics in a meshed pod.
    pub fn metrics(&self, pod: &str) -> String {
        self.exec_ok(pod, &["lab-app", "http-get", "http://127.0.0.1:4191/metrics"])
    }

    /// The sum of every sample of `metric` whose labels contain all of `labels`.
    pub fn metric(&self, pod: &str, metric: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics(pod), metric, labels)
    }

    /// The pid of a container's main process.
    pub fn container_pid(&self, pod: &str, container: &str) -> u32 {
        let (namespace, name) = pod.split_once('/').unwrap();
        let path = format!("/run/strait-lab/{}/pods/{namespace}_{name}/{container}.pid", self.name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    pub fn open_fds(&self, pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn down(&self) {
        let _ = self.cli(&["down"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

pub fn sum_metric(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(metric) && line[metric.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` until it returns true or `within` passes.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
