//! strait's container images: what `make images` writes, read with skopeo
//! (user, entrypoint, labels, licence, no shell in the proxy), and the lab
//! running strait's containers from them as a runtime would: inside each
//! image's root filesystem and as its user, strait-init as a non-root user
//! granted only NET_ADMIN and NET_RAW (nft and legacy, install and cleanup),
//! and a missing image reported with the command that builds it.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::Lab;

const IMAGES: [(&str, &str, &str); 4] = [
    ("strait-proxy", "2102:2102", "/usr/local/bin/strait-proxy"),
    ("strait-init", "65534:65534", "/usr/local/bin/strait-init"),
    ("strait-injector", "2103:2103", "/usr/local/bin/strait-injector"),
    ("strait-cni", "65534:65534", "/usr/local/bin/strait-cni"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's appVersion: every image's tag.
fn version() -> String {
    let chart = std::fs::read_to_string(repo().join("charts/strait/Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap()
}

fn archive(image: &str, kind: &str) -> PathBuf {
    repo()
        .join("target/images")
        .join(format!("{image}-{}.{kind}.tar", version()))
}

/// `None` (after saying so) when the images are not built here; CI builds
/// them (`make test` runs `make images` first), so there they must exist.
fn require_images(test: &str) -> Option<()> {
    let built = IMAGES.iter().all(|(image, ..)| archive(image, "oci").exists());
    support::require(
        test,
        built,
        "needs the images in target/images (`make images` builds them)",
    )
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path in the image's layers, as `tar -t` lists it (no leading `./`).
fn files(oci_archive: &Path) -> BTreeSet<String> {
    let dir = tempdir("layers");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci-archive:{}", oci_archive.display()),
            &format!("dir:{}", dir.display()),
        ],
    );
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut files = BTreeSet::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = dir.join(digest.trim_start_matches("sha256:"));
        for line in run("tar", &["-tzf", &blob.display().to_string()]).lines() {
            files.insert(line.trim_start_matches("./").trim_end_matches('/').to_string());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    files
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-images-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn each_image_holds_its_binary_user_labels_and_licence_and_the_proxy_no_shell() {
    let Some(()) = require_images("each_image_holds_its_binary_user_labels_and_licence_and_the_proxy_no_shell") else {
        return;
    };
    let version = version();
    for (image, user, entrypoint) in IMAGES {
        let oci = archive(image, "oci");
        let config: Value = serde_json::from_str(&run(
            "skopeo",
            &["inspect", "--config", &format!("oci-archive:{}", oci.display())],
        ))
        .unwrap();
        let config = &config["config"];
        assert_eq!(config["User"], user, "{image}: user");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{image}: entrypoint"
        );
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], version.as_str(), "{image}");
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0", "{image}");
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://")),
            "{image}: {labels}"
        );
        let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
        assert!(revision.len() >= 40, "{image}: revision {revision:?}");

        // The docker archive carries the reference the chart installs.
        let docker = archive(image, "docker");
        let manifest: Value =
            serde_json::from_str(&run("tar", &["-xOf", &docker.display().to_string(), "manifest.json"])).unwrap();
        let tag = format!("ghcr.io/strait-mesh/{image}:{version}");
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!([tag]), "{image}");

        let files = files(&oci);
        assert!(
            files.contains(entrypoint.trim_start_matches('/')),
            "{image}: no {entrypoint}"
        );
        assert!(files.contains("usr/share/doc/strait/LICENSE"), "{image}: no licence");
        if image == "strait-proxy" || image == "strait-cni" {
            let unwanted: Vec<&String> = files
                .iter()
                .filter(|f| {
                    let name = f.rsplit('/').next().unwrap_or_default();
                    ["sh", "bash", "dash", "busybox", "dpkg", "apt", "apt-get"].contains(&name)
                })
                .collect();
            assert!(unwanted.is_empty(), "the {image} image holds {unwanted:?}");
        }
        if image == "strait-cni" {
            // Static: it runs under the nodes' own C libraries.
            let libraries: Vec<&String> = files.iter().filter(|f| f.contains(".so")).collect();
            assert!(libraries.is_empty(), "the strait-cni image holds {libraries:?}");
        }
        if image == "strait-init" {
            for tool in ["iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-save"] {
                assert!(files.contains(&format!("usr/sbin/{tool}")), "strait-init: no {tool}");
            }
        }
    }
}

