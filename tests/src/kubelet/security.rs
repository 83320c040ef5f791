//! A container's `securityContext` as the kubelet and a container runtime
//! (containerd with runc) apply it: the user (`runAsUser`/`runAsGroup` over
//! the image's `USER`), `runAsNonRoot` verified the way the kubelet verifies
//! it, the capability set (the runtime's defaults less `drop` plus `add`, or
//! all when `privileged`), and `no_new_privs` unless `allowPrivilegeEscalation`
//! is left on. Not applied: seccomp profiles and SELinux/AppArmor options.

use std::path::Path;
use std::str::FromStr;

use caps::Capability;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

use super::image::Image;

/// containerd's default capabilities for a container (the Docker set).
const RUNTIME_DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Who a container's processes are and what they may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Bounding, permitted and effective set before exec, as a bitmask of
    /// capability numbers. A non-root process keeps them across exec only
    /// through file capabilities, as under runc.
    pub capabilities: u64,
    /// `PR_SET_NO_NEW_PRIVS`: set-user-ID bits and file capabilities grant
    /// nothing beyond what the process already holds.
    pub no_new_privs: bool,
}

/// The bitmask of a set of capabilities.
fn bitmask<'a>(capabilities: impl IntoIterator<Item = &'a Capability>) -> u64 {
    capabilities.into_iter().fold(0, |mask, cap| mask | cap.bitmask())
}

/// Why the kubelet will not create the container (`CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    #[error("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})")]
    RunAsUserRoot { pod: String, container: String },
    #[error("container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})")]
    ImageRunsAsRoot { pod: String, container: String },
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod:?}, container: {container})"
    )]
    NonNumericUser {
        user: String,
        pod: String,
        container: String,
    },
    #[error("image user {user:?} of container {container}: {problem}")]
    UnknownUser {
        user: String,
        container: String,
        problem: String,
    },
    #[error("container {container}: unknown capability {name:?} in securityContext.capabilities")]
    UnknownCapability { container: String, name: String },
}

/// An entry of an image's /etc/passwd or /etc/group.
struct Entry {
    name: String,
    id: Option<u32>,
    /// passwd: the primary gid.
    gid: Option<u32>,
    /// passwd: the home directory.
    home: Option<String>,
}

/// The entries of `file` (`etc/passwd` or `etc/group`) in `rootfs`.
fn entries(rootfs: &Path, file: &str) -> Vec<Entry> {
    let text = std::fs::read_to_string(rootfs.join(file)).unwrap_or_default();
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let field = |n: usize| fields.get(n).copied().unwrap_or_default();
            Entry {
                name: field(0).to_string(),
                id: field(2).parse().ok(),
                gid: field(3).parse().ok(),
                home: fields.get(5).map(|home| home.to_string()),
            }
        })
        .collect()
}

/// The passwd entry of `uid` in the image, as runc looks it up.
fn passwd_of(image: &Image, uid: u32) -> Option<Entry> {
    entries(&image.rootfs, "etc/passwd")
        .into_iter()
        .find(|e| e.id == Some(uid))
}

/// The home directory runc gives `uid` in `image`: its passwd entry's, else
/// `/`.
pub fn home(image: &Image, uid: u32) -> String {
    passwd_of(image, uid)
        .and_then(|entry| entry.home)
        .filter(|home| !home.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// An image's `USER`: `uid[:gid]`, or names resolved in the image's
/// /etc/passwd and /etc/group; empty is root.
struct ImageUser<'a> {
    image: &'a Image,
    user: &'a str,
    group: Option<&'a str>,
}

impl<'a> ImageUser<'a> {
    fn of(image: &'a Image) -> Self {
        let text = image.config.user.as_str();
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        ImageUser { image, user, group }
    }

    /// The uid, if the image gives it as a number (or not at all: root).
    fn numeric_uid(&self) -> Option<u32> {
        if self.user.is_empty() {
            Some(0)
        } else {
            self.user.parse().ok()
        }
    }

    fn uid(&self) -> Result<u32, String> {
        self.numeric_uid()
            .or_else(|| {
                entries(&self.image.rootfs, "etc/passwd")
                    .into_iter()
                    .find(|e| e.name == self.user)
                    .and_then(|e| e.id)
            })
            .ok_or_else(|| format!("no user {:?} in the image's /etc/passwd", self.user))
    }

    /// The group the image names, if it names one.
    fn gid(&self) -> Result<Option<u32>, String> {
        let Some(group) = self.group else { return Ok(None) };
        group
            .parse()
            .ok()
            .or_else(|| {
                entries(&self.image.rootfs, "etc/group")
                    .into_iter()
                    .find(|e| e.name == group)
                    .and_then(|e| e.id)
            })
            .map(Some)
            .ok_or_else(|| format!("no group {group:?} in the image's /etc/group"))
    }
}

fn capabilities(container: &Container) -> Result<u64, SecurityError> {
    let context = container.security_context.as_ref();
    let all = bitmask(&caps::all());
    if context.and_then(|c| c.privileged) == Some(true) {
        return Ok(all);
    }
    let requested = context.and_then(|c| c.capabilities.as_ref());
    let parse = |name: &String| -> Result<Option<u64>, SecurityError> {
        if name.eq_ignore_ascii_case("ALL") {
            return Ok(None);
        }
        let full = if name.to_ascii_uppercase().starts_with("CAP_") {
            name.to_ascii_uppercase()
        } else {
            format!("CAP_{}", name.to_ascii_uppercase())
        };
        Capability::from_str(&full)
            .map(|cap| Some(cap.bitmask()))
            .map_err(|_| SecurityError::UnknownCapability {
                container: container.name.clone(),
                name: name.clone(),
            })
    };
    let mut mask = bitmask(&RUNTIME_DEFAULT);
    for name in requested.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        mask &= !parse(name)?.unwrap_or(all);
    }
    for name in requested.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        mask |= parse(name)?.unwrap_or(all);
    }
    Ok(mask)
}

