use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;

fn settings() -> InjectSettings {
    InjectSettings {
        trust_anchors_pem: "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n".into(),
        proxy_image: "ghcr.io/strait-mesh/strait-proxy:test".into(),
        init_image: "ghcr.io/strait-mesh/strait-init:test".into(),
        ..InjectSettings::default()
    }
}

fn golden(name: &str, actual: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/patches")
        .join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("STRAIT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with STRAIT_UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(text, expected, "patch differs from {}", path.display());
}

fn pod(extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "web:1"}]},
    });
    json_patch::merge(&mut pod, &extra);
    pod
}

/// The outcome as recorded in a golden file: the patch, or the reason to skip.
fn outcome(decision: &Decision) -> Value {
    match decision {
        Decision::Skip(reason) => json!({"skip": reason}),
        Decision::Inject { patch, warnings } => json!({"patch": patch, "warnings": warnings}),
    }
}

#[test]
fn golden_patches_for_a_table_of_pods() {
    let cases = [
        ("plain", pod(json!({})), true),
        (
            "annotated",
            pod(json!({"metadata": {"annotations": {
                "strait.io/skip-inbound-ports": "9000",
                "strait.io/skip-outbound-cidrs": "169.254.169.254",
                "strait.io/opaque-ports": "7000-7010",
                "strait.io/proxy-log-level": "debug",
                "strait.io/proxy-memory-limit": "64Mi",
                "strait.io/inbound-mode": "strict",
            }}})),
            true,
        ),
        (
            "bad-annotation",
            pod(json!({"metadata": {"annotations": {"strait.io/skip-inbound-ports": "abc"}}})),
            true,
        ),
        (
            "already-injected",
            pod(json!({"metadata": {"labels": {"strait.io/meshed": "true"}}})),
            true,
        ),
        ("host-network", pod(json!({"spec": {"hostNetwork": true}})), true),
        (
            "mtls-disabled",
            pod(json!({"metadata": {"annotations": {"strait.io/mtls": "disabled"}}})),
            true,
        ),
        (
            "opted-out",
            pod(json!({"metadata": {"annotations": {"strait.io/inject": "disabled"}}})),
            true,
        ),
        (
            "opted-in",
            pod(json!({"metadata": {"annotations": {"strait.io/inject": "enabled"}}})),
            false,
        ),
        ("namespace-off", pod(json!({})), false),
        (
            "existing-init-containers",
            pod(
                json!({"spec": {"initContainers": [{"name": "migrate", "image": "tool:1"}], "volumes": [{"name": "data", "emptyDir": {}}]}}),
            ),
            true,
        ),
        (
            "no-labels-default-sa",
            json!({"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            true,
        ),
    ];
    for (name, pod, namespace_enabled) in cases {
        golden(name, &outcome(&decide(&pod, "demo", namespace_enabled, &settings())));
    }
}

/// The pod as injected with `settings`, and the warnings.
fn injected(original: &Value, settings: &InjectSettings) -> (Value, Vec<String>) {
    let Decision::Inject { patch, warnings } = decide(original, "demo", true, settings) else {
        panic!("not injected")
    };
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
    let mut injected = original.clone();
    json_patch::patch(&mut injected, &patch.0).unwrap();
    (injected, warnings)
}

fn init_container_names(pod: &Value) -> Vec<&str> {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn the_patch_applies_and_a_second_injection_does_nothing() {
    let original = pod(json!({"spec": {"initContainers": [{"name": "migrate", "image": "tool:1"}]}}));
    let (injected, _) = injected(&original, &settings());
    assert_eq!(
        init_container_names(&injected),
        ["strait-init", "strait-proxy", "migrate"]
    );
    assert_eq!(
        injected["metadata"]["annotations"]["strait.io/identity"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(injected["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert!(matches!(
        decide(&injected, "demo", true, &settings()),
        Decision::Skip(_)
    ));
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container_and_waits() {
    let settings = InjectSettings {
        native_sidecar: false,
        ..settings()
    };
    let Decision::Inject { patch, .. } = decide(&pod(json!({})), "demo", true, &settings) else {
        panic!("not injected")
    };
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
    let mut injected = pod(json!({}));
    json_patch::patch(&mut injected, &patch.0).unwrap();
    assert_eq!(injected["spec"]["containers"][0]["name"], "strait-proxy");
    assert_eq!(
        injected["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][1],
        "wait-ready"
    );
    assert_eq!(injected["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert!(
        injected["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "STRAIT_WAIT_FOR_APP", "value": "true"})),
        "stopped with the app, the proxy serves until the app has stopped"
    );
}

#[test]
fn chart_limits_reach_every_proxy_and_bad_ones_stop_the_injector() {
    const CHART: [(&str, &str); 3] = [
        ("STRAIT_PROXY_MAX_CONNECTIONS", "2000"),
        ("STRAIT_PROXY_IDLE_TIMEOUT", "10m"),
        ("STRAIT_PROXY_DETECT_BUFFER", ""),
    ];
    let lookup = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    let settings = InjectSettings::from_env(lookup(&CHART)).unwrap();
    let Decision::Inject { patch, .. } = decide(&pod(json!({})), "demo", true, &settings) else {
        panic!("not injected")
    };
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
    let mut injected = pod(json!({}));
    json_patch::patch(&mut injected, &patch.0).unwrap();
    let env = &injected["spec"]["initContainers"][1]["env"];
    let value = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].clone())
    };
    assert_eq!(value("STRAIT_MAX_CONNECTIONS"), Some(json!("2000")));
    assert_eq!(value("STRAIT_IDLE_TIMEOUT"), Some(json!("10m")));
    // Unset and empty chart values leave the proxy's own defaults.
    assert_eq!(value("STRAIT_DETECT_BUFFER"), None);
    assert_eq!(value("STRAIT_MAX_CONCURRENT_STREAMS"), None);

    let error = InjectSettings::from_env(lookup(&[("STRAIT_PROXY_MAX_HEADER_BYTES", "64k")])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "STRAIT_PROXY_MAX_HEADER_BYTES=\"64k\": expected a whole number from 1024 to 1048576"
    );
}

#[test]
fn chart_resources_must_be_quantities_with_requests_within_limits() {
    let settings = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        InjectSettings::from_env(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let error = settings(&[("STRAIT_PROXY_CPU_LIMIT", "1.2.3")])
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("STRAIT_PROXY_CPU_LIMIT=\"1.2.3\": \"1.2.3\" is not a quantity"),
        "{error}"
    );
    let error = settings(&[
        ("STRAIT_PROXY_MEMORY_REQUEST", "2Gi"),
        ("STRAIT_PROXY_MEMORY_LIMIT", "1Gi"),
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "STRAIT_PROXY_MEMORY_REQUEST=\"2Gi\": must be less than or equal to memory limit of 1Gi"
    );
    let error = settings(&[("STRAIT_INIT_CPU_REQUEST", "1"), ("STRAIT_INIT_CPU_LIMIT", "500m")]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("must be less than or equal to cpu limit of 500m"),
        "{error}"
    );
    let error = settings(&[("STRAIT_PROXY_CPU_REQUEST", "-1")]).unwrap_err().to_string();
    assert_eq!(
        error,
        "STRAIT_PROXY_CPU_REQUEST=\"-1\": must be greater than or equal to 0"
    );
    let big = settings(&[
        ("STRAIT_PROXY_MEMORY_REQUEST", "1e3"),
        ("STRAIT_PROXY_MEMORY_LIMIT", "1Pi"),
    ])
    .unwrap();
    assert_eq!(big.proxy_resources.memory_limit.as_deref(), Some("1Pi"));
}

#[test]
fn without_native_sidecars_application_init_containers_run_before_the_redirect() {
    let settings = InjectSettings {
        native_sidecar: false,
        ..settings()
    };
    let original = pod(json!({"spec": {"initContainers": [
        {"name": "fetch-config", "image": "curl:1"},
        {"name": "migrate", "image": "tool:1"}
    ]}}));
    let (injected, warnings) = injected(&original, &settings);
    assert_eq!(
        init_container_names(&injected),
        ["fetch-config", "migrate", "strait-init"],
        "the application's init containers reach the network before the redirect exists"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("fetch-config, migrate") && w.contains("nativeSidecar")),
        "{warnings:?}"
    );
}

#[test]
fn tcp_probes_ask_the_proxy_whether_the_application_listens_with_either_sidecar_kind() {
    let original = pod(json!({"spec": {"containers": [{
        "name": "app", "image": "web:1",
        "ports": [{"name": "grpc", "containerPort": 50051}],
        "readinessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
    }]}}));
    for native_sidecar in [true, false] {
        let settings = InjectSettings {
            native_sidecar,
            ..settings()
        };
        let (injected, _) = injected(&original, &settings);
        let app = injected["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "app")
            .unwrap();
        assert_eq!(
            app["readinessProbe"],
            json!({"httpGet": {"path": "/app-probe/tcp/50051", "port": 4191, "scheme": "HTTP"}, "periodSeconds": 1}),
            "native sidecar {native_sidecar}"
        );
        assert_eq!(app["livenessProbe"], original["spec"]["containers"][0]["livenessProbe"]);
        let proxy = injected["spec"][if native_sidecar { "initContainers" } else { "containers" }]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == names::PROXY_CONTAINER)
            .unwrap();
        assert!(
            proxy["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "STRAIT_APP_PROBE_PORTS", "value": "50051"})),
            "{proxy:#}"
        );
    }
}

#[test]
fn the_applications_own_scrape_annotations_are_kept() {
    let own = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9102"});
    let original = pod(json!({"metadata": {"annotations": own}}));
    let (meshed, _) = injected(&original, &settings());
    let annotations = &meshed["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "9102", "{annotations:#}");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert!(annotations.get("prometheus.io/path").is_none(), "{annotations:#}");
    assert_eq!(
        annotations["strait.io/identity"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    let (plain, _) = injected(&pod(json!({})), &settings());
    assert_eq!(plain["metadata"]["annotations"]["prometheus.io/port"], "4191");
}

#[test]
fn cni_mode_injects_the_unprivileged_validator_and_needs_native_sidecars() {
    let settings = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        InjectSettings::from_env(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let cni = settings(&[
        ("STRAIT_CNI", "true"),
        ("STRAIT_CNI_IMAGE", "registry.example/strait-cni:1"),
    ])
    .unwrap();
    let Decision::Inject { patch, .. } = decide(&pod(json!({})), "demo", true, &cni) else {
        panic!("not injected")
    };
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
    let mut injected = pod(json!({}));
    json_patch::patch(&mut injected, &patch.0).unwrap();
    let validator = &injected["spec"]["initContainers"][0];
    assert_eq!(validator["name"], "strait-validate");
    assert_eq!(validator["image"], "registry.example/strait-cni:1");
    assert_eq!(validator["args"], json!(["validate"]));
    assert_eq!(validator["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));
    assert!(validator.get("volumeMounts").is_none());

    let error = settings(&[("STRAIT_CNI", "true"), ("STRAIT_NATIVE_SIDECAR", "false")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("native sidecar"), "{error}");
}