/// (device, inode) of a directory.
fn identity(path: &str) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.dev(), meta.ino())
}

/// Pods (in an unmeshed namespace) that run strait-init from its image with
/// the security context the injector gives it, once per backend, and once
/// more followed by `--cleanup`.
fn init_pods(version: &str) -> String {
    let context = "{runAsUser: 65534, runAsGroup: 65534, runAsNonRoot: true, allowPrivilegeEscalation: false, \
         readOnlyRootFilesystem: true, capabilities: {add: [NET_ADMIN, NET_RAW], drop: [ALL]}}";
    let init = |name: &str, mode: &str, args: &str| {
        format!(
            "    - name: {name}\n      image: ghcr.io/strait-mesh/strait-init:{version}\n      args: {args}\n      \
             env: [{{name: STRAIT_IPTABLES_MODE, value: {mode}}}, {{name: STRAIT_PROXY_UID, value: \"2102\"}}]\n      \
             securityContext: {context}\n      volumeMounts: [{{name: run, mountPath: /run}}]\n"
        )
    };
    let mut text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: initcheck}\n".to_string();
    for mode in ["nft", "legacy"] {
        for cleanup in [false, true] {
            let name = if cleanup {
                format!("{mode}-cleanup")
            } else {
                mode.to_string()
            };
            let mut inits = init("install", mode, "[]");
            if cleanup {
                inits.push_str(&init("cleanup", mode, "[--cleanup]"));
            }
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: initcheck}}\nspec:\n  \
                 volumes: [{{name: run, emptyDir: {{}}}}]\n  initContainers:\n{inits}  containers:\n    \
                 - {{name: app, image: lab-app, command: [sleep, infinity]}}\n"
            ));
        }
    }
    text
}

/// A pod whose strait-init lacks NET_ADMIN, and one whose image was never
/// built: neither can become ready.
fn failing_pods(version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: failing}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: no-net-admin, namespace: failing}}\nspec:\n  \
         volumes: [{{name: run, emptyDir: {{}}}}]\n  initContainers:\n  \
         - name: install\n    image: ghcr.io/strait-mesh/strait-init:{version}\n    \
         env: [{{name: STRAIT_IPTABLES_MODE, value: nft}}]\n    \
         securityContext: {{runAsUser: 65534, runAsNonRoot: true, allowPrivilegeEscalation: false, \
         capabilities: {{add: [NET_RAW], drop: [ALL]}}}}\n    volumeMounts: [{{name: run, mountPath: /run}}]\n  \
         containers:\n  - {{name: app, image: lab-app, command: [sleep, infinity]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: not-built, namespace: failing}}\nspec:\n  \
         containers:\n  - {{name: proxy, image: ghcr.io/strait-mesh/strait-proxy:0.0.0-never-built}}\n"
    )
}

fn nat_rules(lab: &Lab, pod: &str, backend: &str) -> String {
    run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.netns(pod),
            &format!("iptables-{backend}-save"),
            "-t",
            "nat",
        ],
    )
}

