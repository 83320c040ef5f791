//! The Helm chart: lint-clean, and every object it renders (with default
//! and with non-default values) valid against the Kubernetes schemas, as
//! are the outputs of the offline `inject` command. Needs helm and
//! kubernetes-validate (scripts/deps.sh installs both); skips loudly
//! without them, never under STRAIT_CI.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use strait_contract::limits::Limits;
use strait_injector::settings::InjectSettings;

fn source_tree() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tool(name: &str, local: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(local) = local.filter(|p| p.exists()) {
        return Some(local);
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    found
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
}

fn tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let helm = tool("helm", Some(source_tree().join(".tools/bin/helm")));
    let validate = tool("kubernetes-validate", None);
    match (helm, validate) {
        (Some(helm), Some(validate)) => Some((helm, validate)),
        _ => {
            assert!(
                std::env::var_os("STRAIT_CI").is_none(),
                "STRAIT_CI is set but helm or kubernetes-validate is missing"
            );
            eprintln!("SKIPPED: {test} needs helm and kubernetes-validate (scripts/deps.sh installs them)");
            None
        }
    }
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Validates a multi-document YAML text strictly; only kinds Kubernetes
/// has no schema for (cert-manager's, the Prometheus Operator's) may warn.
fn validate(validator: &Path, yaml: &str, what: &str) {
    let file = std::env::temp_dir().join(format!(
        "strait-validate-{}-{}.yaml",
        std::process::id(),
        what.replace(' ', "-")
    ));
    std::fs::write(&file, yaml).unwrap();
    let output = run(validator, &["--strict", "-k", "1.35.0", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what}: not valid:\n{text}");
    for line in text.lines().filter(|l| !l.contains(" passed for resource ")) {
        let known_crd = line.contains("cert-manager.io/v1") || line.contains("monitoring.coreos.com/v1");
        assert!(known_crd && line.starts_with("WARN"), "{what}: {line}");
    }
    assert!(
        text.contains(" passed for resource "),
        "{what}: nothing was validated:\n{text}"
    );
}

fn template(helm: &Path, values: &[&str]) -> String {
    let chart = source_tree().join("charts/strait");
    let mut args = vec![
        "template",
        "strait",
        chart.to_str().unwrap(),
        "--namespace",
        "strait-system",
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    ok(&run(helm, &args), "helm template")
}

#[test]
fn helm_lint_is_clean() {
    let Some((helm, _)) = tools("helm_lint_is_clean") else {
        return;
    };
    let chart = source_tree().join("charts/strait");
    let out = ok(&run(&helm, &["lint", "--strict", chart.to_str().unwrap()]), "helm lint");
    assert!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "{out}");
}

#[test]
fn rendered_objects_are_valid_with_default_and_other_values() {
    let Some((helm, validator)) = tools("rendered_objects_are_valid") else {
        return;
    };
    let defaults = template(&helm, &[]);
    validate(&validator, &defaults, "default values");
    for kind in [
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "ClusterRole",
        "Role",
        "Service",
    ] {
        assert!(defaults.contains(&format!("kind: {kind}\n")), "no {kind} rendered");
    }
    let others = template(
        &helm,
        &[
            "injector.replicas=3",
            "webhook.failurePolicy=Fail",
            "webhook.certManager.enabled=true",
            "webhook.excludedNamespaces={monitoring,ingress}",
            "proxy.nativeSidecar=false",
            "proxy.inboundMode=strict",
            "identity.trustDomain=example.org",
            "image.tag=1.2.3",
            "injector.podDisruptionBudget.enabled=false",
            "metrics.podMonitor.enabled=true",
            "metrics.dashboard.enabled=true",
            "proxy.limits.maxConnections=2000",
            "proxy.limits.idleTimeout=10m",
            "clusterDomain=corp.example",
            "logFormat=json",
        ],
    );
    validate(&validator, &others, "other values");
    assert!(others.contains("failurePolicy: Fail") && others.contains("cert-manager.io/inject-ca-from"));
    assert!(!others.contains("kind: PodDisruptionBudget"));
    assert!(others.contains("strait-identity.strait-system.svc.corp.example:8083"));
    let cni = template(&helm, &["cni.enabled=true", "cni.confFile=10-calico.conflist"]);
    validate(&validator, &cni, "CNI mode");
    assert!(cni.contains("kind: DaemonSet\n") && cni.contains("\"--conf-file\",\"10-calico.conflist\""));
    assert!(cni.contains("name: STRAIT_CNI, value: \"true\""));
    assert!(!defaults.contains("kind: DaemonSet\n"), "CNI mode is off by default");
    assert!(!others.contains("cluster.local:8083") && !others.contains("svc.cluster.local,"));

    assert!(
        defaults.contains("- cert-manager\n"),
        "cert-manager's namespace is excluded by default"
    );
    let ha = template(&helm, &["highAvailability=true"]);
    validate(&validator, &ha, "highAvailability");
    for wanted in [
        "replicas: 3\n",
        "failurePolicy: Fail\n",
        "kind: PodDisruptionBudget\n",
        "topologyKey: topology.kubernetes.io/zone",
        "topologyKey: kubernetes.io/hostname",
        "maxUnavailable: 0}",
    ] {
        assert!(ha.contains(wanted), "highAvailability renders no {wanted:?}");
    }

    // The injector reads the rendered settings, and the proxy limits among
    // them are the ones set.
    let settings = injector_settings(&defaults);
    assert_eq!(settings.proxy_limits, Limits::default());
    let settings = injector_settings(&others);
    assert_eq!(settings.proxy_limits.max_connections, 2000);
    assert_eq!(settings.proxy_limits.idle_timeout, std::time::Duration::from_secs(600));
    assert!(!settings.native_sidecar);
    assert_eq!(settings.log_format, strait_contract::logging::LogFormat::Json);
}

/// The settings the injector takes from the environment the chart gives its
/// Deployment (but the trust anchors, a file only a cluster has).
fn injector_settings(rendered: &str) -> InjectSettings {
    let deployment = serde_yaml::Deserializer::from_str(rendered)
        .map(|document| serde_yaml::Value::deserialize(document).unwrap())
        .find(|object| object["kind"] == "Deployment" && object["metadata"]["name"] == "strait-injector")
        .expect("the injector's Deployment is rendered");
    let env: HashMap<String, String> = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|var| Some((var["name"].as_str()?.to_string(), var["value"].as_str()?.to_string())))
        .filter(|(name, _)| name != "STRAIT_TRUST_ANCHORS_FILE")
        .collect();
    InjectSettings::from_env(|name| env.get(name).cloned()).unwrap()
}

#[test]
fn rendering_is_the_same_every_time_and_part_of_the_identity_material_is_refused() {
    let Some((helm, _)) = tools("rendering_is_the_same_every_time") else {
        return;
    };
    let chart = source_tree().join("charts/strait");
    let chart = chart.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("strait-chart-{}", std::process::id()));
    let injector = Path::new(env!("CARGO_BIN_EXE_strait-lab")).with_file_name("strait-injector");
    ok(
        &run(&injector, &["ca", "generate", "--out", dir.to_str().unwrap()]),
        "strait-injector ca generate",
    );
    let file = |name: &str| dir.join(name).display().to_string();
    let supplied = [
        format!("identity.trustAnchorsPEM={}", file("ca.crt")),
        format!("identity.issuer.certPEM={}", file("issuer.crt")),
        format!("identity.issuer.keyPEM={}", file("issuer.key")),
    ];
    let render = |set_files: &[String], sets: &[&str]| {
        let mut args = vec!["template", "strait", chart, "--namespace", "strait-system"];
        for value in set_files {
            args.extend(["--set-file", value]);
        }
        for value in sets {
            args.extend(["--set", value]);
        }
        run(&helm, &args)
    };
    let every_option = [
        "injector.replicas=3",
        "webhook.failurePolicy=Fail",
        "webhook.certManager.enabled=true",
        "metrics.podMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
        "proxy.nativeSidecar=false",
    ];
    for (what, set_files, sets) in [
        ("default values", &[][..], &[][..]),
        (
            "every option, with the user's identity material",
            &supplied[..],
            &every_option[..],
        ),
    ] {
        let first = ok(&render(set_files, sets), what);
        let second = ok(&render(set_files, sets), what);
        assert!(first == second, "{what}: two renders differ");
        assert!(!first.contains("caBundle:"), "{what}: the chart renders a caBundle");
    }
    let with_material = ok(&render(&supplied, &[]), "identity material");
    assert!(
        with_material.contains("name: strait-identity-issuer") && !with_material.contains("STRAIT_IDENTITY_SECRET")
    );
    let defaults = ok(&render(&[], &[]), "defaults");
    assert!(!defaults.contains("kind: Secret") && defaults.contains("STRAIT_IDENTITY_SECRET"));
    // Changed identity material restarts the control plane, which reads it at start.
    let checksum = |rendered: &str| {
        rendered
            .lines()
            .find(|line| line.trim_start().starts_with("checksum/identity:"))
            .unwrap()
            .to_string()
    };
    assert_ne!(checksum(&with_material), checksum(&defaults));
    let blank = ok(&render(&[], &["identity.trustAnchorsPEM= "]), "blank anchors");
    assert!(
        blank.contains("STRAIT_IDENTITY_SECRET"),
        "whitespace is no identity material"
    );

    for partial in [&supplied[..1], &supplied[1..]] {
        let out = render(partial, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{partial:?} was accepted");
        assert!(
            stderr.contains("supply all of") && stderr.contains("missing: identity."),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn values_outside_the_schema_are_refused() {
    let Some((helm, _)) = tools("values_outside_the_schema_are_refused") else {
        return;
    };
    let chart = source_tree().join("charts/strait");
    for bad in [
        "webhook.failurePolicy=Sometimes",
        "injector.replicas=0",
        "proxy.inboundMode=paranoid",
        "proxy.limits.maxConnections=0",
        "proxy.limits.idleTimeout=forever",
        "unknown=1",
        // Each of these passed the schema and broke every meshed pod, or
        // the control plane, at run time.
        "injector.resources.requests.cpu=1.2.3",
        "proxy.resources.limits.memory=12XB",
        "identity.certLifetime=0s",
        "image.registry=registry.example.com/strait/",
        "injector.logLevel=verbose",
        "proxy.logLevel=infoo",
        "injector.podDisruptionBudget.maxUnavailable=foo",
        "clusterDomain=Cluster_Local",
        "cni.binDir=opt/cni/bin",
        "cni.enabled=true,proxy.nativeSidecar=false",
        "cni.confFile=../etc/passwd",
    ] {
        let out = run(&helm, &["template", "strait", chart.to_str().unwrap(), "--set", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
    }
    // And valid values that were refused.
    for good in [
        "proxy.resources.limits.memory=1Pi",
        "proxy.resources.requests.cpu=1e3",
        "identity.certLifetime=1h30m",
        "proxy.limits.idleTimeout=2h",
        "injector.logLevel=info\\,strait_injector=debug",
        "injector.podDisruptionBudget.maxUnavailable=50%",
        "image.registry=localhost:5000/strait",
    ] {
        let out = run(&helm, &["template", "strait", chart.to_str().unwrap(), "--set", good]);
        assert!(out.status.success(), "{good}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn injected_manifests_are_valid() {
    let Some((_, validator)) = tools("injected_manifests_are_valid") else {
        return;
    };
    let injector = Path::new(env!("CARGO_BIN_EXE_strait-lab")).with_file_name("strait-injector");
    for manifest in ["grpc.yaml", "injection.yaml", "protocols.yaml"] {
        let path = source_tree().join("tests/manifests").join(manifest);
        let anchors = source_tree().join("injector/tests/fixtures/anchors.pem");
        let injected = ok(
            &run(
                &injector,
                &[
                    "inject",
                    "--trust-anchors",
                    anchors.to_str().unwrap(),
                    "-f",
                    path.to_str().unwrap(),
                ],
            ),
            "strait-injector inject",
        );
        assert!(injected.contains("name: strait-proxy"), "{manifest} was not injected");
        validate(&validator, &injected, manifest);
    }
}
