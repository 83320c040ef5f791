//! CNI mode on the lab: pods wired by Debian's CNI plugins with strait-cni
//! chained last by its DaemonSet (`strait-lab up --cni`). Meshed pods in a
//! namespace enforcing Pod Security "restricted" are admitted, balanced and
//! speak mTLS; the plugin answers CHECK, ADD and DEL on a real pod as the
//! CNI spec asks; a pod that started before the plugin was on the node is
//! stopped by its validator, and a new one starts once it is.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Lab, eventually};

/// The lab's node conflist, as the runtime reads it.
fn conflist(lab: &Lab) -> Value {
    let path = PathBuf::from(format!("/run/strait-lab/{}/cni/net.d/10-strait-lab.conflist", lab.name));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Calls the strait-cni the installer put on the node, from the node's
/// network namespace, as the runtime does for `pod`.
fn plugin(lab: &Lab, command: &str, pod: &str) -> Output {
    let list = conflist(lab);
    let mut conf = list["plugins"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(conf["type"], "strait-cni", "strait-cni is chained last: {list}");
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["prevResult"] = previous_result(lab, pod);
    let (namespace, name) = pod.split_once('/').unwrap();
    let bin = format!("/run/strait-lab/{}/cni/bin", lab.name);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}_node", lab.name),
            &format!("{bin}/strait-cni"),
        ])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "conformance")
        .env("CNI_NETNS", format!("/run/netns/{}", lab.netns(pod)))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", format!("{bin}:/usr/lib/cni"))
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin may answer without reading all of its input, as runtimes
    // allow: a pipe it has closed is not an error; its answer counts.
    match child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => panic!("cannot write the plugin's input: {error}"),
    }
    child.wait_with_output().unwrap()
}

/// The result the bridge plugin gave `pod`, as the runtime passes it on.
fn previous_result(lab: &Lab, pod: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": format!("/run/netns/{}", lab.netns(pod))}],
        "ips": [{"address": format!("{}/16", lab.pod_ip(pod)), "gateway": "198.18.0.1", "interface": 0}],
    })
}