#[test]
fn the_lab_runs_strait_from_its_images_as_a_container_runtime_would() {
    let test = "the_lab_runs_strait_from_its_images_as_a_container_runtime_would";
    let Some(()) = require_images(test) else { return };
    let Some(lab) = Lab::up("images", &["tcp-echo.yaml"]) else {
        return;
    };
    let version = version();

    // A meshed pod's proxy runs inside the proxy image's root, as 2102, with
    // no capabilities; its status names the image digest it runs.
    let echo = lab.pod("mesh", "echo-");
    let proxy = lab.container_pid(&echo, "strait-proxy");
    let root = format!("/proc/{proxy}/root");
    assert_ne!(identity(&root), identity("/"), "the proxy runs in the host's root");
    assert!(Path::new(&format!("{root}/usr/local/bin/strait-proxy")).exists());
    assert!(!Path::new(&format!("{root}/usr/bin/sh")).exists() && !Path::new(&format!("{root}/bin/sh")).exists());
    assert_eq!(support::proc_status(proxy, "Uid"), "2102");
    assert_eq!(support::proc_status(proxy, "Gid"), "2102");
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            support::proc_status(proxy, set),
            "0000000000000000",
            "{set} of the proxy"
        );
    }
    assert_eq!(support::proc_status(proxy, "NoNewPrivs"), "1");
    // Its root is read-only (readOnlyRootFilesystem).
    assert!(std::fs::write(format!("{root}/usr/local/bin/probe"), b"x").is_err());
    let (namespace, name) = echo.split_once('/').unwrap();
    let status = lab.status();
    let pod = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == namespace)
        .unwrap()
        .clone();
    let image_id = |list: &str, container: &str| {
        pod["status"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container)
            .map(|c| c["imageID"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    let proxy_digest = run(
        "skopeo",
        &[
            "inspect",
            "--format",
            "{{.Digest}}",
            &format!("oci-archive:{}", archive("strait-proxy", "oci").display()),
        ],
    );
    let native = pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "strait-proxy"));
    let list = if native {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    assert_eq!(
        image_id(list, "strait-proxy"),
        format!("ghcr.io/strait-mesh/strait-proxy@{}", proxy_digest.trim())
    );
    assert!(image_id("initContainerStatuses", "strait-init").starts_with("ghcr.io/strait-mesh/strait-init@sha256:"));

    // The injected strait-init ran in its image's root (the mount namespace
    // its container's processes entered) as 65534 with NET_ADMIN and NET_RAW
    // only, and its rules are in place.
    let dir = lab.pod_dir(&echo).display().to_string();
    let holder = std::fs::read_to_string(format!("{dir}/strait-init.holder.pid")).unwrap();
    let init_root = format!("/proc/{}/root", holder.trim());
    assert_ne!(identity(&init_root), identity("/"));
    assert!(Path::new(&format!("{init_root}/usr/sbin/xtables-legacy-multi")).exists());
    let process: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/strait-init.process.json")).unwrap()).unwrap();
    let credentials = &process["credentials"];
    assert_eq!(
        (credentials["uid"].as_u64(), credentials["gid"].as_u64()),
        (Some(65534), Some(65534))
    );
    assert_eq!(credentials["capabilities"].as_u64(), Some((1 << 12) | (1 << 13)));
    assert_eq!(credentials["no_new_privs"], true);
    assert!(nat_rules(&lab, &echo, "nft").contains("-A STRAIT_OUTPUT"));

    // strait-init from its image, non-root with only NET_ADMIN and NET_RAW,
    // installs and cleans up its rules with both backends.
    let manifests = tempdir("manifests");
    let init_manifest = manifests.join("init.yaml");
    std::fs::write(&init_manifest, init_pods(&version)).unwrap();
    lab.cli_ok(&["up", "-f", &init_manifest.display().to_string()]);
    for backend in ["nft", "legacy"] {
        let installed = nat_rules(&lab, &format!("initcheck/{backend}"), backend);
        assert!(
            installed.contains("-A STRAIT_OUTPUT -m owner --uid-owner 2102 -j RETURN"),
            "{backend}: {installed}"
        );
        let cleaned = nat_rules(&lab, &format!("initcheck/{backend}-cleanup"), backend);
        assert!(!cleaned.contains("STRAIT_"), "{backend} after --cleanup: {cleaned}");
    }

    // Without NET_ADMIN the same container fails (the runtime grants only
    // what the spec asks), and a pod whose image was never built says which
    // command builds it.
    let failing_manifest = manifests.join("failing.yaml");
    std::fs::write(&failing_manifest, failing_pods(&version)).unwrap();
    let out = lab.cli(&["up", "--timeout", "15s", "-f", &failing_manifest.display().to_string()]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the failing pods became ready");
    assert!(
        said.contains("make images"),
        "the missing image is not named with its remedy: {said}"
    );
    assert!(said.contains("0.0.0-never-built"), "{said}");
    // Its file capabilities ask for more than the bounding set holds, so the
    // kernel refuses to run it at all, as under runc.
    let refused = said
        .lines()
        .find(|line| line.contains("failing/no-net-admin"))
        .unwrap_or_default();
    assert!(
        refused.contains("/usr/local/bin/strait-init") && refused.contains("not permitted"),
        "strait-init without NET_ADMIN: {said}"
    );
    let _ = std::fs::remove_dir_all(&manifests);
}
