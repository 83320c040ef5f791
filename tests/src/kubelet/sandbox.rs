//! A pod's sandbox: its network namespace wired to the bridge, a holder
//! process (Kubernetes' "pause" container) that owns the pod's UTS namespace
//! and base mount namespace (its /etc/hosts, /etc/resolv.conf and hostname),
//! and one holder per container owning that container's own mount namespace:
//! a private /run and /tmp with the container's volumes mounted, or, for a
//! container that runs from an image, the image's root filesystem under a
//! writable layer of its own (read-only with `readOnlyRootFilesystem`), with
//! /proc, /sys, a minimal /dev, the pod's /etc files and its volumes, as
//! runc sets up a container's root. Containers join their pod's network and
//! UTS namespaces and their own mount namespace.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::nsenter::PodNamespaces;
use crate::network::{self, NetError};
use crate::paths;

/// A host path mounted into the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl BindMount {
    fn to_arg(&self) -> String {
        format!(
            "{}={}{}",
            self.source.display(),
            self.target,
            if self.read_only { ":ro" } else { "" }
        )
    }

    fn from_arg(arg: &str) -> Option<Self> {
        let (source, target) = arg.split_once('=')?;
        let (target, read_only) = match target.strip_suffix(":ro") {
            Some(target) => (target, true),
            None => (target, false),
        };
        Some(BindMount {
            source: PathBuf::from(source),
            target: target.to_string(),
            read_only,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("network setup failed: {0}")]
    Network(#[from] NetError),
    #[error("cannot start the sandbox process: {0}")]
    Spawn(std::io::Error),
    #[error("the sandbox process failed: {0}")]
    Setup(String),
}

/// The root filesystem of a container that runs from an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRoot {
    /// The image's unpacked root filesystem, shared by its containers.
    pub image: PathBuf,
    /// This container's own: its writable layer, and where its root is
    /// mounted.
    pub scratch: PathBuf,
    pub read_only: bool,
}

/// A holder process: it keeps namespaces alive until it is killed.
struct Holder {
    process: tokio::process::Child,
    pid: u32,
}

impl Holder {
    async fn start(args: &[String]) -> Result<Holder, SandboxError> {
        let mut command = tokio::process::Command::new(paths::bin_dir().join("strait-lab"));
        command
            .arg("sandbox")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut process = command.spawn().map_err(SandboxError::Spawn)?;
        let pid = process.id().unwrap_or_default();
        let line = match process.stdout.take() {
            Some(stdout) => {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
            }
            None => Ok(Ok(None)),
        };
        if !matches!(&line, Ok(Ok(Some(line))) if line == "ready") {
            let mut problem = String::new();
            if let Some(mut stderr) = process.stderr.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), stderr.read_to_string(&mut problem)).await;
            }
            let _ = process.kill().await;
            let problem = if problem.trim().is_empty() {
                format!("{line:?}")
            } else {
                problem.trim().to_string()
            };
            return Err(SandboxError::Setup(problem));
        }
        Ok(Holder { process, pid })
    }
}

pub struct Sandbox {
    pub netns: String,
    pod: Holder,
    containers: HashMap<String, Holder>,
}

fn bind_args(mounts: &[BindMount]) -> impl Iterator<Item = String> + '_ {
    mounts.iter().flat_map(|m| ["--bind".to_string(), m.to_arg()])
}

