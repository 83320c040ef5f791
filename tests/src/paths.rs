//! Where a lab keeps its state, and the names of what it creates, so that
//! `down` can find everything again, even after the daemon crashed.

use std::path::{Path, PathBuf};

/// Selects a lab, so that tests can run several side by side.
pub const LAB_NAME_ENV: &str = "STRAIT_LAB_NAME";
const DEFAULT_NAME: &str = "strait-lab";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPaths {
    pub name: String,
    pub state: PathBuf,
}

impl LabPaths {
    pub fn named(name: &str) -> Self {
        LabPaths {
            name: name.to_string(),
            state: PathBuf::from("/run/strait-lab").join(name),
        }
    }

    /// The lab named by `STRAIT_LAB_NAME`, or the default one.
    pub fn from_env() -> Self {
        let name = std::env::var(LAB_NAME_ENV).ok().filter(|n| !n.is_empty());
        Self::named(name.as_deref().unwrap_or(DEFAULT_NAME))
    }

    pub fn socket(&self) -> PathBuf {
        self.state.join("api.sock")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.state.join("daemon.log")
    }

    pub fn daemon_pid(&self) -> PathBuf {
        self.state.join("daemon.pid")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.state.join("ca.crt")
    }

    /// The network namespace that holds the bridge, the API server, DNS and
    /// the service rules: the lab's "node".
    pub fn node_netns(&self) -> String {
        format!("{}_node", self.name)
    }

    /// Every network namespace of this lab starts with this. Kubernetes
    /// names cannot hold `_`, so no other lab's names start with it.
    pub fn netns_prefix(&self) -> String {
        format!("{}_", self.name)
    }

    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}_{namespace}_{pod}", self.name)
    }

    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.state.join("pods").join(format!("{namespace}_{pod}"))
    }

    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join(format!("{container}.log"))
    }

    pub fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join(format!("{container}.pid"))
    }

    /// The holder of a container's own mount namespace.
    pub fn container_holder_pid(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join(format!("{container}.holder.pid"))
    }

    /// How a running container's processes run (`kubelet::container::Process`).
    pub fn container_process(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join(format!("{container}.process.json"))
    }

    /// A container's own root: its writable layer over its image.
    pub fn container_root(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join(format!("{container}.root"))
    }

    /// The node's image store: an OCI layout and the unpacked images.
    pub fn images(&self) -> PathBuf {
        self.state.join("images")
    }

    /// The sandbox (pause) process that holds a pod's namespaces.
    pub fn sandbox_pid(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join("sandbox.pid")
    }

    /// The node's CNI conf dir (its `/etc/cni/net.d`): the lab's conflist,
    /// and strait-cni's entry and kubeconfig in CNI mode.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.state.join("cni/net.d")
    }

    /// The node's own CNI bin dir (its `/opt/cni/bin`), where strait-cni's
    /// installer copies the plugin; Debian's plugins are found after it.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.state.join("cni/bin")
    }

    /// host-local's allocations.
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.state.join("cni/ipam")
    }

    /// Present when the lab runs in CNI mode (`strait-lab up --cni`).
    pub fn cni_mode_marker(&self) -> PathBuf {
        self.state.join("cni-mode")
    }
}

/// The directory of the running executable, where the lab finds strait's own
/// binaries (the images of its components) and the test applications.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}
