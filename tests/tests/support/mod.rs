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
    require(
        test,
        is_root(),
        "needs root (the lab makes network namespaces, links and iptables rules)",
    )
}

/// `Some` when `met`; else `None` after saying why `test` skips. Under
/// STRAIT_CI, where everything a test needs is installed, it fails instead.
pub fn require(test: &str, met: bool, why: &str) -> Option<()> {
    if met {
        return Some(());
    }
    assert!(
        std::env::var_os("STRAIT_CI").is_none(),
        "STRAIT_CI is set but {test} {why}"
    );
    eprintln!("SKIPPED: {test} {why}");
    None
}

impl Lab {
    /// Starts a lab named after the test with the given manifests (from
    /// `tests/manifests`) applied and all pods ready.
    pub fn up(test: &str, manifests: &[&str]) -> Option<Lab> {
        Self::up_with(test, manifests, &[])
    }

    /// Like `up`, with extra environment for the lab (chart values, say).
    pub fn up_with(test: &str, manifests: &[&str], env: &[(&str, &str)]) -> Option<Lab> {
        Self::start(test, manifests, env, &[])
    }

    /// Like `up`, in CNI mode (`strait-lab up --cni`).
    pub fn up_cni(test: &str, manifests: &[&str]) -> Option<Lab> {
        Self::start(test, manifests, &[], &["--cni"])
    }

    fn start(test: &str, manifests: &[&str], env: &[(&str, &str)], flags: &[&str]) -> Option<Lab> {
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
        args.extend(flags.iter().map(|f| f.to_string()));
        for file in &lab.manifests {
            args.push("-f".into());
            args.push(file.display().to_string());
        }
        let out = Command::new(binary())
            .args(&args)
            .env("STRAIT_LAB_NAME", &lab.name)
            .envs(env.iter().copied())
            .output()
            .unwrap();
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
        succeeded(self.cli(args), &format!("strait-lab {args:?}"))
    }

