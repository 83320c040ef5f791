//! One pod's life: sandbox, init containers in order (native sidecars stay
//! running once started), app containers with their postStart hooks, probes,
//! restarts with back-off, completion for run-to-completion pods, and
//! graceful termination (apps first, then sidecars in reverse order).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Kubelet;
use super::cni::{Attachment, PodRef as CniPod};
use super::container::{self, Process};
use super::image::{Image, ImageError, PullPolicy, Reference};
use super::nsenter::PodNamespaces;
use super::probe::{self, ProbeKind, Timing};
use super::sandbox::{self, BindMount, ContainerRoot, Sandbox};
use super::security;
use super::volumes::{self, TokenFile};
use crate::apiserver::auth::TokenOwner;
use crate::apiserver::resource::Resource;
use crate::apiserver::store::now_rfc3339;

/// What a pod's runner reacts to.
#[derive(Debug)]
pub enum Message {
    Exited {
        index: usize,
        generation: u64,
        code: i32,
    },
    Probe {
        index: usize,
        generation: u64,
        kind: ProbeKind,
        ok: bool,
    },
    Restart {
        index: usize,
        generation: u64,
    },
    /// The pod was deleted: stop it within the grace period.
    Terminate {
        grace: Duration,
    },
    /// The pod crashed (`strait-lab kill`): everything dies now.
    Kill,
    RefreshTokens,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Init,
    Sidecar,
    App,
}

struct ContainerState {
    spec: Container,
    role: Role,
    /// Bumped on every start, so messages about an earlier run are ignored.
    generation: u64,
    /// While it runs: its process, signalled through the task that reaps it.
    run: Option<Running>,
    started_at: Option<(String, Instant)>,
    terminated: Option<(i32, String)>,
    waiting: Option<(String, String)>,
    restarts: u32,
    started: bool,
    ready: bool,
    probes: Vec<AbortHandle>,
    /// The image it runs from (strait's own images); `None` for a local
    /// program.
    image: Option<Arc<Image>>,
    /// How its processes run, once it has started.
    process: Option<Process>,
    /// Attempts in a row that could not create it (not restarts).
    start_failures: u32,
}

/// A running container's process (the leader of its process group).
struct Running {
    pid: u32,
    /// Signals for the whole group, sent by the task that waits for the
    /// process: until it has reaped the leader, the group's id cannot be
    /// given to another process, so a signal never reaches a stranger.
    signals: mpsc::UnboundedSender<nix::sys::signal::Signal>,
}

impl ContainerState {
    fn running(&self) -> bool {
        self.run.is_some()
    }
}

pub struct PodRunner {
    kubelet: Arc<Kubelet>,
    pod: Value,
    typed: Pod,
    namespace: String,
    name: String,
    uid: String,
    containers: Vec<ContainerState>,
    sandbox: Option<Sandbox>,
    /// Each container's mounts, for its mount namespace.
    mounts: HashMap<String, Vec<BindMount>>,
    /// The pod's /etc/hosts, resolv.conf and hostname, which containers
    /// with a root of their own mount too.
    etc: Vec<BindMount>,
    ip: Option<Ipv4Addr>,
    /// The pod's network as the CNI plugins set it up.
    network: Option<Attachment>,
    tokens: Vec<TokenFile>,
    /// Index of the init container the pod is waiting on.
    init_index: usize,
    apps_started: bool,
    phase: &'static str,
    messages: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedReceiver<Message>,
    problem: Option<(String, String)>,
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(1 << restarts.min(5)).min(Duration::from_secs(30))
}

