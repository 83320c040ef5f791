//! The node's images, as a container runtime keeps them. strait's own images
//! come from the lab's registry: the OCI archives `make images` writes to
//! `target/images/` (`<name>-<tag>.oci.tar`, holding the reference
//! `<registry>/<name>:<tag>`). Pulling copies an image into the node's one OCI
//! image layout (skopeo), and the first container of each manifest digest
//! unpacks its layers into a root filesystem (umoci), shared read-only by
//! every container of that image. Images the lab cannot have (the test
//! applications') are not pulled: their containers run local programs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use tokio::sync::Mutex;

/// Where the lab's registry is, instead of `target/images` of the source tree.
pub const IMAGES_ENV: &str = "STRAIT_LAB_IMAGES";
/// The repositories the lab must run from images: strait's own components.
pub const STRAIT_IMAGES: [&str; 4] = ["strait-proxy", "strait-init", "strait-injector", "strait-cni"];
/// The OCI annotation that names an image in a layout's index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference} is not in the lab's registry {registry}: build strait's images with `make images`")]
    NotBuilt { reference: String, registry: String },
    #[error("image {reference} from {archive}: {problem}")]
    Pull {
        reference: String,
        archive: String,
        problem: String,
    },
    #[error("Container image \"{reference}\" is not present with pull policy of Never")]
    NeverPull { reference: String },
    #[error("image {reference}: its digest is {found}, not the {wanted} the reference asks for")]
    DigestMismatch {
        reference: String,
        found: String,
        wanted: String,
    },
    #[error("image {reference}: cannot read its {what} in {layout}: {source}")]
    Layout {
        reference: String,
        what: &'static str,
        layout: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("image {reference}: unpacking into {bundle}: {problem}")]
    Unpack {
        reference: String,
        bundle: String,
        problem: String,
    },
}

impl ImageError {
    /// The container's waiting reason, as the kubelet reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// When the kubelet pulls (`imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The container's policy, defaulted as the API server defaults it:
    /// `Always` for `:latest` or no tag (without a digest), else
    /// `IfNotPresent`.
    pub fn of(policy: Option<&str>, reference: &Reference) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some(_) => PullPolicy::IfNotPresent,
            None if reference.digest.is_none() && reference.tag.as_deref() == Some("latest") => PullPolicy::Always,
            None => PullPolicy::IfNotPresent,
        }
    }
}

/// A reference split as a runtime resolves it:
/// `[registry/]path/name[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Everything before the tag and digest.
    pub repository: String,
    /// The tag given, if any (`latest` is implied only without a digest).
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> Reference {
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.to_string())),
            None => (text, None),
        };
        // A colon after the last slash starts the tag (one before it is a port).
        let slash = rest.rfind('/').map_or(0, |at| at + 1);
        let (repository, tag) = match rest[slash..].find(':') {
            Some(at) => (&rest[..slash + at], Some(rest[slash + at + 1..].to_string())),
            None => (rest, None),
        };
        let tag = tag.or_else(|| digest.is_none().then(|| "latest".to_string()));
        Reference {
            repository: repository.to_string(),
            tag,
            digest,
        }
    }

    /// The last path element: `strait-proxy` of `ghcr.io/strait-mesh/strait-proxy`.
    pub fn name(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or(&self.repository)
    }

    /// The name the image carries in an OCI layout: `repository:tag`, or
    /// `repository@digest` for a reference by digest alone.
    pub fn layout_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}:{tag}", self.repository),
            (None, Some(digest)) => format!("{}@{digest}", self.repository),
            (None, None) => format!("{}:latest", self.repository),
        }
    }

    /// Whether the lab must run it from an image (one of strait's own).
    pub fn is_strait(&self) -> bool {
        STRAIT_IMAGES.contains(&self.name())
    }
}

/// What an image says about how to run it (its OCI config), with the
/// Kubernetes names: `entrypoint` is what `command` replaces, `cmd` what
/// `args` replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` pairs, split.
    pub env: Vec<(String, String)>,
    /// `uid[:gid]` or a name, as the image's `USER` says; empty is root.
    pub user: String,
    pub working_dir: String,
}

/// A pulled and unpacked image.
#[derive(Clone, Debug)]
pub struct Image {
    pub reference: String,
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
    pub config: ImageConfig,
    /// Its unpacked root filesystem: the lower layer of every container's.
    pub rootfs: PathBuf,
}

impl Image {
    /// What Kubernetes reports as a container's `imageID`:
    /// `<repository>@<digest>`.
    pub fn id(&self) -> String {
        format!("{}@{}", Reference::parse(&self.reference).repository, self.digest)
    }
}