    /// Applies more manifests and waits for their pods.
    /// An object from the lab's API server (`strait-lab get PATH`).
    pub fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.cli_ok(&["get", path])).unwrap()
    }

    pub fn apply(&self, manifest_name: &str) {
        self.cli_ok(&["up", "-f", &manifest(manifest_name).display().to_string()]);
    }

    /// `apply` on a lab in CNI mode.
    pub fn apply_cni(&self, manifest_name: &str) {
        self.cli_ok(&["up", "--cni", "-f", &manifest(manifest_name).display().to_string()]);
    }

    pub fn exec(&self, pod: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        self.cli(&args)
    }

    /// Runs a command in one container of a pod.
    pub fn exec_in(&self, pod: &str, container: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", pod, "-c", container, "--"];
        args.extend_from_slice(command);
        self.cli(&args)
    }

    /// Runs a lab-app command in one container of a pod and parses the JSON
    /// line it prints last.
    pub fn app_in(&self, pod: &str, container: &str, args: &[&str]) -> Value {
        let command = [&["lab-app"], args].concat();
        last_json(&self.exec_in_ok(pod, container, &command), args)
    }

    /// The network namespace of a pod (`NAMESPACE/POD`).
    pub fn netns(&self, pod: &str) -> String {
        let (namespace, name) = pod.split_once('/').unwrap();
        format!("{}_{namespace}_{name}", self.name)
    }

    /// A pod's IP.
    pub fn pod_ip(&self, pod: &str) -> String {
        let (namespace, name) = pod.split_once('/').unwrap();
        let status = self.status();
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name)
            .and_then(|p| p["status"]["podIP"].as_str())
            .unwrap_or_else(|| panic!("{pod} has no IP"))
            .to_string()
    }

    /// Whether every container of a pod is ready.
    pub fn is_ready(&self, pod: &str) -> bool {
        let (namespace, name) = pod.split_once('/').unwrap();
        self.status()["pods"].as_array().unwrap().iter().any(|p| {
            p["metadata"]["namespace"] == namespace
                && p["metadata"]["name"] == name
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
    }

    /// Runs a command in one container of a pod; its standard output, or a panic with both streams.
    pub fn exec_in_ok(&self, pod: &str, container: &str, command: &[&str]) -> String {
        succeeded(
            self.exec_in(pod, container, command),
            &format!("{command:?} in {pod}/{container}"),
        )
    }

    /// Runs a command in a pod; its standard output, or a panic with both streams.
    pub fn exec_ok(&self, pod: &str, command: &[&str]) -> String {
        succeeded(self.exec(pod, command), &format!("{command:?} in {pod}"))
    }

    /// Runs a lab-app command in a pod and parses the JSON line it prints last.
    pub fn app(&self, pod: &str, args: &[&str]) -> Value {
        let command = [&["lab-app"], args].concat();
        last_json(&self.exec_ok(pod, &command), args)
    }

    /// `calls` gRPC calls from `pod` to `to` (`host:port`) on one
    /// connection, four at a time: lab-app grpc-client's summary (`ok`,
    /// `by_pod`, `by_status`, ...).
    pub fn grpc_calls(&self, pod: &str, to: &str, calls: usize) -> Value {
        self.grpc_calls_with(pod, to, calls, 4, &[])
    }

    /// [`Lab::grpc_calls`], `concurrency` at a time, with `more` of
    /// grpc-client's flags (`--method Admin`, `--rate 50`, ...).
    pub fn grpc_calls_with(&self, pod: &str, to: &str, calls: usize, concurrency: usize, more: &[&str]) -> Value {
        let (calls, concurrency) = (calls.to_string(), concurrency.to_string());
        let args = [
            &[
                "grpc-client",
                "--to",
                to,
                "--calls",
                &calls,
                "--concurrency",
                &concurrency,
            ][..],
            more,
        ]
        .concat();
        self.app(pod, &args)
    }

    /// Starts a lab-app command in a pod without waiting: its JSON lines
    /// can be read as they come.
    pub fn spawn_app(&self, pod: &str, args: &[&str]) -> Streaming {
        let child = Command::new(binary())
            .args(["exec", pod, "--", "lab-app"])
            .args(args)
            .env("STRAIT_LAB_NAME", &self.name)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Streaming::new(child)
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.cli_ok(&["status", "-o", "json"])).unwrap()
    }

    /// Names of the pods in `namespace` whose name starts with `prefix`,
    /// leaving out those being deleted (a deletionTimestamp set: the pod
    /// may still be running while its containers stop; see
    /// [`Lab::pod_exists`]).
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

    /// Whether the pod `namespace/name` is still in the API, terminating
    /// or not: the kubelet removes a deleted pod only once its containers
    /// have stopped.
    pub fn pod_exists(&self, pod: &str) -> bool {
        let (namespace, name) = pod
            .split_once('/')
            .unwrap_or_else(|| panic!("{pod}: not namespace/name"));
        self.status()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name)
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

    /// Runs a lab-app command as a debug container aimed at `container`
    /// would (`kubectl debug --target`): the host's lab-app in the pod's
    /// network namespace with the pod's /etc/hosts and resolv.conf, as the
    /// container's uid and gid, with its environment (but the host's PATH).
    /// strait's containers run from images that hold no lab-app; their files
    /// are under `container_path`. Its standard output, or a panic with both
    /// streams.
    pub fn debug(&self, pod: &str, container: &str, args: &[&str]) -> String {
        let pid = self.container_pid(pod, container);
        let (uid, gid) = (proc_status(pid, "Uid"), proc_status(pid, "Gid"));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = environ.split(|b| *b == 0).filter_map(|pair| {
            let pair = String::from_utf8_lossy(pair).into_owned();
            let (name, value) = pair.split_once('=')?;
            (name != "PATH").then(|| (name.to_string(), value.to_string()))
        });
        let sandbox = self.pod_dir(pod).join("sandbox.pid");
        let sandbox = std::fs::read_to_string(&sandbox).unwrap_or_else(|e| panic!("{}: {e}", sandbox.display()));
        let out = Command::new("nsenter")
            .envs(env)
            .args(["--target", sandbox.trim(), "--net", "--uts", "--mount"])
            .args(["--setuid", &uid, "--setgid", &gid, "--"])
            .arg(env!("CARGO_BIN_EXE_lab-app"))
            .args(args)
            .output()
            .unwrap();
        succeeded(out, &format!("lab-app {args:?} beside {pod}/{container}"))
    }

    /// `debug`, parsing the JSON line lab-app printed last.
    pub fn debug_app(&self, pod: &str, container: &str, args: &[&str]) -> Value {
        last_json(&self.debug(pod, container, args), args)
    }

    /// Where `path` inside a running container is on the host.
    pub fn container_path(&self, pod: &str, container: &str, path: &str) -> String {
        format!("/proc/{}/root{path}", self.container_pid(pod, container))
    }

    /// Where the lab keeps a pod's files (`NAMESPACE/POD`): pids, logs,
    /// each container's saved process.
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        let (namespace, name) = pod.split_once('/').unwrap();
        PathBuf::from(format!("/run/strait-lab/{}/pods/{namespace}_{name}", self.name))
    }

    /// The pid of a container's main process.
    pub fn container_pid(&self, pod: &str, container: &str) -> u32 {
        let path = self.pod_dir(pod).join(format!("{container}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// The first value of a field of /proc/PID/status (`Uid`, `CapEff`, ...).
pub fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|values| values.split_whitespace().next())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field}"))
        .to_string()
}

/// The standard output of a command that must have succeeded.
fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON line a command (lab-app, a case script) printed last.
pub fn last_json(out: &str, args: &[&str]) -> Value {
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("lab-app {args:?} printed {out:?}: {e}"))
}

