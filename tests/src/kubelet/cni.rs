//! Pod networks as a container runtime sets them up: the CNI plugins of the
//! node's configuration (CNI spec 1.0), called with the pod's namespace in
//! the environment and the configuration on stdin, each given the previous
//! one's result, then the loopback plugin for `lo`, as containerd does.
//!
//! The node's conflist is the lab's own (Debian's containernetworking-
//! plugins: `bridge` on the lab's bridge with `host-local` addresses); in
//! CNI mode strait-cni's installer appends itself to it, and the runtime
//! reads the first configuration by name at every pod start, so a plugin
//! installed later applies to pods created later. DEL runs the plugins of
//! the configuration the pod was added with, in reverse, with its result.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::network::{BRIDGE, NODE_IP};
use crate::paths::LabPaths;

/// Where Debian installs the CNI project's plugins.
pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";
/// The lab's network configuration file in the conf dir.
pub const CONFLIST: &str = "10-strait-lab.conflist";
const VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration in {dir}: {problem}")]
    NoConfig { dir: String, problem: String },
    #[error("plugin type={plugin:?} failed ({command}): {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("the CNI result has no IPv4 address: {result}")]
    NoAddress { result: String },
}

/// What a pod's network was set up with: enough to tear it down.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    conflist: Value,
    result: Value,
}

/// The node's CNI runtime side.
#[derive(Clone, Debug)]
pub struct Cni {
    conf_dir: PathBuf,
    path: String,
}

/// The pod a call is for, as CNI_ARGS and CNI_CONTAINERID carry it.
#[derive(Clone, Debug)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub netns: &'a str,
}

impl PodRef<'_> {
    fn args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.uid, self.uid
        )
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

/// The lab's node network: the bridge the node already holds (with the
/// node's address as the pods' gateway) and host-local addresses from
/// 198.18.1.1 up, handed out in turn.
pub fn node_conflist(paths: &LabPaths) -> Value {
    json!({
        "cniVersion": VERSION,
        "name": "strait-lab",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": paths.cni_ipam_dir(),
                "ranges": [[{"subnet": "198.18.0.0/16", "rangeStart": "198.18.1.1", "rangeEnd": "198.18.255.254", "gateway": NODE_IP.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    })
}

impl Cni {
    /// Writes the node's configuration (once, at the lab's start) and makes
    /// the bin dir the installer copies into.
    pub fn setup(paths: &LabPaths) -> std::io::Result<Cni> {
        std::fs::create_dir_all(paths.cni_conf_dir())?;
        std::fs::create_dir_all(paths.cni_bin_dir())?;
        let conflist = serde_json::to_string_pretty(&node_conflist(paths)).unwrap_or_default();
        std::fs::write(paths.cni_conf_dir().join(CONFLIST), conflist + "\n")?;
        Ok(Cni {
            conf_dir: paths.cni_conf_dir(),
            path: format!("{}:{SYSTEM_PLUGINS}", paths.cni_bin_dir().display()),
        })
    }

    /// The first configuration list by name, as runtimes pick it.
    fn current_conflist(&self) -> Result<Value, CniError> {
        let error = |problem: String| CniError::NoConfig {
            dir: self.conf_dir.display().to_string(),
            problem,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|e| error(e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        let file = files.first().ok_or_else(|| error("no .conflist file".into()))?;
        let text = std::fs::read_to_string(file).map_err(|e| error(format!("{}: {e}", file.display())))?;
        serde_json::from_str(&text).map_err(|e| error(format!("{}: {e}", file.display())))
    }

    /// Sets up a pod's network; on failure, what was set up is taken down.
    pub async fn add(&self, pod: &PodRef<'_>) -> Result<Attachment, CniError> {
        let conflist = self.current_conflist()?;
        self.run_list(&loopback(), "ADD", pod, None).await?;
        match self.run_list(&conflist, "ADD", pod, None).await {
            Ok(result) => {
                let ip = result["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok())
                    .next()
                    .ok_or_else(|| CniError::NoAddress {
                        result: result.to_string(),
                    })?;
                Ok(Attachment { ip, conflist, result })
            }
            Err(error) => {
                let _ = self.run_list(&conflist, "DEL", pod, None).await;
                Err(error)
            }
        }
    }

    /// Tears a pod's network down with the configuration it was set up with.
    pub async fn del(&self, pod: &PodRef<'_>, attachment: &Attachment) -> Result<(), CniError> {
        self.run_list(&attachment.conflist, "DEL", pod, Some(&attachment.result))
            .await
            .map(drop)
    }

    /// Runs each plugin of a list: ADD in order, each given the previous
    /// result; DEL in reverse, each given the ADD's result.
    async fn run_list(
        &self,
        conflist: &Value,
        command: &'static str,
        pod: &PodRef<'_>,
        added: Option<&Value>,
    ) -> Result<Value, CniError> {
        let mut plugins: Vec<Value> = conflist["plugins"].as_array().cloned().unwrap_or_default();
        if command == "DEL" {
            plugins.reverse();
        }
        let mut previous = added.cloned();
        for plugin in plugins {
            let mut conf = plugin.clone();
            conf["cniVersion"] = conflist["cniVersion"].clone();
            conf["name"] = conflist["name"].clone();
            if let Some(previous) = &previous {
                conf["prevResult"] = previous.clone();
            }
            let output = self.exec(&conf, command, pod).await?;
            if command == "ADD" {
                previous = Some(output);
            }
        }
        Ok(previous.unwrap_or(Value::Null))
    }

    async fn exec(&self, conf: &Value, command: &'static str, pod: &PodRef<'_>) -> Result<Value, CniError> {
        let plugin = conf["type"].as_str().unwrap_or_default().to_string();
        let error = |message: String| CniError::Plugin {
            plugin: plugin.clone(),
            command,
            message,
        };
        let binary = self
            .path
            .split(':')
            .map(|dir| Path::new(dir).join(&plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| error(format!("not found in {}", self.path)))?;
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.uid)
            .env("CNI_NETNS", pod.netns_path())
            .env("CNI_IFNAME", if plugin == "loopback" { "lo" } else { "eth0" })
            .env("CNI_PATH", &self.path)
            .env("CNI_ARGS", pod.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| error(format!("{}: {e}", binary.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes()).await;
        }
        let output = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| error("no answer within 60s".into()))?
            .map_err(|e| error(e.to_string()))?;
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() {
            let message = match (answer["msg"].as_str(), answer["details"].as_str()) {
                (Some(msg), Some(details)) if !details.is_empty() => format!("{msg}: {details}"),
                (Some(msg), _) => msg.to_string(),
                _ => String::from_utf8_lossy(&output.stderr).trim().to_string(),
            };
            return Err(error(message));
        }
        Ok(answer)
    }
}

fn loopback() -> Value {
    json!({"cniVersion": VERSION, "name": "cni-loopback", "plugins": [{"type": "loopback"}]})
}