fn pod_nat(lab: &Lab, pod: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.netns(pod), "iptables-save", "-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Injects the client's Deployment as a cluster without CNI mode would
/// (`strait-injector inject`, the webhook's code) and applies it.
fn submit_injected_without_cni(lab: &Lab, client: &str) -> Output {
    let proxy = init_containers(lab, client)
        .into_iter()
        .find(|c| c["name"] == "strait-proxy")
        .unwrap();
    let anchors = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "STRAIT_TRUST_ANCHORS")
        .map(|v| v["value"].as_str().unwrap().to_string())
        .unwrap();
    let dir = std::env::temp_dir().join(format!("strait-cni-classic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("anchors.pem"), anchors).unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: classic, namespace: restricted}\nspec:\n  serviceAccountName: client\n  \
               securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}\n  \
               containers:\n  - name: client\n    image: lab-app\n    command: [sleep, infinity]\n    \
               securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n";
    std::fs::write(dir.join("pod.yaml"), pod).unwrap();
    let injector = PathBuf::from(env!("CARGO_BIN_EXE_strait-lab")).with_file_name("strait-injector");
    let injected = Command::new(injector)
        .args(["inject", "-f", &dir.join("pod.yaml").display().to_string()])
        .args(["--trust-anchors", &dir.join("anchors.pem").display().to_string()])
        .env_remove("STRAIT_CNI")
        .output()
        .unwrap();
    assert!(
        injected.status.success(),
        "{}",
        String::from_utf8_lossy(&injected.stderr)
    );
    assert!(String::from_utf8_lossy(&injected.stdout).contains("strait-init"));
    std::fs::write(dir.join("injected.yaml"), &injected.stdout).unwrap();
    let out = lab.cli(&["up", "--cni", "-f", &dir.join("injected.yaml").display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn init_containers(lab: &Lab, pod: &str) -> Vec<Value> {
    let (namespace, name) = pod.split_once('/').unwrap();
    lab.get(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn in_cni_mode_a_restricted_namespace_admits_balances_and_secures_grpc_and_the_plugin_answers_check_add_and_del() {
    let Some(lab) = Lab::up_cni("cni-restricted", &["cni-restricted.yaml"]) else {
        return;
    };
    let client = lab.pod("restricted", "client-");
    let servers = lab.pods("restricted", "grpc-");
    assert_eq!(servers.len(), 3);

    // Admitted under "restricted": the pods carry the validator, not strait-init.
    let inits = init_containers(&lab, &client);
    let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["strait-validate", "strait-proxy"], "{inits:?}");
    assert_eq!(inits[0]["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));
    let validated = lab.cli_ok(&["logs", &client, "-c", "strait-validate"]);
    assert!(validated.contains("redirects are in place"), "{validated}");

    // Balanced: 3000 calls on one connection, each pod within ±15% of a third.
    let result = lab.app(
        &client,
        &[
            "grpc-client",
            "--to",
            "grpc.restricted:50051",
            "--calls",
            "3000",
            "--concurrency",
            "8",
        ],
    );
    support::assert_no_failed_calls(&result, "gRPC in a restricted namespace");
    eprintln!("3000 calls on one connection, by pod: {}", result["by_pod"]);
    support::assert_even(&result["by_pod"], 3, 0.15, "3000 calls over one connection");

    // mTLS: every server counts inbound TLS connections from the client's identity.
    let client_id = "client_id=\"spiffe://cluster.local/ns/restricted/sa/client\"";
    for server in &servers {
        let tls = lab.metric(
            server,
            "strait_tcp_open_total",
            &["direction=\"inbound\"", client_id, "tls=\"true\""],
        );
        assert!(tls >= 1.0, "{server}: no mTLS connection from the client");
    }

    // Without CNI mode the same pod is refused: injected as usual (with
    // strait-init, by the offline command) and submitted, Pod Security names
    // the capabilities.
    let classic = submit_injected_without_cni(&lab, &client);
    let said = String::from_utf8_lossy(&classic.stderr);
    assert!(
        !classic.status.success(),
        "a pod with strait-init was admitted under restricted"
    );
    assert!(
        said.contains("violates PodSecurity \"restricted:latest\"")
            && said.contains("container \"strait-init\" must not include \"NET_ADMIN\", \"NET_RAW\""),
        "{said}"
    );

    // CHECK passes on the pod as set up, and names a rule once it is gone.
    let checked = plugin(&lab, "CHECK", &client);
    assert!(
        checked.status.success(),
        "CHECK: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let rule = "-A STRAIT_OUTPUT -p tcp -j REDIRECT --to-ports 4140";
    assert!(pod_nat(&lab, &client).contains(rule));
    let deleted = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns(&client),
            "iptables",
            "-t",
            "nat",
            "-D",
            "STRAIT_OUTPUT",
        ])
        .args(["-p", "tcp", "-j", "REDIRECT", "--to-ports", "4140"])
        .status()
        .unwrap();
    assert!(deleted.success());
    let broken = plugin(&lab, "CHECK", &client);
    let answer: Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert!(!broken.status.success());
    assert_eq!(answer["code"], 101, "{answer}");
    assert!(answer["details"].as_str().unwrap().contains(rule), "{answer}");

    // ADD again writes the rules back (once each); DEL removes them, twice.
    let added = plugin(&lab, "ADD", &client);
    assert!(
        added.status.success(),
        "ADD: {}",
        String::from_utf8_lossy(&added.stdout)
    );
    let passed: Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(
        passed,
        previous_result(&lab, &client),
        "ADD passes the previous result through"
    );
    assert_eq!(pod_nat(&lab, &client).matches(rule).count(), 1);
    assert!(plugin(&lab, "CHECK", &client).status.success());
    for _ in 0..2 {
        let out = plugin(&lab, "DEL", &client);
        assert!(out.status.success() && out.stdout.is_empty(), "DEL: {out:?}");
    }
    assert!(!pod_nat(&lab, &client).contains("STRAIT"), "DEL left rules");
}

#[test]
fn a_pod_started_before_the_plugin_is_on_the_node_is_stopped_by_its_validator_and_a_new_one_starts_once_it_is() {
    let Some(lab) = Lab::up_cni("cni-late", &["pod-security.yaml"]) else {
        return;
    };
    let chained = |lab: &Lab| {
        conflist(lab)["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["type"] == "strait-cni")
    };
    let binary = PathBuf::from(format!("/run/strait-lab/{}/cni/bin/strait-cni", lab.name));

    // The installer's pod goes (an eviction, an upgrade) while its
    // DaemonSet stays: the node stays set up for its successor (the files
    // are the same ones, never removed and written again).
    let conf_file = PathBuf::from(format!("/run/strait-lab/{}/cni/net.d/10-strait-lab.conflist", lab.name));
    let inodes = || {
        use std::os::unix::fs::MetadataExt;
        [&binary, &conf_file].map(|f| std::fs::metadata(f).map(|m| m.ino()).ok())
    };
    let before = inodes();
    // The node's token is the token Secret's, not the pod's: it outlives it.
    let token_file = PathBuf::from(format!("/run/strait-lab/{}/cni/net.d/strait-cni.token", lab.name));
    let token = std::fs::read(&token_file).unwrap();
    let installer = lab.pod("strait-system", "strait-cni-");
    let (_, name) = installer.split_once('/').unwrap();
    lab.cli_ok(&["delete", &format!("/api/v1/namespaces/strait-system/pods/{name}")]);
    eventually(Duration::from_secs(60), "a new installer pod is ready", || {
        let pods = lab.pods("strait-system", "strait-cni-");
        pods.len() == 1 && pods[0] != installer && lab.is_ready(&pods[0])
    });
    assert!(chained(&lab));
    assert_eq!(inodes(), before, "the plugin left the node with its pod");
    assert_eq!(
        std::fs::read(&token_file).unwrap(),
        token,
        "the node's token changed with the installer's pod"
    );

    // The DaemonSet goes (an uninstall): the plugin leaves the node.
    let path = "/apis/apps/v1/namespaces/strait-system/daemonsets/strait-cni";
    let mut daemonset = lab.get(path);
    lab.cli_ok(&["delete", path]);
    // The installer, stopped, takes the plugin off the node.
    eventually(Duration::from_secs(60), "strait-cni leaves the conflist", || {
        !chained(&lab)
    });
    let kubeconfig = PathBuf::from(format!("/run/strait-lab/{}/cni/net.d/strait-cni.kubeconfig", lab.name));
    assert!(!kubeconfig.exists(), "the node keeps the plugin's credentials");
    // The binary stays, for pods set up with it to be torn down.
    assert!(binary.exists());

    let late = lab.cli(&[
        "up",
        "--cni",
        "--timeout",
        "20s",
        "-f",
        &support::manifest("cni-late.yaml").display().to_string(),
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&late.stdout),
        String::from_utf8_lossy(&late.stderr)
    );
    assert!(
        !late.status.success(),
        "a pod without its redirects became ready: {said}"
    );
    let stopped = lab.pod("late", "web-");
    let log = lab.cli_ok(&["logs", &stopped, "-c", "strait-validate"]);
    assert!(
        log.contains("outbound TCP is not redirected to the proxy") && log.contains("strait-cni DaemonSet"),
        "the validator names the cause: {log}"
    );
    assert!(!lab.is_ready(&stopped));

    // The DaemonSet comes back; a pod made now is set up by the plugin.
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        daemonset["metadata"].as_object_mut().unwrap().remove(field);
    }
    daemonset.as_object_mut().unwrap().remove("status");
    let file = std::env::temp_dir().join(format!("strait-cni-daemonset-{}.json", std::process::id()));
    std::fs::write(&file, daemonset.to_string()).unwrap();
    lab.cli_ok(&["up", "--cni", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    lab.cli_ok(&[
        "delete",
        &format!("/api/v1/namespaces/late/pods/{}", stopped.split_once('/').unwrap().1),
    ]);
    lab.apply_cni("cni-late.yaml");
    let web = lab.pod("late", "web-");
    assert_ne!(web, stopped);
    assert!(pod_nat(&lab, &web).contains("-A STRAIT_OUTPUT -p tcp -j REDIRECT --to-ports 4140"));

    // Uninstalled again, a pod set up with the plugin is still torn down
    // with it, and its address is given back.
    lab.cli_ok(&["delete", path]);
    eventually(Duration::from_secs(60), "strait-cni leaves the conflist again", || {
        !chained(&lab)
    });
    let address = PathBuf::from(format!(
        "/run/strait-lab/{}/cni/ipam/strait-lab/{}",
        lab.name,
        lab.pod_ip(&web)
    ));
    assert!(address.exists(), "host-local holds {}", address.display());
    lab.cli_ok(&[
        "delete",
        &format!("/api/v1/namespaces/late/pods/{}", web.split_once('/').unwrap().1),
    ]);
    eventually(Duration::from_secs(60), "the pod's address is released", || {
        !address.exists()
    });
}