/// The credentials of a container: from its and its pod's securityContext,
/// and the image's `USER` (`None`: a local program, which runs as root unless
/// the spec says otherwise).
pub fn credentials(pod: &Pod, container: &Container, image: Option<&Image>) -> Result<Credentials, SecurityError> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let run_as_user = own
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user));
    let run_as_group = own
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group));
    let run_as_non_root = own
        .and_then(|c| c.run_as_non_root)
        .or_else(|| pod_context.and_then(|c| c.run_as_non_root))
        .unwrap_or(false);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let image_user = image.map(ImageUser::of);
    let unknown = |problem: String| SecurityError::UnknownUser {
        user: image.map(|i| i.config.user.clone()).unwrap_or_default(),
        container: container.name.clone(),
        problem,
    };
    // The kubelet's verifyRunAsNonRoot; a local program runs as root.
    if run_as_non_root {
        let image_uid = image_user.as_ref().map_or(Some(0), ImageUser::numeric_uid);
        let container = container.name.clone();
        match (run_as_user, image_uid) {
            (Some(0), _) => {
                return Err(SecurityError::RunAsUserRoot {
                    pod: pod_name,
                    container,
                });
            }
            (None, Some(0)) => {
                return Err(SecurityError::ImageRunsAsRoot {
                    pod: pod_name,
                    container,
                });
            }
            (None, None) => {
                let user = image_user.as_ref().map(|u| u.user.to_string()).unwrap_or_default();
                return Err(SecurityError::NonNumericUser {
                    user,
                    pod: pod_name,
                    container,
                });
            }
            _ => {}
        }
    }
    let uid = match (run_as_user, &image_user) {
        (Some(uid), _) => u32::try_from(uid).map_err(|_| unknown(format!("runAsUser {uid} is out of range")))?,
        (None, Some(user)) => user.uid().map_err(unknown)?,
        (None, None) => 0,
    };
    // As containerd: runAsGroup, else the image's group when the image's
    // user is used, else the uid's primary group in the image's passwd,
    // else 0. A local program has no image: its group is its uid.
    let image_group = match (&image_user, run_as_user) {
        (Some(user), None) => user.gid().map_err(unknown)?,
        _ => None,
    };
    let gid = match (run_as_group, image_group, image) {
        (Some(gid), _, _) => u32::try_from(gid).map_err(|_| unknown(format!("runAsGroup {gid} is out of range")))?,
        (None, Some(gid), _) => gid,
        (None, None, Some(image)) => passwd_of(image, uid).and_then(|e| e.gid).unwrap_or(0),
        (None, None, None) => uid,
    };
    let privileged = own.and_then(|c| c.privileged) == Some(true);
    let escalation = own.and_then(|c| c.allow_privilege_escalation).unwrap_or(true);
    Ok(Credentials {
        uid,
        gid,
        capabilities: capabilities(container)?,
        no_new_privs: !escalation && !privileged,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};

    use super::*;
    use crate::kubelet::image::ImageConfig;

    fn has(credentials: &Credentials, capability: Capability) -> bool {
        credentials.capabilities & capability.bitmask() != 0
    }

    fn container(context: SecurityContext) -> Container {
        Container {
            name: "c".into(),
            security_context: Some(context),
            ..Container::default()
        }
    }

    fn image(user: &str) -> Image {
        Image {
            reference: "strait-init:1".into(),
            digest: "sha256:00".into(),
            config: ImageConfig {
                user: user.into(),
                ..ImageConfig::default()
            },
            rootfs: "/nonexistent".into(),
        }
    }

    /// An image whose /etc/passwd and /etc/group say who its users are.
    fn image_with_users(user: &str) -> (Image, std::path::PathBuf) {
        let rootfs = std::env::temp_dir().join(format!("strait-lab-users-{}-{user}", std::process::id()));
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\nproxy:x:2102:2200:proxy:/home/proxy:/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nmesh:x:2300:\n").unwrap();
        let mut found = image(user);
        found.rootfs = rootfs.clone();
        (found, rootfs)
    }

    #[test]
    fn groups_and_homes_come_from_the_images_passwd_as_containerd_finds_them() {
        let plain = container(SecurityContext::default());
        let cases = [
            ("2102", None, None, (2102, 2200)),
            ("proxy", None, None, (2102, 2200)),
            ("proxy:mesh", None, None, (2102, 2300)),
            ("2102:7", None, None, (2102, 7)),
            ("proxy:mesh", Some(2102), None, (2102, 2200)),
            ("proxy", Some(5000), None, (5000, 0)),
            ("proxy", None, Some(9), (2102, 9)),
            ("", None, None, (0, 0)),
        ];
        for (user, run_as_user, run_as_group, expected) in cases {
            let (image, rootfs) = image_with_users(&user.replace(':', "-"));
            let image = Image {
                config: ImageConfig {
                    user: user.into(),
                    ..ImageConfig::default()
                },
                ..image
            };
            let spec = container(SecurityContext {
                run_as_user,
                run_as_group,
                ..SecurityContext::default()
            });
            let spec = if run_as_user.is_none() && run_as_group.is_none() {
                plain.clone()
            } else {
                spec
            };
            let found = credentials(&Pod::default(), &spec, Some(&image)).unwrap();
            assert_eq!(
                (found.uid, found.gid),
                expected,
                "USER {user:?} runAsUser {run_as_user:?}"
            );
            assert_eq!(
                home(&image, found.uid),
                if found.uid == 2102 {
                    "/home/proxy"
                } else if found.uid == 0 {
                    "/root"
                } else {
                    "/"
                }
            );
            let _ = std::fs::remove_dir_all(rootfs);
        }
        assert!(matches!(
            credentials(&Pod::default(), &plain, Some(&image_with_users("nobody-here").0)),
            Err(SecurityError::UnknownUser { .. })
        ));
    }

    #[test]
    fn the_init_container_gets_only_net_admin_and_net_raw_as_its_image_user() {
        let spec = container(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        });
        let found = credentials(&Pod::default(), &spec, Some(&image("65534:65534"))).unwrap();
        assert_eq!((found.uid, found.gid), (65534, 65534));
        assert_eq!(
            found.capabilities,
            Capability::CAP_NET_ADMIN.bitmask() | Capability::CAP_NET_RAW.bitmask()
        );
        assert!(found.no_new_privs);
    }

    #[test]
    fn run_as_non_root_is_verified_as_the_kubelet_does() {
        let strict = |user: Option<i64>| {
            container(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: user,
                ..SecurityContext::default()
            })
        };
        let pod = Pod::default();
        assert!(matches!(
            credentials(&pod, &strict(None), Some(&image(""))),
            Err(SecurityError::ImageRunsAsRoot { .. })
        ));
        assert!(matches!(
            credentials(&pod, &strict(Some(0)), Some(&image("2102"))),
            Err(SecurityError::RunAsUserRoot { .. })
        ));
        assert!(matches!(
            credentials(&pod, &strict(None), Some(&image("strait"))),
            Err(SecurityError::NonNumericUser { .. })
        ));
        assert!(matches!(
            credentials(&pod, &strict(None), None),
            Err(SecurityError::ImageRunsAsRoot { .. })
        ));
        let ok = credentials(&pod, &strict(Some(2102)), Some(&image(""))).unwrap();
        assert_eq!(ok.uid, 2102);
        assert!(!ok.no_new_privs);
    }

    #[test]
    fn capabilities_start_from_the_runtime_default() {
        let plain = credentials(&Pod::default(), &container(SecurityContext::default()), None).unwrap();
        assert!(has(&plain, Capability::CAP_NET_RAW) && !has(&plain, Capability::CAP_NET_ADMIN));
        let dropped = container(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["CAP_SYS_ADMIN".into()]),
                drop: Some(vec!["net_raw".into()]),
            }),
            ..SecurityContext::default()
        });
        let found = credentials(&Pod::default(), &dropped, None).unwrap();
        assert!(has(&found, Capability::CAP_SYS_ADMIN) && !has(&found, Capability::CAP_NET_RAW));
        let unknown = container(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["FLY".into()]),
                drop: None,
            }),
            ..SecurityContext::default()
        });
        assert!(matches!(
            credentials(&Pod::default(), &unknown, None),
            Err(SecurityError::UnknownCapability { .. })
        ));
    }
}
