//! How a container of a pod spec becomes a process: its command line (the
//! image's entrypoint and cmd under the spec's `command` and `args`, or a
//! local program for images the lab cannot have), its environment (the
//! image's, then the downward API and `$(VAR)` expansion, as the kubelet
//! does), and the credentials it runs with.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::Stdio;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::image::{Image, ImageConfig};
use super::nsenter::PodNamespaces;
use super::security::{self, Credentials};
use crate::network::{API_SERVICE_IP, NODE_IP};
use crate::paths;

pub const NODE_NAME: &str = "lab";
/// What the lab reports as the node's capacity, for resourceFieldRef.
const NODE_CPUS: f64 = 2.0;
const NODE_MEMORY: f64 = 8.0 * 1024.0 * 1024.0 * 1024.0;

/// containerd's PATH for an image that sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Looks up a ConfigMap or Secret (by resource plural) in the pod's namespace.
pub type Lookup<'a> = &'a dyn Fn(&str, &str) -> Option<Value>;

/// How a container's processes run, less their command line: what its main
/// process, `exec`, probes and hooks all get, as a runtime's process spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// `NAME`, value; a later pair wins over an earlier one of the same name.
    pub env: Vec<(String, String)>,
    /// In the container's root; `/` when `None`.
    pub working_dir: Option<String>,
    pub credentials: Credentials,
}

impl Process {
    /// Kept beside the container's log while it runs, for `strait-lab exec`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_vec(self)?)
    }

    pub fn load(path: &Path) -> std::io::Result<Process> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    /// Arranges for `command` to run in the container: its namespaces, its
    /// environment only, its working directory and credentials.
    pub fn enter(&self, namespaces: &PodNamespaces, command: &mut std::process::Command) {
        command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)).collect::<BTreeMap<_, _>>());
        namespaces.enter(command, &self.credentials, self.working_dir.clone());
    }
}

/// Finds a local program as the container's PATH would: the lab's binaries
/// first.
fn resolve_program(program: &str) -> String {
    if program.contains('/') {
        return program.to_string();
    }
    let local = paths::bin_dir().join(program);
    if local.exists() {
        return local.display().to_string();
    }
    program.to_string()
}

/// The command line, as containerd builds it: `command` replaces the image's
/// entrypoint, `args` its cmd, and with a `command` but no `args` the cmd is
/// not used. A container with no image (`image` is `None`) runs a local
/// program and needs a `command`.
pub fn argv(
    container: &Container,
    env: &[(String, String)],
    image: Option<&ImageConfig>,
) -> Result<Vec<String>, String> {
    let expand = |items: &Option<Vec<String>>| -> Vec<String> {
        items.iter().flatten().map(|item| expand_vars(item, env)).collect()
    };
    let (mut command, mut args) = (expand(&container.command), expand(&container.args));
    match image {
        Some(image) => {
            if command.is_empty() {
                if args.is_empty() {
                    args = image.cmd.clone();
                }
                command = image.entrypoint.clone();
            }
        }
        None if command.is_empty() => {
            let image = container.image.as_deref().unwrap_or_default();
            return Err(format!(
                "image {image:?} cannot be had in the lab, which runs it as a local program: give the container a command"
            ));
        }
        None => command[0] = resolve_program(&command[0]),
    }
    command.extend(args);
    if command.is_empty() {
        return Err(format!(
            "container {}: no command specified, and its image has none",
            container.name
        ));
    }
    Ok(command)
}

