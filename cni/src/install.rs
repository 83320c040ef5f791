//! The installer, run by the `strait-cni` DaemonSet on every node: it puts
//! the plugin where the runtime finds it and chains it into the node's CNI
//! configuration, keeps it there, and takes it all away when stopped.
//!
//! - the binary is copied to the node's CNI bin dir (`/opt/cni/bin`);
//! - a kubeconfig and the ServiceAccount token it points at are written to
//!   the node's CNI conf dir (mode 0600), the token again when it changes.
//!   The chart gives it a token Secret's token, which outlives the
//!   installer's pods;
//! - the plugin's entry is appended to the first configuration there (by
//!   name, as runtimes pick it); a single-plugin `.conf` becomes a
//!   `.conflist`. A primary CNI that rewrites its file gets the entry added
//!   again;
//! - on SIGTERM, when the DaemonSet itself is going (`helm uninstall`), the
//!   entry, kubeconfig and token are removed, so new pods are set up as
//!   before the mesh. The binary stays: runtimes tear a pod down with the
//!   configuration it was set up with, and a pod of the meshed days could
//!   not be removed (nor its address given back) without it; it does
//!   nothing unless a configuration names it. When only the pod goes
//!   (an upgrade, an eviction, a drain) the node stays set up: pods created
//!   meanwhile still get their redirects.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use serde_json::{Value, json};
use strait_contract::names;

use crate::conf::PluginConf;

/// Where the pod's ServiceAccount credentials are mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const KUBECONFIG_FILE: &str = "strait-cni.kubeconfig";
const TOKEN_FILE: &str = "strait-cni.token";
/// How often the conflist and the token are looked at again.
const RECHECK: Duration = Duration::from_secs(2);
/// How long a stopping installer waits to learn whether its DaemonSet
/// stays; half the pod's termination grace period.
const STAYS_CHECK: Duration = Duration::from_secs(5);

/// Where things are, as the installer's container sees them and as the node
/// (and so the plugin) sees them.
#[derive(Clone, Debug, clap::Args)]
pub struct Layout {
    /// The node's CNI bin dir, mounted in this container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The node's CNI conf dir, mounted in this container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The same conf dir as a path on the node, written into the plugin's
    /// configuration.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub host_conf_dir: PathBuf,
    /// The configuration to chain into (a file name in the conf dir);
    /// default: the first `.conflist` or `.conf` by name.
    #[arg(long)]
    pub conf_file: Option<String>,
    /// Namespaces the plugin never looks up (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    pub exclude_namespaces: Vec<String>,
    /// The ServiceAccount credentials to hand the plugin.
    #[arg(long, default_value = SERVICE_ACCOUNT_DIR)]
    pub service_account_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a CNI configuration: {problem}")]
    BadConf { path: String, problem: String },
    #[error("no CNI configuration in {dir} yet (the node's primary CNI writes one)")]
    NoConf { dir: String },
    #[error("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (the kubelet sets them in every pod)")]
    NoApiServer,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// runtime reading it never sees half a file.
/// The temporary file is made with its final mode (a token is never
/// readable by others, not even for a moment) under a name of its own.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.strait-tmp", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        });
    if let Err(error) = written.and_then(|()| fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))) {
        let _ = fs::remove_file(&temporary);
        return Err(io(&temporary)(error));
    }
    fs::rename(&temporary, path).map_err(io(path))
}

/// The file extensions runtimes load network configurations from.
const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];

/// Whether a configuration list's version is one the plugin serves.
fn check_version(list: &Value) -> Result<(), String> {
    let version = list["cniVersion"].as_str().unwrap_or("0.1.0");
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    if parts.len() == 3 && (parts[0], parts[1]) >= (0, 3) {
        Ok(())
    } else {
        Err(format!("cniVersion {version:?}: strait-cni serves 0.3.0 and later"))
    }
}

impl Layout {
    /// The plugin's entry as this layout makes it.
    pub fn plugin_conf(&self) -> PluginConf {
        PluginConf {
            kubeconfig: self.host_conf_dir.join(KUBECONFIG_FILE),
            exclude_namespaces: self.exclude_namespaces.clone(),
        }
    }

    /// The configuration file the entry goes into.
    pub fn conf_path(&self) -> Result<PathBuf, InstallError> {
        if let Some(name) = &self.conf_file {
            return Ok(self.conf_dir.join(name));
        }
        self.conf_files()?
            .into_iter()
            .next()
            .ok_or_else(|| InstallError::NoConf {
                dir: self.conf_dir.display().to_string(),
            })
    }