/// The node's images: the registry they come from and the layout and root
/// filesystems they go to.
pub struct ImageStore {
    dirs: Arc<Dirs>,
    /// Pulls and unpacks one at a time (skopeo and umoci each rewrite the
    /// layout's index); the map keeps what was pulled, by reference.
    pulled: Mutex<HashMap<String, Arc<Image>>>,
}

/// The registry: `STRAIT_LAB_IMAGES`, else `target/images` of the source tree
/// the lab was built from.
pub fn registry() -> PathBuf {
    std::env::var_os(IMAGES_ENV).map(PathBuf::from).unwrap_or_else(|| {
        crate::paths::bin_dir()
            .ancestors()
            .nth(2)
            .map(|tree| tree.join("target/images"))
            .unwrap_or_else(|| PathBuf::from("target/images"))
    })
}

/// Runs a tool; its standard output, or what it said when it failed.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (scripts/deps.sh installs it)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (pair.clone(), String::new()),
        })
        .collect()
}

impl ImageStore {
    /// A store under `dir` (the lab's state), pulling from `registry`.
    pub fn new(dir: &Path, registry: PathBuf) -> ImageStore {
        ImageStore {
            dirs: Arc::new(Dirs {
                registry,
                layout: dir.join("layout"),
                bundles: dir.join("bundles"),
            }),
            pulled: Mutex::new(HashMap::new()),
        }
    }

    /// The image for `reference`, pulled and unpacked as `policy` says:
    /// `Always` pulls again, `IfNotPresent` when the node has none,
    /// `Never` only takes what the node has.
    pub async fn pull(&self, reference: &str, policy: PullPolicy) -> Result<Arc<Image>, ImageError> {
        let mut pulled = self.pulled.lock().await;
        match (policy, pulled.get(reference)) {
            (PullPolicy::IfNotPresent | PullPolicy::Never, Some(image)) => return Ok(image.clone()),
            (PullPolicy::Never, None) => {
                return Err(ImageError::NeverPull {
                    reference: reference.to_string(),
                });
            }
            _ => {}
        }
        let (dirs, owned) = (self.dirs.clone(), reference.to_string());
        let image = tokio::task::spawn_blocking(move || dirs.pull(&owned))
            .await
            .unwrap_or_else(|join| {
                Err(ImageError::Pull {
                    reference: reference.to_string(),
                    archive: String::new(),
                    problem: join.to_string(),
                })
            })?;
        let image = Arc::new(image);
        pulled.insert(reference.to_string(), image.clone());
        Ok(image)
    }
}

/// Where images come from (the registry) and go to (the layout, and a bundle
/// per digest with its root filesystem).
struct Dirs {
    registry: PathBuf,
    layout: PathBuf,
    bundles: PathBuf,
}

