//! How a container of a pod spec becomes a local process: its command line
//! (strait's own images map to the locally built binaries), its environment
//! (with the downward API and `$(VAR)` expansion, as the kubelet does), and
//! its user.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::Value;

use super::nsenter::PodNamespaces;
use crate::network::{API_SERVICE_IP, NODE_IP};
use crate::paths;

pub const NODE_NAME: &str = "lab";
/// What the lab reports as the node's capacity, for resourceFieldRef.
const NODE_CPUS: f64 = 2.0;
const NODE_MEMORY: f64 = 8.0 * 1024.0 * 1024.0 * 1024.0;

/// Looks up a ConfigMap or Secret (by resource plural) in the pod's namespace.
pub type Lookup<'a> = &'a dyn Fn(&str, &str) -> Option<Value>;

/// The image of one of strait's components maps to its binary here.
fn component_binary(image: &str) -> Option<PathBuf> {
    let repository = image.rsplit('/').next()?.split([':', '@']).next()?;
    let known = ["strait-proxy", "strait-init", "strait-injector"];
    known.contains(&repository).then(|| paths::bin_dir().join(repository))
}

/// Finds a program as the container's PATH would: the lab's binaries first.
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

/// The command line: `command` + `args`, or the image's entrypoint for
/// strait's own images.
pub fn argv(container: &Container, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let expand = |items: &Option<Vec<String>>| -> Vec<String> {
        items.iter().flatten().map(|item| expand_vars(item, env)).collect()
    };
    let mut argv = expand(&container.command);
    if argv.is_empty() {
        let image = container.image.as_deref().unwrap_or_default();
        let binary = component_binary(image).ok_or_else(|| {
            format!(
                "image {image:?} is not one of strait's; the lab runs local programs, so give the container a command"
            )
        })?;
        argv.push(binary.display().to_string());
    } else {
        argv[0] = resolve_program(&argv[0]);
    }
    argv.extend(expand(&container.args));
    Ok(argv)
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

/// The container's environment, in Kubernetes' order: the service variables
/// first, then `envFrom`, then `env`, each able to refer to the ones before.
pub fn environment(
    pod: &Value,
    typed: &Pod,
    container: &Container,
    lookup: Lookup<'_>,
) -> Result<Vec<(String, String)>, String> {
    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), format!("{}:{host_path}", paths::bin_dir().display())),
        ("HOME".into(), "/root".into()),
        ("HOSTNAME".into(), typed.metadata.name.clone().unwrap_or_default()),
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

/// The uid and gid the container runs as; `None` is root.
pub fn user(typed: &Pod, container: &Container) -> Option<(u32, u32)> {
    let pod_context = typed.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let uid = own
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user))?;
    let gid = own
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group))
        .unwrap_or(uid);
    Some((u32::try_from(uid).ok()?, u32::try_from(gid).ok()?))
}

/// Starts a container's process in the pod, its output appended to `log`.
pub fn spawn(
    namespaces: &PodNamespaces,
    argv: &[String],
    env: &[(String, String)],
    user: Option<(u32, u32)>,
    working_dir: Option<String>,
    log: &PathBuf,
) -> std::io::Result<tokio::process::Child> {
    let output = OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)).collect::<BTreeMap<_, _>>())
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    namespaces.enter(&mut command, user, working_dir);
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
    fn strait_images_map_to_local_binaries() {
        assert!(
            component_binary("ghcr.io/strait-mesh/strait-proxy:0.1.0")
                .unwrap()
                .ends_with("strait-proxy")
        );
        assert!(
            component_binary("strait-init@sha256:abc")
                .unwrap()
                .ends_with("strait-init")
        );
        assert_eq!(component_binary("nginx:1.25"), None);
    }
}
