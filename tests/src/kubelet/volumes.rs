//! A pod's volumes, prepared on the host under the pod's directory and bind
//! mounted into its sandbox: the ServiceAccount token Kubernetes mounts in
//! every pod, projected tokens, emptyDirs, ConfigMaps, Secrets and the
//! downward API.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Volume};
use serde_json::Value;

use super::container::Lookup;
use super::sandbox::BindMount;
use crate::apiserver::auth::{API_AUDIENCE, TokenOwner, Tokens};

pub const API_ACCESS_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const API_ACCESS_VOLUME: &str = "kube-api-access";
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// One token file, re-minted before it expires.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub path: PathBuf,
    pub audience: String,
    pub lifetime: Duration,
}

/// What the pod's volumes came to: each container's mounts and the token
/// files to keep fresh.
#[derive(Debug, Default)]
pub struct PreparedVolumes {
    pub mounts: HashMap<String, Vec<BindMount>>,
    pub tokens: Vec<TokenFile>,
}

#[derive(Debug, thiserror::Error)]
#[error("volume {volume:?}: {problem}")]
pub struct VolumeError {
    pub volume: String,
    pub problem: String,
}

/// Writes `path` (mode 0644) so that a reader sees the old contents or the
/// new, never a part.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(temporary, path)
}

pub fn write_token(tokens: &Tokens, owner: &TokenOwner, file: &TokenFile) -> std::io::Result<()> {
    let token = tokens.mint(owner.clone(), vec![file.audience.clone()], file.lifetime);
    write_atomically(&file.path, token.as_bytes())
}

fn field_value(pod: &Value, path: &str) -> String {
    pod.pointer(&format!("/{}", path.replace('.', "/")))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .unwrap_or_default()
}

/// Prepares every volume under `dir` and returns the sandbox's mounts.
pub fn prepare(
    pod: &Value,
    typed: &Pod,
    dir: &Path,
    ca_cert: &Path,
    lookup: Lookup<'_>,
) -> Result<PreparedVolumes, VolumeError> {
    let spec = typed.spec.clone().unwrap_or_default();
    let namespace = typed.metadata.namespace.clone().unwrap_or_default();
    let mut prepared = PreparedVolumes::default();
    let mut volume_dirs: Vec<(String, PathBuf)> = Vec::new();

    let automount = spec.automount_service_account_token.unwrap_or(true);
    if automount {
        let path = dir.join("volumes").join(API_ACCESS_VOLUME);
        let error = |e: std::io::Error| VolumeError {
            volume: API_ACCESS_VOLUME.into(),
            problem: e.to_string(),
        };
        std::fs::create_dir_all(&path).map_err(error)?;
        std::fs::copy(ca_cert, path.join("ca.crt")).map_err(error)?;
        write_atomically(&path.join("namespace"), namespace.as_bytes()).map_err(error)?;
        prepared.tokens.push(TokenFile {
            path: path.join("token"),
            audience: API_AUDIENCE.into(),
            lifetime: DEFAULT_TOKEN_LIFETIME,
        });
        volume_dirs.push((API_ACCESS_VOLUME.into(), path));
    }

    for volume in spec.volumes.iter().flatten() {
        let path = prepare_volume(pod, volume, dir, lookup, &mut prepared.tokens)?;
        volume_dirs.push((volume.name.clone(), path));
    }

    let api_access = automount.then(|| BindMount {
        source: dir.join("volumes").join(API_ACCESS_VOLUME),
        target: API_ACCESS_PATH.into(),
        read_only: true,
    });
    for container in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
        // Every container mounts the API access volume, as Kubernetes arranges.
        let mut mounts: Vec<BindMount> = api_access.iter().cloned().collect();
        for mount in container.volume_mounts.iter().flatten() {
            let (_, source) = volume_dirs
                .iter()
                .find(|(name, _)| *name == mount.name)
                .ok_or_else(|| VolumeError {
                    volume: mount.name.clone(),
                    problem: format!(
                        "mounted at {} by {} but not declared in spec.volumes",
                        mount.mount_path, container.name
                    ),
                })?;
            let source = match &mount.sub_path {
                Some(sub) if !sub.is_empty() => source.join(sub),
                _ => source.clone(),
            };
            mounts.retain(|m| m.target != mount.mount_path);
            mounts.push(BindMount {
                source,
                target: mount.mount_path.clone(),
                read_only: mount.read_only.unwrap_or(false),
            });
        }
        // Parents before children, so a volume at /run does not hide one below it.
        mounts.sort_by_key(|m| m.target.trim_end_matches('/').matches('/').count());
        prepared.mounts.insert(container.name.clone(), mounts);
    }
    Ok(prepared)
}

fn prepare_volume(
    pod: &Value,
    volume: &Volume,
    dir: &Path,
    lookup: Lookup<'_>,
    tokens: &mut Vec<TokenFile>,
) -> Result<PathBuf, VolumeError> {
    let error = |problem: String| VolumeError {
        volume: volume.name.clone(),
        problem,
    };
    if let Some(host) = &volume.host_path {
        return Ok(PathBuf::from(&host.path));
    }
    let path = dir.join("volumes").join(&volume.name);
    std::fs::create_dir_all(&path).map_err(|e| error(e.to_string()))?;
    let write = |name: &str, contents: &[u8]| -> Result<(), VolumeError> {
        let file = path.join(name);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
        }
        write_atomically(&file, contents).map_err(|e| error(format!("{name}: {e}")))
    };
    let write_data = |plural: &str, name: &str, optional: bool| -> Result<(), VolumeError> {
        let Some(object) = lookup(plural, name) else {
            return if optional {
                Ok(())
            } else {
                Err(error(format!("{plural} {name:?} not found")))
            };
        };
        for (key, value) in object.get("data").and_then(Value::as_object).into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let bytes = if plural == "secrets" {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| error(format!("secret {name} key {key}: {e}")))?
            } else {
                text.as_bytes().to_vec()
            };
            write(key, &bytes)?;
        }
        Ok(())
    };
    if volume.empty_dir.is_some() {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777)).map_err(|e| error(e.to_string()))?;
    } else if let Some(config_map) = &volume.config_map {
        write_data("configmaps", &config_map.name, config_map.optional.unwrap_or(false))?;
    } else if let Some(secret) = &volume.secret {
        write_data(
            "secrets",
            secret.secret_name.as_deref().unwrap_or_default(),
            secret.optional.unwrap_or(false),
        )?;
    } else if let Some(downward) = &volume.downward_api {
        for item in downward.items.iter().flatten() {
            let value = item
                .field_ref
                .as_ref()
                .map(|f| field_value(pod, &f.field_path))
                .unwrap_or_default();
            write(&item.path, value.as_bytes())?;
        }
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                tokens.push(TokenFile {
                    path: path.join(&token.path),
                    audience: token.audience.clone().unwrap_or_else(|| API_AUDIENCE.into()),
                    lifetime: Duration::from_secs(token.expiration_seconds.map_or(3600, |s| s.max(600) as u64)),
                });
            }
            if let Some(config_map) = &source.config_map {
                write_data("configmaps", &config_map.name, config_map.optional.unwrap_or(false))?;
            }
            if let Some(secret) = &source.secret {
                write_data("secrets", &secret.name, secret.optional.unwrap_or(false))?;
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    let value = item
                        .field_ref
                        .as_ref()
                        .map(|f| field_value(pod, &f.field_path))
                        .unwrap_or_default();
                    write(&item.path, value.as_bytes())?;
                }
            }
        }
    } else {
        return Err(error("this volume type is not supported by the lab".into()));
    }
    Ok(path)
}