    /// Every network configuration in the conf dir, by name.
    fn conf_files(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.conf_dir)
            .map_err(io(&self.conf_dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| CONF_EXTENSIONS.iter().any(|x| e == *x)))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Copies this binary into the bin dir.
    pub fn install_binary(&self) -> Result<(), InstallError> {
        let source = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
        let bytes = fs::read(&source).map_err(io(&source))?;
        let target = self.bin_dir.join(names::CNI_PLUGIN);
        if fs::read(&target).is_ok_and(|existing| existing == bytes) {
            return Ok(());
        }
        write_atomically(&target, &bytes, 0o755)
    }

    /// Writes the token (when it changed) and the kubeconfig pointing at it.
    pub fn write_credentials(&self, server: &str) -> Result<(), InstallError> {
        let token_source = self.service_account_dir.join("token");
        let token = fs::read(&token_source).map_err(io(&token_source))?;
        if token.iter().all(u8::is_ascii_whitespace) {
            return Err(InstallError::Io {
                path: token_source.display().to_string(),
                source: std::io::Error::other("the token is empty (is the token Secret filled yet?)"),
            });
        }
        let token_path = self.conf_dir.join(TOKEN_FILE);
        if fs::read(&token_path).ok().as_deref() != Some(token.as_slice()) {
            write_atomically(&token_path, &token, 0o600)?;
        }
        let ca_path = self.service_account_dir.join("ca.crt");
        let ca = fs::read(&ca_path).map_err(io(&ca_path))?;
        let kubeconfig = kubeconfig(server, &ca, &self.host_conf_dir.join(TOKEN_FILE));
        let text = serde_yaml::to_string(&kubeconfig).unwrap_or_default();
        let path = self.conf_dir.join(KUBECONFIG_FILE);
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomically(&path, text.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// Adds (or refreshes) the plugin's entry in the node's configuration.
    /// Returns whether the file had to change.
    pub fn chain(&self) -> Result<bool, InstallError> {
        let path = self.conf_path()?;
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let current: Value = serde_json::from_str(&text).map_err(|e| InstallError::BadConf {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        let (target, list) = if path.extension().is_some_and(|e| e != "conflist") {
            let target = path.with_extension("conflist");
            if target.exists() {
                return Err(InstallError::BadConf {
                    path: path.display().to_string(),
                    problem: format!("making it a list would overwrite {}", target.display()),
                });
            }
            (target, conf_to_list(current.clone()))
        } else {
            (path.clone(), current.clone())
        };
        check_version(&list).map_err(|problem| InstallError::BadConf {
            path: path.display().to_string(),
            problem,
        })?;
        let chained =
            with_entry(list, &self.plugin_conf().to_plugin_entry()).map_err(|problem| InstallError::BadConf {
                path: path.display().to_string(),
                problem,
            })?;
        if target == path && chained == current {
            return Ok(false);
        }
        let pretty = serde_json::to_string_pretty(&chained).unwrap_or_default() + "\n";
        let mode = fs::metadata(&path).map_or(0o644, |m| m.permissions().mode() & 0o777);
        write_atomically(&target, pretty.as_bytes(), mode)?;
        if target != path {
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(true)
    }

    /// Takes the entry out of every configuration in the conf dir, then
    /// removes the credentials (not the binary: see the module's docs). A
    /// file that cannot be read or written keeps its entry, and the error
    /// names it. Whatever is already gone is not an error.
    pub fn uninstall(&self) -> Result<(), InstallError> {
        let mut kept = None;
        for path in self.conf_files()? {
            if let Err(error) = remove_entry(&path) {
                kept.get_or_insert(error);
            }
        }
        if let Some(error) = kept {
            return Err(error);
        }
        for path in [self.conf_dir.join(KUBECONFIG_FILE), self.conf_dir.join(TOKEN_FILE)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }

    /// Whether the node is set up: the binary, the kubeconfig and the entry
    /// are in place (the DaemonSet's readiness).
    pub fn installed(&self) -> Result<(), String> {
        let binary = self.bin_dir.join(names::CNI_PLUGIN);
        if !binary.exists() {
            return Err(format!("{} is missing", binary.display()));
        }
        let kubeconfig = self.conf_dir.join(KUBECONFIG_FILE);
        if !kubeconfig.exists() {
            return Err(format!("{} is missing", kubeconfig.display()));
        }
        let path = self.conf_path().map_err(|e| e.to_string())?;
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let chained = list["plugins"]
            .as_array()
            .is_some_and(|plugins| plugins.last().is_some_and(|p| p["type"] == names::CNI_PLUGIN));
        if chained {
            Ok(())
        } else {
            Err(format!("{} does not end with strait-cni", path.display()))
        }
    }
}

/// Removes strait-cni's entry from one configuration file, if it has one.
fn remove_entry(path: &Path) -> Result<(), InstallError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    if !text.contains(names::CNI_PLUGIN) {
        return Ok(());
    }
    let mut list: Value = serde_json::from_str(&text).map_err(|e| InstallError::BadConf {
        path: path.display().to_string(),
        problem: format!("{e}; its strait-cni entry is left in place"),
    })?;
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let before = plugins.len();
    plugins.retain(|p| p["type"] != names::CNI_PLUGIN);
    if plugins.len() == before {
        return Ok(());
    }
    let pretty = serde_json::to_string_pretty(&list).unwrap_or_default() + "\n";
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777);
    write_atomically(path, pretty.as_bytes(), mode)
}

/// The API server as the kubelet tells every pod where it is.
pub fn api_server_from_env() -> Result<String, InstallError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| InstallError::NoApiServer)?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").map_err(|_| InstallError::NoApiServer)?;
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Ok(format!("https://{host}:{port}"))
}

fn kubeconfig(server: &str, ca: &[u8], token_file: &Path) -> Kubeconfig {
    let name = names::CNI_PLUGIN.to_string();
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(server.to_string()),
                certificate_authority_data: Some(base64::engine::general_purpose::STANDARD.encode(ca)),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.clone(),
            auth_info: Some(AuthInfo {
                token_file: Some(token_file.display().to_string()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some(name.clone()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(name),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Kubeconfig::default()
    }
}

/// A single-plugin `.conf` as the conflist holding it.
fn conf_to_list(conf: Value) -> Value {
    json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::from("1.0.0")),
        "name": conf.get("name").cloned().unwrap_or(Value::from("k8s-pod-network")),
        "plugins": [conf],
    })
}

/// The conflist with strait's entry last (an older entry replaced).
fn with_entry(mut list: Value, entry: &Value) -> Result<Value, String> {
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("it has no \"plugins\" list")?;
    plugins.retain(|p| p["type"] != names::CNI_PLUGIN);
    if plugins.is_empty() {
        return Err(
            "its \"plugins\" list is empty: strait-cni must be chained after a plugin that sets up the pod's interface"
                .into(),
        );
    }
    plugins.push(entry.clone());
    Ok(list)
}

/// The installer's command line: the layout, and the pod it runs in (from
/// the downward API), to tell an uninstall from an upgrade.
#[derive(Clone, Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub layout: Layout,
    /// This pod's name.
    #[arg(long)]
    pub pod_name: Option<String>,
    /// This pod's namespace.
    #[arg(long)]
    pub pod_namespace: Option<String>,
}

/// Whether the DaemonSet that owns pod `namespace/name` stays (it exists
/// and is not being deleted): then a stopping installer leaves the node set
/// up for its successor.
async fn daemonset_remains(namespace: &str, name: &str) -> Result<Option<String>, String> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Pod;
    let client = kube::Client::try_default().await.map_err(|e| e.to_string())?;
    let pod = kube::Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("reading pod {namespace}/{name}: {e}"))?;
    let owner = pod
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.kind == "DaemonSet");
    let Some(owner) = owner else {
        return Ok(None);
    };
    match kube::Api::<DaemonSet>::namespaced(client, namespace)
        .get(&owner.name)
        .await
    {
        Ok(daemonset) if daemonset.metadata.deletion_timestamp.is_none() => Ok(Some(owner.name)),
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(format!("reading daemonset {namespace}/{}: {e}", owner.name)),
    }
}