impl Dirs {
    /// The archive that holds `reference`: `<name>-<tag>.oci.tar`, or for a
    /// reference by digest alone, whichever `<name>-*.oci.tar` has that
    /// digest.
    fn archive(&self, text: &str, reference: &Reference) -> Result<PathBuf, ImageError> {
        let not_built = || ImageError::NotBuilt {
            reference: text.to_string(),
            registry: self.registry.display().to_string(),
        };
        let name = reference.name();
        if let Some(tag) = &reference.tag {
            let archive = self.registry.join(format!("{name}-{tag}.oci.tar"));
            return if archive.exists() {
                Ok(archive)
            } else {
                Err(not_built())
            };
        }
        let wanted = reference.digest.as_deref().unwrap_or_default();
        let prefix = format!("{name}-");
        let entries = std::fs::read_dir(&self.registry).map_err(|_| not_built())?;
        entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".oci.tar"))
            })
            .find(|path| {
                let source = format!("oci-archive:{}", path.display());
                output("skopeo", &["inspect", "--format", "{{.Digest}}", &source])
                    .is_ok_and(|digest| digest.trim() == wanted)
            })
            .ok_or_else(not_built)
    }

    fn pull(&self, text: &str) -> Result<Image, ImageError> {
        let reference = Reference::parse(text);
        let archive = self.archive(text, &reference)?;
        let name = reference.layout_name();
        let pull_error = |problem: String| ImageError::Pull {
            reference: text.to_string(),
            archive: archive.display().to_string(),
            problem,
        };
        std::fs::create_dir_all(&self.bundles).map_err(|e| pull_error(e.to_string()))?;
        // An archive found by digest holds one image; by tag, the one named so.
        let from = match &reference.tag {
            Some(_) => format!("oci-archive:{}:{name}", archive.display()),
            None => format!("oci-archive:{}", archive.display()),
        };
        let to = format!("oci:{}:{name}", self.layout.display());
        output("skopeo", &["copy", "--quiet", &from, &to]).map_err(pull_error)?;
        let (digest, config) = self.read_config(text, &name)?;
        if let Some(wanted) = reference.digest.filter(|wanted| *wanted != digest) {
            return Err(ImageError::DigestMismatch {
                reference: text.to_string(),
                found: digest,
                wanted,
            });
        }
        let rootfs = self.unpack(text, &name, &digest)?;
        Ok(Image {
            reference: text.to_string(),
            digest,
            config,
            rootfs,
        })
    }

    /// The manifest digest and config of the image named `tagged` in the layout.
    fn read_config(&self, reference: &str, tagged: &str) -> Result<(String, ImageConfig), ImageError> {
        let layout_error = |what: &'static str| {
            let layout = self.layout.display().to_string();
            move |source| ImageError::Layout {
                reference: reference.to_string(),
                what,
                layout,
                source,
            }
        };
        let index = ImageIndex::from_file(self.layout.join("index.json")).map_err(layout_error("index"))?;
        let descriptor = index
            .manifests()
            .iter()
            .rev()
            .find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|name| name == tagged)
            })
            .ok_or_else(|| ImageError::Pull {
                reference: reference.to_string(),
                archive: self.layout.display().to_string(),
                problem: format!("the layout's index names no {tagged}"),
            })?;
        let blob = |digest: &oci_spec::image::Digest| {
            self.layout
                .join("blobs")
                .join(digest.algorithm().to_string())
                .join(digest.digest())
        };
        let manifest = ImageManifest::from_file(blob(descriptor.digest())).map_err(layout_error("manifest"))?;
        let image = ImageConfiguration::from_file(blob(manifest.config().digest())).map_err(layout_error("config"))?;
        let config = image.config().clone().unwrap_or_default();
        let config = ImageConfig {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: env_pairs(&config.env().clone().unwrap_or_default()),
            user: config.user().clone().unwrap_or_default(),
            working_dir: config.working_dir().clone().unwrap_or_default(),
        };
        Ok((descriptor.digest().to_string(), config))
    }

    /// Unpacks the image once per digest; later containers share it.
    fn unpack(&self, reference: &str, tagged: &str, digest: &str) -> Result<PathBuf, ImageError> {
        let bundle = self.bundles.join(digest.replace(':', "-"));
        let rootfs = bundle.join("rootfs");
        if rootfs.is_dir() {
            return Ok(rootfs);
        }
        let unpack_error = |problem: String| ImageError::Unpack {
            reference: reference.to_string(),
            bundle: bundle.display().to_string(),
            problem,
        };
        let partial = bundle.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let image = format!("{}:{tagged}", self.layout.display());
        let partial_text = partial.display().to_string();
        output("umoci", &["unpack", "--image", &image, &partial_text]).map_err(unpack_error)?;
        std::fs::rename(&partial, &bundle).map_err(|e| unpack_error(e.to_string()))?;
        Ok(rootfs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_as_a_runtime_splits_them() {
        let cases = [
            (
                "ghcr.io/strait-mesh/strait-proxy:0.1.0",
                "ghcr.io/strait-mesh/strait-proxy",
                Some("0.1.0"),
                None,
            ),
            (
                "localhost:5000/strait-init",
                "localhost:5000/strait-init",
                Some("latest"),
                None,
            ),
            ("strait-proxy@sha256:ab", "strait-proxy", None, Some("sha256:ab")),
            (
                "r.io:443/a/strait-cni:1@sha256:cd",
                "r.io:443/a/strait-cni",
                Some("1"),
                Some("sha256:cd"),
            ),
        ];
        for (text, repository, tag, digest) in cases {
            let reference = Reference::parse(text);
            assert_eq!(reference.repository, repository, "{text}");
            assert_eq!(reference.tag.as_deref(), tag, "{text}");
            assert_eq!(reference.digest.as_deref(), digest, "{text}");
            assert!(reference.is_strait(), "{text}");
        }
        assert!(!Reference::parse("lab-app").is_strait());
        assert_eq!(Reference::parse("a/b/strait-proxy:2").name(), "strait-proxy");
        assert_eq!(Reference::parse("p@sha256:ab").layout_name(), "p@sha256:ab");
    }

    #[test]
    fn pull_policies_default_as_the_api_server_defaults_them() {
        let policy = |policy: Option<&str>, text: &str| PullPolicy::of(policy, &Reference::parse(text));
        assert_eq!(policy(None, "strait-proxy"), PullPolicy::Always);
        assert_eq!(policy(None, "strait-proxy:latest"), PullPolicy::Always);
        assert_eq!(policy(None, "strait-proxy:0.1.0"), PullPolicy::IfNotPresent);
        assert_eq!(policy(None, "strait-proxy@sha256:ab"), PullPolicy::IfNotPresent);
        assert_eq!(policy(Some("Never"), "strait-proxy"), PullPolicy::Never);
        assert_eq!(policy(Some("IfNotPresent"), "strait-proxy"), PullPolicy::IfNotPresent);
    }
}