impl Lab {
    /// After a failure: the pods, and the end of every container's output,
    /// so a failure in CI can be understood without rerunning it.
    fn report(&self) {
        let Ok(status) =
            serde_json::from_str::<Value>(&String::from_utf8_lossy(&self.cli(&["status", "-o", "json"]).stdout))
        else {
            return;
        };
        eprintln!("--- lab {} at the failure ---", self.name);
        eprintln!("{}", String::from_utf8_lossy(&self.cli(&["status"]).stdout));
        for pod in status["pods"].as_array().into_iter().flatten() {
            let target = format!(
                "{}/{}",
                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default()
            );
            let spec = &pod["spec"];
            let containers = spec["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec["containers"].as_array().into_iter().flatten());
            for container in containers.filter_map(|c| c["name"].as_str()) {
                let log = String::from_utf8_lossy(&self.cli(&["logs", &target, "-c", container]).stdout).into_owned();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- {target} {container} (last {} lines) ---", lines.len().min(20));
                for line in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
        self.down();
    }
}

/// A running command whose JSON output lines arrive on a channel.
pub struct Streaming {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl Streaming {
    fn new(mut child: std::process::Child) -> Self {
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = sender.send(value);
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next JSON line, waiting at most `within`.
    pub fn next(&self, within: Duration) -> Option<Value> {
        self.lines.recv_timeout(within).ok()
    }

    /// Waits for the command to end (at most `within`) and returns its last
    /// line: every line up to the end of its output, then its exit status.
    pub fn finish(mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => last = line,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the command did not finish within {within:?}")
                }
            }
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the command failed: {status}");
        last
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that every pod's count is within `tolerance` of an even share.
pub fn assert_even(by_pod: &Value, pods: usize, tolerance: f64, what: &str) {
    let counts: Vec<f64> = by_pod
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(counts.len(), pods, "{what}: expected {pods} pods to answer: {by_pod}");
    let total: f64 = counts.iter().sum();
    let even = total / pods as f64;
    for count in counts {
        assert!(
            (count - even).abs() <= even * tolerance,
            "{what}: {count} is not within {tolerance} of {even}: {by_pod}"
        );
    }
}

/// Adds up per-pod counts of several report windows.
pub fn merge_windows<'a>(windows: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut total = serde_json::Map::new();
    for window in windows {
        for (pod, count) in window["by_pod"].as_object().unwrap() {
            let sum = total.get(pod).and_then(Value::as_u64).unwrap_or(0) + count.as_u64().unwrap();
            total.insert(pod.clone(), Value::from(sum));
        }
    }
    Value::Object(total)
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
/// gRPC calls from `client` to `to` for `seconds`, 100 a second, 4 at a
/// time, running while the test changes the lab.
pub fn steady_grpc(lab: &Lab, client: &str, to: &str, seconds: u32) -> Streaming {
    let duration = format!("{seconds}s");
    lab.spawn_app(
        client,
        &[
            "grpc-client",
            "--to",
            to,
            "--duration",
            &duration,
            "--rate",
            "100",
            "--concurrency",
            "4",
        ],
    )
}

/// Every call made succeeded, and there were some.
pub fn assert_no_failed_calls(result: &Value, what: &str) {
    let calls = result["calls"].as_u64().unwrap();
    assert!(calls > 0, "{what}: no calls were made: {result}");
    assert_eq!(
        result["ok"].as_u64(),
        Some(calls),
        "{what}: every call succeeds: {result}"
    );
}

pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lab's Prometheus, queried through its API.
pub struct Prometheus {
    url: String,
}

impl Prometheus {
    pub fn start(lab: &Lab) -> Prometheus {
        let out = lab.cli_ok(&["prometheus", "--port", "0", "--scrape-interval", "1s"]);
        let url = out
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:") && !w.contains("/graph"))
            .unwrap_or_else(|| panic!("no URL in {out:?}"))
            .to_string();
        Prometheus { url }
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "10", "-G", &format!("{}{path}", self.url)]);
        for (key, value) in query {
            command.args(["--data-urlencode", &format!("{key}={value}")]);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self.get("/api/v1/query", &[("query", expr)]);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until Prometheus scrapes `count` proxies successfully.
    pub fn wait_for_targets(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.get("/api/v1/targets", &[]);
            let up = answer["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["labels"]["job"] == "strait-proxies" && t["health"] == "up")
                .count();
            if up >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {up} of {count} proxies scraped: {answer}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The chart's Grafana dashboard.
pub fn dashboard() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/strait/dashboards/strait.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A dashboard query made concrete: every namespace and Service, rates
/// over `window`.
pub fn dashboard_expr(target: &Value, window: &str) -> String {
    target["expr"]
        .as_str()
        .unwrap()
        .replace("$namespace", ".*")
        .replace("$service", ".*")
        .replace("$__rate_interval", window)
}
