//! The control plane on day two, on the lab: the webhook CA and the trust
//! anchor it made for itself outlive re-applies and upgrades, and an
//! upgrade that replaces its pods while pods are created and gRPC calls
//! run meshes every new pod and fails no call, and new values reach the
//! control plane and new proxies.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{Lab, eventually};

const CONFIGURATION: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/strait-injector-strait-system";
const WEBHOOK_CA: &str = "/api/v1/namespaces/strait-system/secrets/strait-injector-webhook-ca";
const TRUST_ANCHOR: &str = "/api/v1/namespaces/strait-system/secrets/strait-identity-generated";

/// The chart rendered with `values`, keeping the documents `keep` selects,
/// in a file for `strait-lab up`.
fn rendered(name: &str, values: &[&str], keep: impl Fn(&str) -> bool) -> PathBuf {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let text = strait_lab::controlplane::render(&values).unwrap();
    let kept: Vec<&str> = text
        .split("\n---")
        .filter(|document| {
            document
                .lines()
                .find_map(|line| line.strip_prefix("kind: "))
                .is_some_and(|kind| keep(kind.trim()))
        })
        .collect();
    let path = std::env::temp_dir().join(format!("strait-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, kept.join("\n---")).unwrap();
    path
}

fn meshed(pod: &Value) -> bool {
    pod["metadata"]["labels"]["strait.io/meshed"] == "true"
}

#[test]
fn the_control_planes_own_cas_outlive_reapplies_and_an_upgrade_under_load_meshes_every_new_pod() {
    let Some(lab) = Lab::up("control-day-two", &["control-plane.yaml"]) else {
        return;
    };
    let bundle = || lab.get(CONFIGURATION)["webhooks"][0]["clientConfig"]["caBundle"].clone();
    let webhook_ca = lab.get(WEBHOOK_CA)["data"]["ca.crt"].clone();
    let anchor = lab.get(TRUST_ANCHOR)["data"]["ca.crt"].clone();
    assert!(webhook_ca.is_string() && anchor.is_string());
    assert_eq!(bundle(), webhook_ca, "the caBundle is the control plane's webhook CA");

    // Replacing the configuration with the rendered one (kubectl replace,
    // a GitOps tool) drops its caBundle: the control plane puts it back.
    let webhook = rendered("webhook", &[], |kind| kind == "MutatingWebhookConfiguration");
    lab.cli_ok(&["up", "-f", webhook.to_str().unwrap()]);
    let _ = std::fs::remove_file(&webhook);
    eventually(Duration::from_secs(30), "the caBundle restored", || {
        bundle() == webhook_ca
    });

    // An upgrade with new values: the injector's pods are replaced (each
    // old one drains on SIGTERM) while servers are added and a client
    // calls them. The webhook configuration is left as `helm upgrade`
    // leaves it (its three-way merge keeps a caBundle the chart does not set).
    let client = lab.pod("mesh", "client-");
    let calls = support::steady_grpc(&lab, &client, "grpc.mesh:50051", 30);
    let old = lab.pods("strait-system", "strait-injector-");
    let upgrade = rendered("upgrade", &["injector.replicas=2", "logFormat=json"], |kind| {
        kind != "MutatingWebhookConfiguration"
    });
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for replicas in 3..=6 {
                lab.cli_ok(&["scale", "mesh/grpc", &replicas.to_string()]);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        lab.cli_ok(&["up", "-f", upgrade.to_str().unwrap()]);
    });
    let _ = std::fs::remove_file(&upgrade);
    eventually(
        Duration::from_secs(120),
        "two new injectors ready, the old one gone",
        || {
            let pods = lab.pods("strait-system", "strait-injector-");
            pods.len() == 2 && pods.iter().all(|p| !old.contains(p) && lab.is_ready(p))
        },
    );
    eventually(Duration::from_secs(120), "six gRPC servers ready", || {
        let pods = lab.pods("mesh", "grpc-");
        pods.len() == 6 && pods.iter().all(|p| lab.is_ready(p))
    });
    support::assert_no_failed_calls(&calls.finish(Duration::from_secs(120)), "gRPC through the upgrade");
    let servers = lab.pods("mesh", "grpc-");
    let pods = lab.status()["pods"].as_array().unwrap().clone();
    for pod in pods.iter().filter(|p| p["metadata"]["namespace"] == "mesh") {
        assert!(meshed(pod), "not meshed: {}", pod["metadata"]["name"]);
    }
    assert_eq!(
        lab.get(WEBHOOK_CA)["data"]["ca.crt"],
        webhook_ca,
        "the webhook CA was kept"
    );
    assert_eq!(
        lab.get(TRUST_ANCHOR)["data"]["ca.crt"],
        anchor,
        "the trust anchor was kept"
    );
    assert_eq!(bundle(), webhook_ca);

    // The new value reached the control plane and, through it, new proxies:
    // their logs are JSON lines.
    lab.cli_ok(&["scale", "mesh/grpc", "7"]);
    eventually(Duration::from_secs(60), "a seventh gRPC server ready", || {
        let pods = lab.pods("mesh", "grpc-");
        pods.len() == 7 && pods.iter().all(|p| lab.is_ready(p))
    });
    let newest = lab
        .pods("mesh", "grpc-")
        .into_iter()
        .find(|p| !servers.contains(p))
        .unwrap();
    let injector = lab.pods("strait-system", "strait-injector-")[0].clone();
    for (pod, container) in [(&newest, "strait-proxy"), (&injector, "injector")] {
        let logs = lab.cli_ok(&["logs", pod, "-c", container]);
        let line = logs.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{pod} {container}: {e}: {line}"));
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
}