impl Sandbox {
    /// Starts the pod's holder in `netns`, which the runtime made and the
    /// CNI plugins wired; on failure the namespace is removed.
    pub async fn create(netns: &str, hostname: &str, etc: &[BindMount]) -> Result<Sandbox, SandboxError> {
        let mut args = vec![
            "--netns".to_string(),
            netns.to_string(),
            "--hostname".to_string(),
            hostname.to_string(),
        ];
        args.extend(bind_args(etc));
        match Holder::start(&args).await {
            Ok(pod) => Ok(Sandbox {
                netns: netns.to_string(),
                pod,
                containers: HashMap::new(),
            }),
            Err(error) => {
                remove_netns(netns);
                Err(error)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pod.pid
    }

    /// Gives a container its own mount namespace with its volumes: for a
    /// local program once, kept across its restarts; for a container from
    /// an image anew at every start, with a fresh root.
    pub async fn add_container(
        &mut self,
        name: &str,
        mounts: &[BindMount],
        root: Option<&ContainerRoot>,
    ) -> Result<u32, SandboxError> {
        if let Some(holder) = self.containers.get(name)
            && root.is_none()
        {
            return Ok(holder.pid);
        }
        let mut args = vec!["--pod-pid".to_string(), self.pod.pid.to_string()];
        if let Some(root) = root {
            // Each start gets a fresh root over its image, as a runtime
            // makes each container from a new snapshot.
            if let Some(mut old) = self.containers.remove(name) {
                let _ = old.process.kill().await;
            }
            let _ = std::fs::remove_dir_all(&root.scratch);
            args.extend([
                "--rootfs".to_string(),
                root.image.display().to_string(),
                "--scratch".to_string(),
                root.scratch.display().to_string(),
            ]);
            if root.read_only {
                args.push("--read-only".into());
            }
        }
        args.extend(bind_args(mounts));
        let holder = Holder::start(&args).await?;
        let pid = holder.pid;
        self.containers.insert(name.to_string(), holder);
        Ok(pid)
    }

    /// The namespaces a container's processes run in.
    pub fn namespaces(&self, container: &str) -> std::io::Result<PodNamespaces> {
        let mount_holder = self.containers.get(container).map_or(self.pod.pid, |h| h.pid);
        PodNamespaces::of(self.pod.pid, mount_holder)
    }

    /// Kills everything still running in the pod and removes its namespace.
    pub async fn destroy(mut self) {
        kill_netns_processes(&self.netns);
        for holder in self.containers.values_mut() {
            let _ = holder.process.kill().await;
        }
        let _ = self.pod.process.kill().await;
        remove_netns(&self.netns);
    }
}

/// SIGKILLs every process whose network namespace is `netns`, and waits
/// (briefly) until they are gone.
pub fn kill_netns_processes(netns: &str) {
    let Ok(pids) = network::run("ip", &["netns", "pids", netns]) else {
        return;
    };
    let pids: Vec<i32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    for &pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pid| is_running(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists and is not just a zombie awaiting its reaper.
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

pub fn remove_netns(netns: &str) {
    let _ = network::run("ip", &["netns", "delete", netns]);
}

/// Arguments of a holder process (`strait-lab sandbox`): a pod's (with
/// `--netns`) or a container's (with `--pod-pid`).
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// The pod's network namespace: makes a pod holder.
    #[arg(long, conflicts_with = "pod_pid")]
    pub netns: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// The pod holder to join: makes a container holder.
    #[arg(long)]
    pub pod_pid: Option<u32>,
    /// SOURCE=TARGET[:ro]
    #[arg(long = "bind")]
    pub binds: Vec<String>,
    /// An image's root filesystem: the container's root is this under a
    /// writable layer in `--scratch`.
    #[arg(long, requires = "scratch", requires = "pod_pid")]
    pub rootfs: Option<PathBuf>,
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// `readOnlyRootFilesystem`.
    #[arg(long)]
    pub read_only: bool,
}

/// A holder process: sets up its namespaces and mounts, says "ready" and
/// waits to be killed. It runs single-threaded, as namespace changes require.
pub fn sandbox_main(args: SandboxArgs) -> ExitCode {
    match prepare(&args) {
        Ok(()) => {
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "ready");
            let _ = stdout.flush();
            loop {
                nix::unistd::pause();
            }
        }
        Err(problem) => {
            eprintln!("sandbox: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn join(path: &str, kind: CloneFlags) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    setns(file, kind).map_err(|e| format!("setns {path}: {e}"))
}

fn prepare(args: &SandboxArgs) -> Result<(), String> {
    match (&args.netns, args.pod_pid) {
        (Some(netns), _) => {
            join(&format!("/run/netns/{netns}"), CloneFlags::CLONE_NEWNET)?;
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS).map_err(|e| format!("unshare: {e}"))?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| format!("make / private: {e}"))?;
            if let Some(hostname) = &args.hostname {
                nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
            }
            bind_all(&args.binds, &[])
        }
        (None, Some(pid)) => {
            join(&format!("/proc/{pid}/ns/net"), CloneFlags::CLONE_NEWNET)?;
            join(&format!("/proc/{pid}/ns/uts"), CloneFlags::CLONE_NEWUTS)?;
            join(&format!("/proc/{pid}/ns/mnt"), CloneFlags::CLONE_NEWNS)?;
            unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
            match (&args.rootfs, &args.scratch) {
                (Some(image), Some(scratch)) => enter_root(image, scratch, args.read_only, &args.binds),
                _ => bind_all(&args.binds, &[("/run", "mode=755"), ("/tmp", "mode=1777")]),
            }
        }
        (None, None) => Err("either --netns or --pod-pid is needed".into()),
    }
}

/// Opens every source first (the lab keeps them under /run, which a
/// container's private /run then covers), mounts the private tmpfs
/// directories, then binds each source from its open descriptor.
fn bind_all(binds: &[String], private: &[(&str, &str)]) -> Result<(), String> {
    let sources = open_sources(binds)?;
    for (dir, mode) in private {
        mount(
            Some("tmpfs"),
            *dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(*mode),
        )
        .map_err(|e| format!("mount tmpfs on {dir}: {e}"))?;
    }
    bind_sources(&sources, |target, is_dir| ensure_target(target, is_dir, false))
}

/// Opens every bind's source, before anything is mounted over it.
fn open_sources(binds: &[String]) -> Result<Vec<(BindMount, File)>, String> {
    binds
        .iter()
        .map(|arg| {
            let bind = BindMount::from_arg(arg).ok_or_else(|| format!("bad --bind {arg:?}"))?;
            let source = File::open(&bind.source).map_err(|e| format!("open {}: {e}", bind.source.display()))?;
            Ok((bind, source))
        })
        .collect()
}

/// Binds each opened source on its target (made by `target` if need be).
fn bind_sources(
    sources: &[(BindMount, File)],
    target: impl Fn(&Path, bool) -> Result<PathBuf, String>,
) -> Result<(), String> {
    for (bind, source) in sources {
        let is_dir = source.metadata().map(|m| m.is_dir()).unwrap_or(false);
        let target = target(Path::new(&bind.target), is_dir)?;
        let from = format!("/proc/self/fd/{}", source.as_raw_fd());
        mount(
            Some(from.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} on {}: {e}", bind.source.display(), bind.target))?;
        if bind.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
                .map_err(|e| format!("read-only {}: {e}", bind.target))?;
        }
    }
    Ok(())
}

/// Makes sure a mount point exists. On the host's root, new ones are only
/// made where the container has its own filesystem (/run, /tmp), so the host
/// is left untouched; in a container's own root (`anywhere`) wherever they
/// are asked for. A symlinked file (such as /etc/resolv.conf on some hosts)
/// is followed.
fn ensure_target(target: &Path, is_dir: bool, anywhere: bool) -> Result<PathBuf, String> {
    let target = match std::fs::read_link(target) {
        Ok(link) if link.is_absolute() => link,
        Ok(link) => target.parent().unwrap_or(Path::new("/")).join(link),
        Err(_) => target.to_path_buf(),
    };
    if target.exists() {
        return Ok(target);
    }
    let private = anywhere || ["/run", "/var/run", "/tmp"].iter().any(|dir| target.starts_with(dir));
    if !private {
        return Err(format!(
            "mount path {} does not exist; the lab creates mount paths only under /run, /var/run and /tmp",
            target.display()
        ));
    }
    let made = if is_dir {
        std::fs::create_dir_all(&target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| File::create(&target).map(drop))
    };
    made.map_err(|e| format!("create mount point {}: {e}", target.display()))?;
    Ok(target)
}

/// Where the host's root is while a container's root is set up.
const OLD_ROOT: &str = "/.strait-lab-old-root";

/// Device nodes a container gets, bound from the host's.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    // Before pivot_root a symlink in the image would lead out to the host.
    if std::fs::symlink_metadata(target).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(format!(
            "{} is a symlink in the image; refusing to mount {fstype} on it",
            target.display()
        ));
    }
    std::fs::create_dir_all(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    mount(Some(fstype), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {}: {e}", target.display()))
}

/// Makes the container's root and moves into it, as runc does: the image's
/// root filesystem as the lower layer of an overlay whose upper layer is the
/// container's own, /proc, a read-only /sys and a minimal /dev, then
/// `pivot_root`, then the pod's /etc files and the volumes, and last the
/// root made read-only if asked.
fn enter_root(image: &Path, scratch: &Path, read_only: bool, binds: &[String]) -> Result<(), String> {
    let sources = open_sources(binds)?;
    let devices = open_sources(&DEVICES.map(|name| format!("/dev/{name}=/dev/{name}")))?;
    let (upper, work, root) = (scratch.join("upper"), scratch.join("work"), scratch.join("root"));
    for dir in [&upper, &work, &root] {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let layers = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(layers.as_str()),
    )
    .map_err(|e| format!("mount the image {} as the container's root: {e}", image.display()))?;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &root.join("proc"), quiet, None)?;
    mount_fs("sysfs", &root.join("sys"), quiet | MsFlags::MS_RDONLY, None)?;
    mount_fs("tmpfs", &root.join("dev"), MsFlags::MS_NOSUID, Some("mode=755"))?;
    // The old root stays mounted under the new one until the binds are made:
    // a bind's source must be a mount of this namespace.
    let old_root = root.join(OLD_ROOT.trim_start_matches('/'));
    std::fs::create_dir_all(&old_root).map_err(|e| format!("create {}: {e}", old_root.display()))?;
    nix::unistd::pivot_root(&root, &old_root).map_err(|e| format!("pivot_root into {}: {e}", root.display()))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    bind_sources(&devices, |target, is_dir| ensure_target(target, is_dir, true))?;
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, link).map_err(|e| format!("symlink {link}: {e}"))?;
    }
    mount_fs("tmpfs", Path::new("/dev/shm"), quiet, Some("mode=1777"))?;
    bind_sources(&sources, |target, is_dir| ensure_target(target, is_dir, true))?;
    nix::mount::umount2(OLD_ROOT, nix::mount::MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    std::fs::remove_dir(OLD_ROOT).map_err(|e| format!("remove {OLD_ROOT}: {e}"))?;
    if read_only {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(|e| format!("make the root read-only: {e}"))?;
    }
    Ok(())
}