impl PodRunner {
    pub fn new(kubelet: Arc<Kubelet>, pod: Value) -> Result<(Self, mpsc::UnboundedSender<Message>), serde_json::Error> {
        let typed: Pod = serde_json::from_value(pod.clone())?;
        let spec = typed.spec.clone().unwrap_or_default();
        let mut containers = Vec::new();
        for init in spec.init_containers.iter().flatten() {
            let role = if init.restart_policy.as_deref() == Some("Always") {
                Role::Sidecar
            } else {
                Role::Init
            };
            containers.push(ContainerState::new(init.clone(), role));
        }
        for app in &spec.containers {
            containers.push(ContainerState::new(app.clone(), Role::App));
        }
        let (messages, events) = mpsc::unbounded_channel();
        let runner = PodRunner {
            kubelet,
            namespace: typed.metadata.namespace.clone().unwrap_or_default(),
            name: typed.metadata.name.clone().unwrap_or_default(),
            uid: typed.metadata.uid.clone().unwrap_or_default(),
            pod,
            typed,
            containers,
            sandbox: None,
            mounts: HashMap::new(),
            etc: Vec::new(),
            ip: None,
            network: None,
            tokens: Vec::new(),
            init_index: 0,
            apps_started: false,
            phase: "Pending",
            messages: messages.clone(),
            events,
            problem: None,
        };
        Ok((runner, messages))
    }