/// Installs, keeps the node set up until SIGTERM or SIGINT, then
/// uninstalls unless the DaemonSet stays.
pub async fn run(args: InstallArgs) -> Result<(), InstallError> {
    let layout = args.layout;
    use tokio::signal::unix::{SignalKind, signal};
    let server = api_server_from_env()?;
    layout.install_binary()?;
    layout.write_credentials(&server)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io(Path::new("SIGTERM")))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io(Path::new("SIGINT")))?;
    let mut announced = false;
    loop {
        match layout.chain() {
            Ok(changed) => {
                if changed || !announced {
                    eprintln!(
                        "strait-cni: chained into {} (binary in {})",
                        layout.conf_path().map(|p| p.display().to_string()).unwrap_or_default(),
                        layout.bin_dir.display()
                    );
                    announced = true;
                }
            }
            // Waiting for the primary CNI is normal at a node's start.
            Err(error @ InstallError::NoConf { .. }) => eprintln!("strait-cni: {error}; waiting"),
            Err(error) => eprintln!("strait-cni: {error}; trying again"),
        }
        if let Err(error) = layout.write_credentials(&server) {
            eprintln!("strait-cni: refreshing the plugin's credentials: {error}");
        }
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
    if let (Some(namespace), Some(name)) = (&args.pod_namespace, &args.pod_name) {
        // Within the pod's grace period (10 s): a slow or absent API server
        // must not keep the installer asking until it is killed with the
        // node still set up after an uninstall.
        let remains = tokio::time::timeout(STAYS_CHECK, daemonset_remains(namespace, name))
            .await
            .unwrap_or_else(|_| Err(format!("no answer from the API server within {STAYS_CHECK:?}")));
        match remains {
            Ok(Some(daemonset)) => {
                eprintln!(
                    "strait-cni: stopping while the DaemonSet {namespace}/{daemonset} stays (an upgrade or an eviction): the node stays set up"
                );
                return Ok(());
            }
            Ok(None) => {}
            Err(error) => eprintln!("strait-cni: cannot tell whether the DaemonSet stays ({error}); uninstalling"),
        }
    }
    layout.uninstall()?;
    eprintln!("strait-cni: removed from the node");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_goes_last_once_and_comes_out_again() {
        let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}, {"type": "portmap"}]});
        let entry = json!({"type": "strait-cni", "kubeconfig": "/k"});
        let once = with_entry(list.clone(), &entry).unwrap();
        assert_eq!(once["plugins"][2], entry);
        let twice = with_entry(once.clone(), &json!({"type": "strait-cni", "kubeconfig": "/new"})).unwrap();
        assert_eq!(twice["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(twice["plugins"][2]["kubeconfig"], "/new");
        assert!(
            with_entry(json!({"plugins": []}), &entry)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            with_entry(json!({"type": "bridge"}), &entry)
                .unwrap_err()
                .contains("no \"plugins\"")
        );
        let converted = conf_to_list(json!({"cniVersion": "0.4.0", "name": "net", "type": "bridge"}));
        assert_eq!(converted["plugins"][0]["type"], "bridge");
        assert_eq!(converted["cniVersion"], "0.4.0");
        assert!(
            check_version(&json!({"cniVersion": "0.2.0"}))
                .unwrap_err()
                .contains("0.2.0")
        );
        assert!(check_version(&json!({})).is_err());
        assert!(check_version(&json!({"cniVersion": "1.1.0"})).is_ok());
    }

    fn layout(dir: &Path) -> Layout {
        let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        Layout {
            bin_dir: bin,
            conf_dir: conf.clone(),
            host_conf_dir: conf,
            conf_file: None,
            exclude_namespaces: vec!["kube-system".into()],
            service_account_dir: dir.join("sa"),
        }
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list_and_uninstall_leaves_every_file_clean() {
        let dir = std::env::temp_dir().join(format!("strait-cni-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let layout = layout(&dir);
        let single = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "bridge"});
        fs::write(layout.conf_dir.join("10-net.json"), single.to_string()).unwrap();
        assert!(layout.chain().unwrap(), "the first chaining changes the file");
        assert!(!layout.chain().unwrap(), "a second one does not");
        let list: Value =
            serde_json::from_str(&fs::read_to_string(layout.conf_dir.join("10-net.conflist")).unwrap()).unwrap();
        assert_eq!(list["plugins"][1]["type"], "strait-cni");
        assert!(!layout.conf_dir.join("10-net.json").exists());
        fs::write(layout.bin_dir.join("strait-cni"), b"plugin").unwrap();
        fs::write(layout.conf_dir.join(KUBECONFIG_FILE), b"k").unwrap();

        // An entry left in a file that cannot be read is named.
        fs::write(
            layout.conf_dir.join("20-broken.conflist"),
            "{\"plugins\": [{\"type\": \"strait-cni\"",
        )
        .unwrap();
        let error = layout.uninstall().unwrap_err().to_string();
        assert!(error.contains("20-broken.conflist"), "{error}");
        let list: Value =
            serde_json::from_str(&fs::read_to_string(layout.conf_dir.join("10-net.conflist")).unwrap()).unwrap();
        assert_eq!(
            list["plugins"].as_array().unwrap().len(),
            1,
            "the readable file is clean already"
        );

        fs::remove_file(layout.conf_dir.join("20-broken.conflist")).unwrap();
        layout.uninstall().unwrap();
        assert!(!layout.conf_dir.join(KUBECONFIG_FILE).exists());
        // Pods set up with the plugin can still be torn down.
        assert!(layout.bin_dir.join("strait-cni").exists());
        layout.uninstall().unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_list_below_version_0_3_is_refused_naming_file_and_version() {
        let dir = std::env::temp_dir().join(format!("strait-cni-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let layout = layout(&dir);
        let old = json!({"cniVersion": "0.2.0", "name": "k8s", "plugins": [{"type": "bridge"}]});
        fs::write(layout.conf_dir.join("10-net.conflist"), old.to_string()).unwrap();
        let error = layout.chain().unwrap_err().to_string();
        assert!(error.contains("10-net.conflist") && error.contains("0.2.0"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
