//! A pod's sandbox: its network namespace wired to the bridge, and a small
//! holder process (Kubernetes' "pause" container) that owns the pod's mount
//! and UTS namespaces, with the pod's own /run, /tmp, /etc/hosts,
//! /etc/resolv.conf, hostname and volumes mounted. Containers join it.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
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

pub struct Sandbox {
    pub netns: String,
    pub ip: Ipv4Addr,
    holder: tokio::process::Child,
    pub pid: u32,
}

impl Sandbox {
    /// Creates the namespace, wires it, and starts the holder process.
    pub async fn create(
        netns: &str,
        veth: &str,
        ip: Ipv4Addr,
        hostname: &str,
        mounts: &[BindMount],
    ) -> Result<Sandbox, SandboxError> {
        network::run("ip", &["netns", "add", netns])?;
        if let Err(error) = network::attach_pod(netns, veth, ip) {
            remove_netns(netns);
            return Err(error.into());
        }
        let mut command = tokio::process::Command::new(paths::bin_dir().join("strait-lab"));
        command
            .args(["sandbox", "--netns", netns, "--hostname", hostname])
            .args(
                mounts
                    .iter()
                    .flat_map(|m| ["--bind".to_string(), m.to_arg()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut holder = command.spawn().map_err(|e| {
            remove_netns(netns);
            SandboxError::Spawn(e)
        })?;
        let pid = holder.id().unwrap_or_default();
        let line = match holder.stdout.take() {
            Some(stdout) => {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
            }
            None => Ok(Ok(None)),
        };
        if !matches!(&line, Ok(Ok(Some(line))) if line == "ready") {
            let mut problem = String::new();
            if let Some(mut stderr) = holder.stderr.take() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stderr.read_to_string(&mut problem),
                )
                .await;
            }
            let _ = holder.kill().await;
            remove_netns(netns);
            let problem = if problem.trim().is_empty() {
                format!("{line:?}")
            } else {
                problem.trim().to_string()
            };
            return Err(SandboxError::Setup(problem));
        }
        Ok(Sandbox {
            netns: netns.to_string(),
            ip,
            holder,
            pid,
        })
    }

    pub fn namespaces(&self) -> std::io::Result<PodNamespaces> {
        PodNamespaces::of_process(self.pid)
    }

    /// Kills everything still running in the pod and removes its namespace.
    pub async fn destroy(mut self) {
        kill_netns_processes(&self.netns);
        let _ = self.holder.kill().await;
        remove_netns(&self.netns);
    }
}

/// SIGKILLs every process whose network namespace is `netns`.
pub fn kill_netns_processes(netns: &str) {
    if let Ok(pids) = network::run("ip", &["netns", "pids", netns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn remove_netns(netns: &str) {
    let _ = network::run("ip", &["netns", "delete", netns]);
}

/// Arguments of the holder process (`strait-lab sandbox`).
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub hostname: String,
    /// SOURCE=TARGET[:ro]
    #[arg(long = "bind")]
    pub binds: Vec<String>,
}

/// The holder process: joins the pod's network namespace, makes new mount
/// and UTS namespaces, mounts the pod's files, says "ready" and waits to be
/// killed. It runs single-threaded, as namespace changes require.
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
            eprintln!("sandbox {}: {problem}", args.netns);
            ExitCode::FAILURE
        }
    }
}

fn prepare(args: &SandboxArgs) -> Result<(), String> {
    let netns =
        File::open(format!("/run/netns/{}", args.netns)).map_err(|e| format!("open netns: {e}"))?;
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("unshare: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    nix::unistd::sethostname(&args.hostname).map_err(|e| format!("sethostname: {e}"))?;

    // Open every source before /run is covered: the lab keeps them there.
    let mut sources = Vec::new();
    for arg in &args.binds {
        let bind = BindMount::from_arg(arg).ok_or_else(|| format!("bad --bind {arg:?}"))?;
        let source =
            File::open(&bind.source).map_err(|e| format!("open {}: {e}", bind.source.display()))?;
        sources.push((bind, source));
    }
    for (dir, mode) in [("/run", "mode=755"), ("/tmp", "mode=1777")] {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(mode),
        )
        .map_err(|e| format!("mount tmpfs on {dir}: {e}"))?;
    }
    for (bind, source) in &sources {
        let is_dir = source.metadata().map(|m| m.is_dir()).unwrap_or(false);
        let target = ensure_target(Path::new(&bind.target), is_dir)?;
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

/// Makes sure a mount point exists. New ones are only made where the pod
/// has its own filesystem (/run, /tmp), so the host is left untouched; a
/// symlinked file (such as /etc/resolv.conf on some hosts) is followed.
fn ensure_target(target: &Path, is_dir: bool) -> Result<PathBuf, String> {
    let target = match std::fs::read_link(target) {
        Ok(link) if link.is_absolute() => link,
        Ok(link) => target.parent().unwrap_or(Path::new("/")).join(link),
        Err(_) => target.to_path_buf(),
    };
    if target.exists() {
        return Ok(target);
    }
    let private = ["/run", "/var/run", "/tmp"]
        .iter()
        .any(|dir| target.starts_with(dir));
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