    fn restart_policy(&self) -> &str {
        self.typed
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    fn owner(&self) -> TokenOwner {
        TokenOwner {
            namespace: self.namespace.clone(),
            service_account: self
                .typed
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            pod_name: self.name.clone(),
            pod_uid: self.uid.clone(),
        }
    }

    pub async fn run(mut self) {
        // The sandbox is made again, with back-off, until it can be (a CNI
        // plugin that says "try again later", a Secret not there yet), as
        // the kubelet does: the pod stays Pending meanwhile.
        let mut attempts = 0;
        loop {
            match self.start_sandbox().await {
                Ok(()) => break,
                Err(problem) => {
                    tracing::warn!(pod = %self.name, namespace = %self.namespace, %problem, "pod sandbox cannot be made");
                    self.release_sandbox().await;
                    self.problem = Some(("FailedCreatePodSandBox".into(), problem));
                    self.publish();
                    let retry = tokio::time::sleep(backoff(attempts));
                    attempts += 1;
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            () = &mut retry => break,
                            message = self.events.recv() => match message {
                                Some(Message::Terminate { .. } | Message::Kill) | None => {
                                    self.finish(Outcome::Removed).await;
                                    return;
                                }
                                Some(_) => {}
                            },
                        }
                    }
                }
            }
        }
        self.problem = None;
        self.advance().await;
        self.publish();
        if let Some(outcome) = self.supervise().await {
            self.finish(outcome).await;
        }
    }

    async fn start_sandbox(&mut self) -> Result<(), String> {
        let kubelet = self.kubelet.clone();
        let dir = kubelet.paths.pod_dir(&self.namespace, &self.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        // The runtime makes the pod's network namespace and the CNI plugins
        // wire it, giving the pod its address.
        let netns = kubelet.paths.pod_netns(&self.namespace, &self.name);
        crate::network::run("ip", &["netns", "add", &netns]).map_err(|e| e.to_string())?;
        let attachment = match kubelet.cni.add(&self.cni_ref(&netns)).await {
            Ok(attachment) => attachment,
            Err(error) => {
                sandbox::remove_netns(&netns);
                return Err(format!("setting up the pod's network: {error}"));
            }
        };
        let ip = attachment.ip;
        self.network = Some(attachment);
        self.ip = Some(ip);
        // The pod's IP is known before its containers start, as in Kubernetes.
        self.pod["status"]["podIP"] = json!(ip.to_string());
        let lookup = |plural: &str, name: &str| kubelet.store.get(Resource::named(plural), &self.namespace, name).ok();
        let prepared = volumes::prepare(&self.pod, &self.typed, &dir, &kubelet.paths.ca_cert(), &lookup)
            .map_err(|e| e.to_string())?;
        let owner = self.owner();
        for token in &prepared.tokens {
            volumes::write_token(&kubelet.tokens, &owner, token)
                .map_err(|e| format!("write {}: {e}", token.path.display()))?;
        }
        self.tokens = prepared.tokens;
        self.mounts = prepared.mounts;
        let mut etc = Vec::new();
        for (file, contents) in self.etc_files(ip) {
            let path = dir.join(file);
            std::fs::write(&path, contents).map_err(|e| format!("write {}: {e}", path.display()))?;
            etc.push(BindMount {
                source: path,
                target: format!("/etc/{file}"),
                read_only: false,
            });
        }
        let sandbox = Sandbox::create(&netns, &self.name, &etc)
            .await
            .map_err(|e| e.to_string())?;
        self.etc = etc;
        let _ = std::fs::write(
            kubelet.paths.sandbox_pid(&self.namespace, &self.name),
            sandbox.pid().to_string(),
        );
        self.sandbox = Some(sandbox);
        self.schedule_token_refresh();
        Ok(())
    }

    /// This pod as the CNI plugins are told about it.
    fn cni_ref<'a>(&'a self, netns: &'a str) -> CniPod<'a> {
        CniPod {
            namespace: &self.namespace,
            name: &self.name,
            uid: &self.uid,
            netns,
        }
    }

    /// The pod's /etc/hosts, /etc/resolv.conf and /etc/hostname.
    fn etc_files(&self, ip: Ipv4Addr) -> [(&'static str, String); 3] {
        let domain = crate::network::CLUSTER_DOMAIN;
        let ns = &self.namespace;
        [
            (
                "hosts",
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                    self.name
                ),
            ),
            (
                "resolv.conf",
                format!(
                    "search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {}\noptions ndots:5\n",
                    crate::network::NODE_IP
                ),
            ),
            ("hostname", format!("{}\n", self.name)),
        ]
    }

    fn schedule_token_refresh(&self) {
        let Some(shortest) = self.tokens.iter().map(|t| t.lifetime).min() else {
            return;
        };
        let messages = self.messages.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(shortest.mul_f64(0.8)).await;
                if messages.send(Message::RefreshTokens).is_err() {
                    return;
                }
            }
        });
    }

    /// Handles messages until the pod completes or is deleted.
    async fn supervise(&mut self) -> Option<Outcome> {
        while let Some(message) = self.events.recv().await {
            match message {
                Message::Exited {
                    index,
                    generation,
                    code,
                } => self.exited(index, generation, code),
                Message::Probe {
                    index,
                    generation,
                    kind,
                    ok,
                } => self.probed(index, generation, kind, ok),
                Message::Restart { index, generation } => {
                    if self.containers[index].generation == generation && !self.containers[index].running() {
                        self.start_container(index).await;
                    }
                }
                Message::RefreshTokens => self.refresh_tokens(),
                Message::Terminate { grace } => {
                    self.terminate(grace).await;
                    return Some(Outcome::Removed);
                }
                Message::Kill => return Some(Outcome::Removed),
            }
            self.advance().await;
            if self.apps_started && self.apps_done() && self.phase == "Running" {
                self.complete().await;
            }
            self.publish();
        }
        None
    }

    fn refresh_tokens(&self) {
        let owner = self.owner();
        for token in &self.tokens {
            if let Err(error) = volumes::write_token(&self.kubelet.tokens, &owner, token) {
                tracing::warn!(pod = %self.name, %error, "cannot refresh a token");
            }
        }
    }

    /// Starts whatever the pod is ready for next.
    async fn advance(&mut self) {
        while self.init_index < self.containers.len() && self.containers[self.init_index].role != Role::App {
            let index = self.init_index;
            let state = &self.containers[index];
            match state.role {
                Role::Sidecar if state.started => self.init_index += 1,
                Role::Sidecar
                    if !state.running()
                        && state.restarts == 0
                        && state.terminated.is_none()
                        && state.start_failures == 0 =>
                {
                    self.start_container(index).await;
                    return;
                }
                Role::Init if state.terminated.as_ref().is_some_and(|(code, _)| *code == 0) => self.init_index += 1,
                Role::Init if !state.running() && state.terminated.is_none() && state.start_failures == 0 => {
                    self.start_container(index).await;
                    return;
                }
                _ => return,
            }
        }
        if self.apps_started {
            return;
        }
        self.apps_started = true;
        self.phase = "Running";
        for index in self.init_index..self.containers.len() {
            self.start_container(index).await;
            let hook = self.containers[index]
                .spec
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref())
                .and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone());
            let process = self.containers[index].process.clone();
            if let (Some(command), Some(namespaces), Some(process)) = (hook, self.namespaces_of(index), process) {
                // Like the kubelet, the next container starts only after this
                // container's postStart hook has finished.
                if !probe::run_hook(&command, &namespaces, &process, Duration::from_secs(120)).await {
                    tracing::warn!(pod = %self.name, container = %self.containers[index].spec.name, "postStart hook failed");
                    self.kill_container(index, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }

    fn namespaces_of(&self, index: usize) -> Option<PodNamespaces> {
        self.sandbox
            .as_ref()?
            .namespaces(&self.containers[index].spec.name)
            .ok()
    }

    /// Pulls the image of one of strait's containers (as its
    /// `imagePullPolicy` says); other images are local programs.
    async fn image_for(&self, spec: &Container) -> Result<Option<Arc<Image>>, ImageError> {
        let Some(text) = spec.image.as_deref() else {
            return Ok(None);
        };
        let reference = Reference::parse(text);
        if !reference.is_strait() {
            return Ok(None);
        }
        let policy = PullPolicy::of(spec.image_pull_policy.as_deref(), &reference);
        self.kubelet.images.pull(text, policy).await.map(Some)
    }

    /// Everything a container needs before its process can start: its
    /// image, its credentials, its root and mounts, its environment and
    /// command line. The error is the waiting reason and its message.
    async fn prepare_container(
        &mut self,
        index: usize,
    ) -> Result<(PodNamespaces, Vec<String>, Process), (String, String)> {
        let kubelet = self.kubelet.clone();
        let spec = self.containers[index].spec.clone();
        let image = self
            .image_for(&spec)
            .await
            .map_err(|error| (error.reason().to_string(), error.to_string()))?;
        self.containers[index].image = image.clone();
        let config_error = |problem: String| ("CreateContainerConfigError".to_string(), problem);
        let credentials =
            security::credentials(&self.typed, &spec, image.as_deref()).map_err(|e| config_error(e.to_string()))?;
        let mut mounts = self.mounts.get(&spec.name).cloned().unwrap_or_default();
        let root = image.as_ref().map(|image| {
            mounts.splice(0..0, self.etc.iter().cloned());
            ContainerRoot {
                image: image.rootfs.clone(),
                scratch: kubelet.paths.container_root(&self.namespace, &self.name, &spec.name),
                read_only: spec
                    .security_context
                    .as_ref()
                    .and_then(|c| c.read_only_root_filesystem)
                    .unwrap_or(false),
            }
        });
        let create_error = |problem: String| ("CreateContainerError".to_string(), problem);
        let sandbox = self
            .sandbox
            .as_mut()
            .ok_or_else(|| create_error("the pod has no sandbox".into()))?;
        let holder = sandbox
            .add_container(&spec.name, &mounts, root.as_ref())
            .await
            .map_err(|e| create_error(e.to_string()))?;
        let path = kubelet
            .paths
            .container_holder_pid(&self.namespace, &self.name, &spec.name);
        let _ = std::fs::write(path, holder.to_string());
        let namespaces = sandbox
            .namespaces(&spec.name)
            .map_err(|e| create_error(e.to_string()))?;
        let lookup = |plural: &str, name: &str| kubelet.store.get(Resource::named(plural), &self.namespace, name).ok();
        let mut pod = self.pod.clone();
        pod["status"]["podIP"] = json!(self.ip.map(|ip| ip.to_string()));
        let image_config = image.as_ref().map(|image| &image.config);
        let kubelet_env = container::environment(&pod, &spec, &lookup).map_err(config_error)?;
        let argv = container::argv(&spec, &kubelet_env, image_config).map_err(create_error)?;
        let mut env = container::runtime_environment(image.as_deref(), credentials.uid, &self.name);
        env.extend(kubelet_env);
        let working_dir = spec.working_dir.clone().or_else(|| {
            image_config
                .map(|c| c.working_dir.clone())
                .filter(|dir| !dir.is_empty())
        });
        if let (Some(dir), Some(_)) = (&working_dir, &image) {
            let inside = PathBuf::from(format!("/proc/{holder}/root")).join(dir.trim_start_matches('/'));
            if !inside.is_dir() {
                return Err(create_error(format!(
                    "working directory {dir} is not a directory in the container's root"
                )));
            }
        }
        let process = Process {
            env,
            working_dir,
            credentials,
        };
        let saved = kubelet.paths.container_process(&self.namespace, &self.name, &spec.name);
        process
            .save(&saved)
            .map_err(|e| create_error(format!("write {}: {e}", saved.display())))?;
        Ok((namespaces, argv, process))
    }

    async fn start_container(&mut self, index: usize) {
        let kubelet = self.kubelet.clone();
        let spec = self.containers[index].spec.clone();
        let log = kubelet.paths.container_log(&self.namespace, &self.name, &spec.name);
        let launched = match self.prepare_container(index).await {
            Ok((namespaces, argv, process)) => container::spawn(&namespaces, &argv, &process, &log)
                .map(|child| (child, process))
                .map_err(|e| {
                    (
                        "CreateContainerError".to_string(),
                        format!("cannot start {}: {e}", argv[0]),
                    )
                }),
            Err(problem) => Err(problem),
        };
        let state = &mut self.containers[index];
        state.generation += 1;
        let generation = state.generation;
        let mut child = match launched {
            Ok((child, process)) => {
                state.process = Some(process);
                state.start_failures = 0;
                child
            }
            Err((reason, problem)) => {
                tracing::warn!(pod = %self.name, container = %spec.name, %reason, %problem, "container cannot start");
                self.schedule_start_retry(index, reason, problem);
                return;
            }
        };
        let pid = child.id().unwrap_or_default();
        let _ = std::fs::write(
            kubelet.paths.container_pid(&self.namespace, &self.name, &spec.name),
            pid.to_string(),
        );
        let (signals, mut signalled) = mpsc::unbounded_channel();
        state.run = Some(Running { pid, signals });
        state.started_at = Some((now_rfc3339(), Instant::now()));
        state.terminated = None;
        state.waiting = None;
        state.started = spec.startup_probe.is_none();
        state.ready = spec.readiness_probe.is_none() && state.started;
        let messages = self.messages.clone();
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    Some(signal) = signalled.recv() => {
                        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
                    }
                }
            };
            let code = match status {
                Ok(status) => status
                    .code()
                    .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(9)),
                Err(_) => 255,
            };
            let _ = messages.send(Message::Exited {
                index,
                generation,
                code,
            });
        });
        self.start_probes(index);
    }

    fn start_probes(&mut self, index: usize) {
        let Some(ip) = self.ip else { return };
        let state = &mut self.containers[index];
        for handle in state.probes.drain(..) {
            handle.abort();
        }
        // As in Kubernetes, readiness and liveness are probed only once the
        // startup probe (if any) has passed.
        let probes = if state.started {
            vec![
                (ProbeKind::Readiness, state.spec.readiness_probe.clone()),
                (ProbeKind::Liveness, state.spec.liveness_probe.clone()),
            ]
        } else {
            vec![(ProbeKind::Startup, state.spec.startup_probe.clone())]
        };
        let Some(namespaces) = self.sandbox.as_ref().and_then(|s| s.namespaces(&state.spec.name).ok()) else {
            return;
        };
        let namespaces = Arc::new(namespaces);
        let Some(process) = state.process.clone().map(Arc::new) else {
            return;
        };
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let (messages, spec, generation) = (self.messages.clone(), state.spec.clone(), state.generation);
            let (namespaces, process) = (namespaces.clone(), process.clone());
            let task = tokio::spawn(async move {
                let timing = Timing::of(&probe);
                tokio::time::sleep(timing.initial_delay).await;
                let (mut successes, mut failures, mut last) = (0, 0, None);
                loop {
                    let ok = probe::check(&probe, &spec, IpAddr::V4(ip), &namespaces, &process).await;
                    if ok {
                        successes += 1;
                        failures = 0;
                    } else {
                        failures += 1;
                        successes = 0;
                    }
                    let verdict = if successes >= timing.success_threshold {
                        Some(true)
                    } else if failures >= timing.failure_threshold {
                        Some(false)
                    } else {
                        last
                    };
                    if verdict != last
                        && let Some(ok) = verdict
                    {
                        if messages
                            .send(Message::Probe {
                                index,
                                generation,
                                kind,
                                ok,
                            })
                            .is_err()
                        {
                            return;
                        }
                        last = verdict;
                        if kind == ProbeKind::Startup && ok {
                            return;
                        }
                    }
                    // Until the first verdict, probe quickly: a pod that is
                    // ready should be seen as ready without waiting a period.
                    let pause = if last.is_none() {
                        timing.period.min(Duration::from_millis(200))
                    } else {
                        timing.period
                    };
                    tokio::time::sleep(pause).await;
                }
            });
            state.probes.push(task.abort_handle());
        }
    }

    fn probed(&mut self, index: usize, generation: u64, kind: ProbeKind, ok: bool) {
        let state = &mut self.containers[index];
        if state.generation != generation || !state.running() {
            return;
        }
        match kind {
            ProbeKind::Startup if ok => {
                state.started = true;
                state.ready = state.spec.readiness_probe.is_none();
                self.start_probes(index);
            }
            ProbeKind::Startup | ProbeKind::Liveness if !ok => {
                tracing::info!(pod = %self.name, container = %state.spec.name, ?kind, "probe failed; restarting the container");
                self.kill_container(index, nix::sys::signal::Signal::SIGKILL);
            }
            ProbeKind::Readiness if state.started => state.ready = ok,
            _ => {}
        }
    }

    fn exited(&mut self, index: usize, generation: u64, code: i32) {
        let policy = self.restart_policy().to_string();
        let state = &mut self.containers[index];
        if state.generation != generation {
            return;
        }
        for handle in state.probes.drain(..) {
            handle.abort();
        }
        state.run = None;
        state.ready = false;
        let reason = if code == 0 { "Completed" } else { "Error" };
        state.terminated = Some((code, reason.into()));
        let restart = match (state.role, policy.as_str()) {
            (Role::Sidecar, _) => true,
            (_, "Always") => state.role == Role::App || code != 0,
            (_, "OnFailure") => code != 0,
            _ => false,
        };
        tracing::info!(pod = %self.name, container = %state.spec.name, code, restart, "container exited");
        if restart {
            self.schedule_restart(index);
        } else if state.role == Role::Init && code != 0 {
            self.phase = "Failed";
        }
    }

    /// A container that could not be created (its image not pulled, its
    /// config refused) is tried again after a back-off, without counting as
    /// a restart, as the kubelet does: it waits with the reason, and after a
    /// failed pull with ImagePullBackOff.
    fn schedule_start_retry(&mut self, index: usize, reason: String, problem: String) {
        let state = &mut self.containers[index];
        let delay = backoff(state.start_failures);
        let waiting = match reason.as_str() {
            "ErrImagePull" if state.start_failures > 0 => (
                "ImagePullBackOff".to_string(),
                format!("Back-off pulling image: {problem}"),
            ),
            _ => (reason, problem),
        };
        state.start_failures += 1;
        state.waiting = Some(waiting);
        self.start_again_after(index, delay);
    }

    /// Asks for the container to be started again once `delay` has passed.
    fn start_again_after(&self, index: usize, delay: Duration) {
        let (messages, generation) = (self.messages.clone(), self.containers[index].generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = messages.send(Message::Restart { index, generation });
        });
    }

    /// Starts the container again after its back-off (CrashLoopBackOff).
    fn schedule_restart(&mut self, index: usize) {
        let state = &mut self.containers[index];
        // A container that ran for a while starts its back-off afresh.
        if state
            .started_at
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(60))
        {
            state.restarts = state.restarts.min(1);
        }
        let delay = backoff(state.restarts);
        state.restarts += 1;
        state.waiting = Some((
            "CrashLoopBackOff".into(),
            format!("back-off {}s restarting failed container", delay.as_secs()),
        ));
        self.start_again_after(index, delay);
    }

    fn apps_done(&self) -> bool {
        let apps = self.containers.iter().filter(|c| c.role == Role::App);
        self.restart_policy() != "Always"
            && apps.clone().count() > 0
            && apps
                .clone()
                .all(|c| !c.running() && c.terminated.is_some() && c.waiting.is_none())
    }

    /// All app containers of a run-to-completion pod have finished: stop the
    /// sidecars and record the outcome.
    async fn complete(&mut self) {
        let succeeded = self
            .containers
            .iter()
            .filter(|c| c.role == Role::App)
            .all(|c| c.terminated.as_ref().is_some_and(|(code, _)| *code == 0));
        self.stop_sidecars(Instant::now() + Duration::from_secs(10)).await;
        self.phase = if succeeded { "Succeeded" } else { "Failed" };
        self.release_sandbox().await;
    }

    fn kill_container(&self, index: usize, signal: nix::sys::signal::Signal) {
        if let Some(run) = &self.containers[index].run {
            let _ = run.signals.send(signal);
        }
    }

    /// Waits until the given containers have exited or the deadline passes.
    async fn wait_exited(&mut self, indices: &[usize], deadline: Instant) {
        while indices.iter().any(|&i| self.containers[i].running()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(Message::Exited {
                    index,
                    generation,
                    code,
                })) => {
                    let state = &mut self.containers[index];
                    if state.generation == generation {
                        state.run = None;
                        state.ready = false;
                        state.terminated = Some((code, if code == 0 { "Completed".into() } else { "Error".into() }));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for &index in indices {
            if self.containers[index].running() {
                self.kill_container(index, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    async fn terminate(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for state in &mut self.containers {
            for handle in state.probes.drain(..) {
                handle.abort();
            }
            state.ready = false;
        }
        self.publish();
        let apps: Vec<usize> = (0..self.containers.len())
            .filter(|&i| self.containers[i].role == Role::App)
            .collect();
        let hooks: Vec<_> = apps
            .iter()
            .filter(|&&i| self.containers[i].running())
            .filter_map(|&i| {
                let spec = &self.containers[i].spec;
                let command = spec
                    .lifecycle
                    .as_ref()?
                    .pre_stop
                    .as_ref()?
                    .exec
                    .as_ref()?
                    .command
                    .clone()?;
                Some((self.namespaces_of(i)?, command, self.containers[i].process.clone()?))
            })
            .collect();
        let runs = hooks
            .iter()
            .map(|(namespaces, command, process)| probe::run_hook(command, namespaces, process, grace));
        futures::future::join_all(runs).await;
        for &index in &apps {
            self.kill_container(index, nix::sys::signal::Signal::SIGTERM);
        }
        self.wait_exited(&apps, deadline).await;
        self.stop_sidecars(deadline.max(Instant::now() + Duration::from_secs(2)))
            .await;
    }

    /// Stops native sidecars in reverse order of their start.
    async fn stop_sidecars(&mut self, deadline: Instant) {
        let sidecars: Vec<usize> = (0..self.containers.len())
            .rev()
            .filter(|&i| self.containers[i].role == Role::Sidecar)
            .collect();
        for index in sidecars {
            self.kill_container(index, nix::sys::signal::Signal::SIGTERM);
            self.wait_exited(&[index], deadline).await;
        }
    }

    async fn release_sandbox(&mut self) {
        for index in 0..self.containers.len() {
            self.kill_container(index, nix::sys::signal::Signal::SIGKILL);
            self.containers[index].run = None;
        }
        let netns = self.kubelet.paths.pod_netns(&self.namespace, &self.name);
        if let Some(sandbox) = self.sandbox.take() {
            sandbox::kill_netns_processes(&sandbox.netns);
            if let Some(attachment) = self.network.take()
                && let Err(error) = self.kubelet.cni.del(&self.cni_ref(&netns), &attachment).await
            {
                tracing::warn!(pod = %self.name, namespace = %self.namespace, %error, "tearing down the pod's network");
            }
            sandbox.destroy().await;
        } else if let Some(attachment) = self.network.take() {
            let _ = self.kubelet.cni.del(&self.cni_ref(&netns), &attachment).await;
            sandbox::remove_netns(&netns);
        }
        self.kubelet.tokens.revoke_pod(&self.uid);
    }

    async fn finish(&mut self, outcome: Outcome) {
        self.release_sandbox().await;
        match outcome {
            Outcome::Removed => {
                let _ = self
                    .kubelet
                    .store
                    .remove(Resource::named("pods"), &self.namespace, &self.name);
                let _ = std::fs::remove_dir_all(self.kubelet.paths.pod_dir(&self.namespace, &self.name));
            }
        }
        self.kubelet.forget(&self.uid);
    }

    /// Writes the pod's status to the API.
    fn publish(&self) {
        let status = self.status();
        let result = self
            .kubelet
            .store
            .modify(Resource::named("pods"), &self.namespace, &self.name, |pod| {
                if pod.pointer("/metadata/uid").and_then(Value::as_str) == Some(self.uid.as_str()) {
                    pod["status"] = status;
                }
                Ok(())
            });
        if let Err(error) = result {
            tracing::debug!(pod = %self.name, %error, "cannot publish status");
        }
    }

    fn status(&self) -> Value {
        let container_status = |state: &ContainerState| {
            let current = if let Some((since, _)) = state.started_at.as_ref().filter(|_| state.running()) {
                json!({"running": {"startedAt": since}})
            } else if let Some((reason, message)) = &state.waiting {
                json!({"waiting": {"reason": reason, "message": message}})
            } else if let Some((code, reason)) = &state.terminated {
                json!({"terminated": {"exitCode": code, "reason": reason}})
            } else {
                json!({"waiting": {"reason": "PodInitializing"}})
            };
            json!({
                "name": state.spec.name,
                "image": state.spec.image,
                "imageID": state.image.as_ref().map(|image| image.id()).unwrap_or_default(),
                "containerID": state.run.as_ref().map(|run| format!("lab://{}", run.pid)),
                "ready": state.ready,
                "started": state.started && state.running(),
                "restartCount": state.restarts.min(10_000),
                "state": current,
            })
        };
        let (inits, apps): (Vec<&ContainerState>, Vec<&ContainerState>) =
            self.containers.iter().partition(|c| c.role != Role::App);
        let initialized = self.init_index >= inits.len();
        let running = self.phase == "Running";
        let containers_ready = running
            && apps.iter().all(|c| c.ready)
            && inits.iter().filter(|c| c.role == Role::Sidecar).all(|c| c.ready);
        let condition = |kind: &str, ok: bool| json!({"type": kind, "status": if ok { "True" } else { "False" }});
        let mut status = json!({
            "phase": self.phase,
            "hostIP": crate::network::NODE_IP.to_string(),
            "hostIPs": [{"ip": crate::network::NODE_IP.to_string()}],
            "startTime": self.pod.pointer("/metadata/creationTimestamp"),
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", initialized),
                condition("ContainersReady", containers_ready),
                condition("Ready", containers_ready),
            ],
            "initContainerStatuses": inits.iter().map(|c| container_status(c)).collect::<Vec<_>>(),
            "containerStatuses": apps.iter().map(|c| container_status(c)).collect::<Vec<_>>(),
        });
        if let Some(ip) = self.ip.filter(|_| self.sandbox.is_some() || self.phase == "Pending") {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{"ip": ip.to_string()}]);
        }
        if let Some((reason, message)) = &self.problem {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        }
        status
    }
}

enum Outcome {
    Removed,
}

impl ContainerState {
    fn new(spec: Container, role: Role) -> Self {
        ContainerState {
            spec,
            role,
            generation: 0,
            run: None,
            started_at: None,
            terminated: None,
            waiting: None,
            restarts: 0,
            started: false,
            ready: false,
            probes: Vec::new(),
            image: None,
            process: None,
            start_failures: 0,
        }
    }
}

/// Per-container CPU seconds of a pod, from /proc: the user and system time
/// of every process in each container's process group.
pub fn cpu_seconds(container_pids: &HashMap<String, u32>) -> HashMap<String, f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut totals: HashMap<String, f64> = container_pids.keys().map(|k| (k.clone(), 0.0)).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(pgrp), Some(utime), Some(stime)) = (fields.get(2), fields.get(11), fields.get(12)) else {
            continue;
        };
        let Ok(pgrp) = pgrp.parse::<u32>() else {
            continue;
        };
        if let Some((name, _)) = container_pids.iter().find(|(_, pid)| **pid == pgrp) {
            let used = utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0);
            *totals.entry(name.clone()).or_default() += used / ticks;
        }
    }
    totals
}
