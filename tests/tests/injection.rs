//! Injection through the real webhook on the lab: who gets the proxy, and
//! that injected Jobs still complete.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Lab, eventually};

fn pod(lab: &Lab, namespace: &str, name: &str) -> Value {
    lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"].as_str().unwrap().starts_with(name))
        .cloned()
        .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
}

fn container_names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().cloned().unwrap_or_default())
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn meshed(pod: &Value) -> bool {
    container_names(pod).iter().any(|n| n == "strait-proxy") && pod["metadata"]["labels"]["strait.io/meshed"] == "true"
}

#[test]
fn the_webhook_meshes_labelled_namespaces_and_opted_in_pods_only() {
    let Some(lab) = Lab::up("inject-who", &["injection.yaml"]) else {
        return;
    };
    assert!(
        !meshed(&pod(&lab, "unlabelled", "plain")),
        "an unlabelled namespace gets no sidecar"
    );
    assert!(
        meshed(&pod(&lab, "unlabelled", "opted-in")),
        "a pod annotated enabled is meshed anywhere"
    );
    assert!(!meshed(&pod(&lab, "meshed", "opted-out")), "an opted-out pod gets none");
    let bad = pod(&lab, "meshed", "bad-annotation");
    assert!(meshed(&bad), "a bad annotation does not stop injection");
    let init = &bad["spec"]["initContainers"][0];
    assert!(
        init["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "STRAIT_SKIP_INBOUND_PORTS"),
        "the bad value is ignored"
    );
    assert_eq!(
        bad["metadata"]["annotations"]["strait.io/identity"],
        "spiffe://cluster.local/ns/meshed/sa/default"
    );
}

#[test]
fn a_bad_annotation_is_reported_as_a_warning() {
    let Some(lab) = Lab::up("inject-warn", &["injection.yaml"]) else {
        return;
    };
    let fresh = std::env::temp_dir().join(format!("strait-warn-{}.yaml", std::process::id()));
    std::fs::write(
        &fresh,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: warned\n  namespace: meshed\n  annotations: {strait.io/skip-outbound-ports: \"70000\"}\n\
         spec:\n  containers:\n  - {name: app, image: lab-app, command: [sleep, infinity]}\n",
    )
    .unwrap();
    let out = lab.cli(&["up", "-f", fresh.to_str().unwrap()]);
    let _ = std::fs::remove_file(&fresh);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning: annotation strait.io/skip-outbound-ports=") && stderr.contains("70000"),
        "{stderr}"
    );
}

#[test]
fn an_injected_job_completes_and_its_pod_ends() {
    let Some(lab) = Lab::up("inject-job", &["injection.yaml"]) else {
        return;
    };
    eventually(Duration::from_secs(30), "the Job completes", || {
        let job = pod(&lab, "meshed", "once-");
        job["status"]["phase"] == "Succeeded"
    });
    let job = pod(&lab, "meshed", "once-");
    assert!(meshed(&job));
    let statuses = job["status"]["initContainerStatuses"].as_array().unwrap();
    let proxy = statuses.iter().find(|s| s["name"] == "strait-proxy").unwrap();
    assert!(
        proxy["state"].get("terminated").is_some(),
        "the sidecar stopped once the task was done: {proxy}"
    );
}

#[test]
fn without_native_sidecars_the_proxy_starts_first_and_the_app_waits_for_it() {
    let Some(lab) = Lab::up_with(
        "inject-legacy",
        &["tcp-echo.yaml"],
        &[("STRAIT_LAB_CHART_VALUES", "proxy.nativeSidecar=false")],
    ) else {
        return;
    };
    let client = pod(&lab, "mesh", "client-");
    assert_eq!(client["spec"]["containers"][0]["name"], "strait-proxy");
    assert_eq!(
        client["spec"]["initContainers"].as_array().unwrap().len(),
        1,
        "only strait-init is an init container"
    );
    let name = format!("mesh/{}", client["metadata"]["name"].as_str().unwrap());
    assert_eq!(
        lab.app(&name, &["tcp-send", "--to", "echo:80", "--bytes", "100000"])["match"],
        true
    );
    assert_eq!(
        lab.metric(&name, "strait_tcp_open_total", &["outbound"]),
        1.0,
        "the traffic went through the proxy"
    );
    // An application init container that needs the network runs before
    // the redirect exists (with the proxy not yet started, it could never
    // connect), and the pod starts.
    let applied = lab.cli(&[
        "up",
        "-f",
        &support::manifest("init-network.yaml").display().to_string(),
    ]);
    assert!(
        applied.status.success(),
        "a pod whose init container needs the network never started:\n{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let migrate = pod(&lab, "mesh", "migrate-");
    let inits: Vec<&str> = migrate["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["fetch-config", "strait-init"]);
}

#[test]
fn a_tcp_readiness_probe_passes_only_once_the_application_listens() {
    let Some(lab) = Lab::up("inject-probe", &["probes.yaml"]) else {
        return;
    };
    lab.cli_ok(&["scale", "probes/late", "1"]);
    eventually(Duration::from_secs(60), "the proxy of the new pod ready", || {
        lab.pods("probes", "late-").len() == 1
            && pod(&lab, "probes", "late-")["status"]["initContainerStatuses"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "strait-proxy" && s["ready"] == true))
    });
    let late = pod(&lab, "probes", "late-");
    assert_eq!(
        late["spec"]["containers"][0]["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/app-probe/tcp/50051", "port": 4191, "scheme": "HTTP"}),
        "the tcpSocket probe asks the proxy"
    );
    let name = format!("probes/{}", late["metadata"]["name"].as_str().unwrap());
    // Five probe periods with the proxy accepting on the port but nothing
    // behind it: the pod must not be Ready. (A kubelet's own TCP probe
    // would have passed, reaching the proxy.)
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        assert!(!lab.is_ready(&name), "Ready before the application listens");
    }
    lab.exec_in_ok(&name, "app", &["touch", "/tmp/listen"]);
    eventually(
        Duration::from_secs(30),
        "the pod Ready once its application listens",
        || lab.is_ready(&name),
    );
}