/// Replaces `$(NAME)` with earlier variables' values; `$$` escapes.
pub fn expand_vars(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == body[..end])
        {
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field(pod: &Value, path: &str) -> Option<String> {
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return pod
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return pod
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    match path {
        "spec.nodeName" => Some(NODE_NAME.to_string()),
        "status.hostIP" => Some(NODE_IP.to_string()),
        "status.podIPs" => pod.pointer("/status/podIP").and_then(Value::as_str).map(str::to_string),
        _ => pod
            .pointer(&format!("/{}", path.replace('.', "/")))
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Parses a Kubernetes quantity (`250m`, `2`, `64Mi`, `1G`) as a number.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(number * factor)
}

fn resource_field(container: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {resource:?} is not section.name"))?;
    let resources = container.resources.as_ref();
    let set = match section {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(format!(
                "resourceFieldRef {resource:?}: expected limits.* or requests.*"
            ));
        }
    };
    let value = set.and_then(|s| s.get(name)).and_then(|q| quantity(&q.0));
    let value = match (value, name) {
        (Some(value), _) => value,
        (None, "cpu") => NODE_CPUS,
        (None, "memory") => NODE_MEMORY,
        (None, _) => 0.0,
    };
    let divisor = divisor.and_then(quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

fn env_var(
    pod: &Value,
    container: &Container,
    var: &EnvVar,
    lookup: Lookup<'_>,
    env: &[(String, String)],
) -> Result<Option<String>, String> {
    if let Some(value) = &var.value {
        return Ok(Some(expand_vars(value, env)));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(field_ref) = &from.field_ref {
        return Ok(field(pod, &field_ref.field_path));
    }
    if let Some(resource_ref) = &from.resource_field_ref {
        return resource_field(
            container,
            &resource_ref.resource,
            resource_ref.divisor.as_ref().map(|d| d.0.as_str()),
        )
        .map(Some);
    }
    let key_ref = |plural: &str, name: &str, key: &str, optional: bool| -> Result<Option<String>, String> {
        let object = lookup(plural, name);
        let data = object
            .as_ref()
            .and_then(|o| o.get("data"))
            .and_then(|d| d.get(key))
            .and_then(Value::as_str);
        match (data, optional) {
            (Some(value), _) if plural == "secrets" => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|e| format!("secret {name} key {key}: {e}"))?;
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            (Some(value), _) => Ok(Some(value.to_string())),
            (None, true) => Ok(None),
            (None, false) => Err(format!("{plural} {name:?} has no key {key:?}")),
        }
    };
    if let Some(r) = &from.config_map_key_ref {
        return key_ref("configmaps", &r.name, &r.key, r.optional.unwrap_or(false));
    }
    if let Some(r) = &from.secret_key_ref {
        return key_ref("secrets", &r.name, &r.key, r.optional.unwrap_or(false));
    }
    Ok(None)
}

/// The environment the kubelet gives a container, in Kubernetes' order: the
/// service variables first, then `envFrom`, then `env`, each able to refer
/// (`$(NAME)`) to the ones before it, and to nothing else.
pub fn environment(pod: &Value, container: &Container, lookup: Lookup<'_>) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), API_SERVICE_IP.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), "443".into()),
    ];
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (plural, name, optional) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(c), _) => ("configmaps", c.name.clone(), c.optional.unwrap_or(false)),
            (_, Some(s)) => ("secrets", s.name.clone(), s.optional.unwrap_or(false)),
            _ => continue,
        };
        match lookup(plural, &name).and_then(|o| o.get("data").cloned()) {
            Some(Value::Object(data)) => {
                for (key, value) in data {
                    env.push((format!("{prefix}{key}"), value.as_str().unwrap_or_default().to_string()));
                }
            }
            _ if optional => {}
            _ => return Err(format!("envFrom {plural} {name:?} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_var(pod, container, var, lookup, &env)? {
            env.push((var.name.clone(), value));
        }
    }
    Ok(env)
}

/// The variables the runtime sets before the kubelet's: a local program's
/// PATH (the lab's binaries first) and HOME; an image's `Env`, with
/// containerd's default PATH and runc's HOME (from the image's passwd for
/// `uid`) where the image sets none; HOSTNAME, the pod's name.
pub fn runtime_environment(image: Option<&Image>, uid: u32, hostname: &str) -> Vec<(String, String)> {
    let mut env = match image {
        Some(image) => {
            let mut env = image.config.env.clone();
            if !env.iter().any(|(name, _)| name == "PATH") {
                env.push(("PATH".into(), DEFAULT_PATH.into()));
            }
            if !env.iter().any(|(name, _)| name == "HOME") {
                env.push(("HOME".into(), security::home(image, uid)));
            }
            env
        }
        None => {
            let host_path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
            vec![
                ("PATH".into(), format!("{}:{host_path}", paths::bin_dir().display())),
                ("HOME".into(), "/root".into()),
            ]
        }
    };
    env.push(("HOSTNAME".into(), hostname.to_string()));
    env
}

/// Starts a container's main process in the pod, its output appended to
/// `log`.
pub fn spawn(
    namespaces: &PodNamespaces,
    argv: &[String],
    process: &Process,
    log: &Path,
) -> std::io::Result<tokio::process::Child> {
    let output = OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    process.enter(namespaces, &mut command);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_like_the_kubelet() {
        let env = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())];
        assert_eq!(expand_vars("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand_vars("$$(A) $(C) $", &env), "$(A) $(C) $");
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("64Mi"), Some(67_108_864.0));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("x"), None);
    }

    #[test]
    fn variables_refer_only_to_what_the_kubelet_set_not_to_the_runtimes() {
        let container = Container {
            name: "c".into(),
            env: Some(vec![EnvVar {
                name: "A".into(),
                value: Some("$(PATH)-$(KUBERNETES_SERVICE_PORT)".into()),
                value_from: None,
            }]),
            ..Container::default()
        };
        let env = environment(&serde_json::json!({}), &container, &|_, _| None).unwrap();
        let a = env.iter().find(|(name, _)| name == "A").map(|(_, v)| v.as_str());
        assert_eq!(a, Some("$(PATH)-443"));
        assert!(!env.iter().any(|(name, _)| name == "PATH" || name == "HOME"));
    }

    #[test]
    fn command_and_args_replace_the_images_entrypoint_and_cmd_as_containerd_does() {
        let image = ImageConfig {
            entrypoint: vec!["/bin/proxy".into()],
            cmd: vec!["run".into()],
            ..ImageConfig::default()
        };
        let spec = |command: &[&str], args: &[&str]| Container {
            name: "c".into(),
            command: (!command.is_empty()).then(|| command.iter().map(|s| s.to_string()).collect()),
            args: (!args.is_empty()).then(|| args.iter().map(|s| s.to_string()).collect()),
            ..Container::default()
        };
        let env = vec![("V".to_string(), "x".to_string())];
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            (&[], &[], &["/bin/proxy", "run"]),
            (&[], &["wait-ready", "$(V)"], &["/bin/proxy", "wait-ready", "x"]),
            (&["/bin/other"], &[], &["/bin/other"]),
            (&["/bin/other"], &["a"], &["/bin/other", "a"]),
        ];
        for (command, args, expected) in cases {
            assert_eq!(argv(&spec(command, args), &env, Some(&image)).unwrap(), expected);
        }
        assert!(argv(&spec(&[], &[]), &env, None).is_err());
        assert!(argv(&spec(&[], &[]), &env, Some(&ImageConfig::default())).is_err());
    }
}
