//! strait-cni with the CNI project's own plugins (Debian's
//! containernetworking-plugins: bridge, host-local), in throwaway network
//! namespaces: what a runtime sees of it. The pod-reading path runs on the
//! lab (`tests/tests/cni.rs`); these are the parts a chained plugin owes
//! every runtime: results passed through, idempotent DEL, CNI error results
//! for bad input, and the validator. Needs root; skips loudly elsewhere,
//! and never when STRAIT_CI is set.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const PLUGINS: &str = "/usr/lib/cni";

/// A network namespace under /run/netns, removed on drop.
struct Pod {
    name: String,
    scratch: PathBuf,
}

impl Pod {
    fn new(tag: &str) -> Option<Pod> {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
        if !root || !PathBuf::from(PLUGINS).join("bridge").exists() {
            assert!(
                std::env::var_os("STRAIT_CI").is_none(),
                "STRAIT_CI is set but these tests cannot run (root and {PLUGINS}/bridge needed)"
            );
            eprintln!("SKIPPED: {tag} needs root and the CNI plugins in {PLUGINS}");
            return None;
        }
        let name = format!("strait-cni-{tag}-{}", std::process::id());
        let scratch = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&scratch).unwrap();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        Some(Pod { name, scratch })
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn sh(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The bridge plugin's configuration for this pod, with its own bridge
    /// and host-local state so tests run side by side.
    fn bridge_conf(&self) -> Value {
        let tag = std::process::id() % 10000;
        json!({
            "cniVersion": "1.0.0", "name": format!("lab-{tag}"), "type": "bridge",
            "bridge": format!("scni{tag}"), "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": self.scratch.join("ipam"),
                     "ranges": [[{"subnet": "198.18.200.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let tag = std::process::id() % 10000;
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
        let _ = Command::new("ip")
            .args(["link", "delete", &format!("scni{tag}")])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Runs a plugin as a runtime does: the command and the pod in the
/// environment, the configuration on stdin.
fn call(plugin: &str, command: &str, netns: Option<&str>, cni_args: &str, conf: &Value) -> Output {
    let binary = if plugin == "strait-cni" {
        PathBuf::from(env!("CARGO_BIN_EXE_strait-cni"))
    } else {
        PathBuf::from(PLUGINS).join(plugin)
    };
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PLUGINS)
        .env("CNI_ARGS", cni_args)
        .envs(netns.map(|n| ("CNI_NETNS", n.to_string())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    feed(&mut child, conf.to_string().as_bytes());
    child.wait_with_output().unwrap()
}

/// Writes a plugin's input. A plugin may answer without reading all of it
/// (VERSION needs none), and runtimes allow that: a pipe the plugin has
/// closed is not an error; its answer is what counts.
fn feed(child: &mut std::process::Child, input: &[u8]) {
    match child.stdin.take().unwrap().write_all(input) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => panic!("cannot write the plugin's input: {error}"),
    }
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// strait-cni's entry as the installer writes it, in a list named `name`.
fn strait_conf(name: &str, previous: Option<&Value>) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0", "name": name, "type": "strait-cni",
        "kubeconfig": "/nonexistent/strait-cni.kubeconfig",
        "excludeNamespaces": ["kube-system"],
    });
    if let Some(previous) = previous {
        conf["prevResult"] = previous.clone();
    }
    conf
}

#[test]
fn chained_after_the_bridge_plugin_the_result_passes_through_and_del_is_idempotent() {
    let Some(pod) = Pod::new("chain") else { return };
    let bridge = pod.bridge_conf();
    let name = bridge["name"].as_str().unwrap().to_string();
    let added = call("bridge", "ADD", Some(&pod.path()), "", &bridge);
    assert!(
        added.status.success(),
        "bridge ADD: {}",
        String::from_utf8_lossy(&added.stdout)
    );
    let mut result = json_of(&added);
    // An empty `dns` is no DNS: libcni's own result types drop it too.
    if result["dns"] == json!({}) {
        result.as_object_mut().unwrap().remove("dns");
    }
    assert!(
        result["ips"][0]["address"].as_str().unwrap().starts_with("198.18.200."),
        "{result}"
    );

    // Not a Kubernetes pod, and a pod of an excluded namespace: nothing to
    // look up, the previous result comes back as it was.
    for cni_args in [
        "",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1",
    ] {
        let out = call(
            "strait-cni",
            "ADD",
            Some(&pod.path()),
            cni_args,
            &strait_conf(&name, Some(&result)),
        );
        assert!(
            out.status.success(),
            "{cni_args}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(json_of(&out), result, "{cni_args}: the previous result, unchanged");
        let checked = call(
            "strait-cni",
            "CHECK",
            Some(&pod.path()),
            cni_args,
            &strait_conf(&name, Some(&result)),
        );
        assert!(checked.status.success() && checked.stdout.is_empty(), "{checked:?}");
    }
    assert!(
        !pod.sh("iptables-save -t nat").contains("STRAIT"),
        "an unmeshed pod gets no rules"
    );

    // DEL: with the namespace, again, without it, and once it is gone.
    let k8s = "K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=web-1";
    let conf = strait_conf(&name, Some(&result));
    for netns in [
        Some(pod.path()),
        Some(pod.path()),
        None,
        Some("/run/netns/strait-cni-gone".to_string()),
    ] {
        let out = call("strait-cni", "DEL", netns.as_deref(), k8s, &conf);
        assert!(
            out.status.success(),
            "DEL {netns:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty(), "DEL prints nothing on success");
    }
    assert!(call("bridge", "DEL", Some(&pod.path()), "", &bridge).status.success());
}

#[test]
fn the_versions_and_bad_input_get_cni_answers_naming_the_cause() {
    let Some(pod) = Pod::new("bad") else { return };
    // VERSION reads none of its input: a configuration larger than a pipe
    // holds (a runtime's, with a long previous result) is no error.
    let padding = "x".repeat(256 * 1024);
    let version = call(
        "strait-cni",
        "VERSION",
        None,
        "",
        &json!({"cniVersion": "1.1.0", "padding": padding}),
    );
    let versions = json_of(&version)["supportedVersions"].clone();
    assert!(versions.as_array().unwrap().contains(&json!("1.0.0")), "{versions}");
    assert!(versions.as_array().unwrap().contains(&json!("1.1.0")), "{versions}");

    let k8s = "K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=web-1";
    // What a previous plugin made (strait-cni only passes it on).
    let previous = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.200.9/24"}]});
    let error = |conf: &Value, cni_args: &str| {
        let out = call("strait-cni", "ADD", Some(&pod.path()), cni_args, conf);
        assert!(!out.status.success(), "{conf} was accepted");
        let answer = json_of(&out);
        (
            answer["code"].as_u64().unwrap(),
            format!("{} {}", answer["msg"], answer["details"]),
        )
    };
    // First in a chain (no previous result): it cannot be the only plugin.
    let (code, text) = error(&strait_conf("n", None), "");
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("chained after"), "{text}");
    let (code, text) = error(&json!({"cniVersion": "1.0.0", "name": "n", "type": "strait-cni"}), k8s);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("kubeconfig"), "{text}");
    let mut typo = strait_conf("n", Some(&previous));
    typo["excludeNamespace"] = json!(["x"]);
    let (code, text) = error(&typo, k8s);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("excludeNamespace"), "{text}");
    // The kubeconfig is read only for a pod that must be looked up.
    let (code, text) = error(&strait_conf("n", Some(&previous)), k8s);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("/nonexistent/strait-cni.kubeconfig"), "{text}");

    // An API server that does not answer: try again later, naming the pod
    // and the server; nothing is written.
    let kubeconfig = pod.scratch.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let mut unreachable = strait_conf("n", Some(&previous));
    unreachable["kubeconfig"] = json!(kubeconfig);
    let (code, text) = error(&unreachable, k8s);
    assert_eq!(code, 11, "{text}");
    assert!(text.contains("mesh/web-1") && text.contains("127.0.0.1:9"), "{text}");
    assert!(!pod.sh("iptables-save -t nat").contains("STRAIT"));

    // Garbage on stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait-cni"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PLUGINS)
        .env("CNI_NETNS", pod.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    feed(&mut child, b"{not json");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(json_of(&out)["code"], 6, "a decoding failure");
}

#[test]
fn the_validator_needs_no_privilege_and_tells_a_missing_redirect_from_a_working_one() {
    let Some(pod) = Pod::new("validate") else { return };
    // A pod's network: an interface with an address and a default route.
    pod.sh(
        "ip link set lo up && ip link add eth0 type veth peer name eth1 && ip addr add 198.18.9.2/24 dev eth0 \
         && ip link set eth0 up && ip link set eth1 up && ip route add default via 198.18.9.1",
    );
    // The validator reads the settings the injector gives it.
    let skip = "STRAIT_SKIP_OUTBOUND_CIDRS=192.0.2.0/24";
    let validate_with = |skip: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.name,
                "env",
                skip,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
            ])
            .args([
                "--clear-groups",
                "--inh-caps=-all",
                env!("CARGO_BIN_EXE_strait-cni"),
                "validate",
            ])
            .output()
            .unwrap()
    };
    let validate = || validate_with(skip);
    let missing = validate();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("outbound TCP is not redirected to the proxy")
            && stderr.contains("198.51.100.1:80")
            && stderr.contains("strait-cni DaemonSet"),
        "the cause is named, and the probe avoids the skipped range: {stderr}"
    );

    // The rules strait-init and strait-cni write, from the one builder.
    let config = strait_init::Config::from_args(strait_init::Args::default(), |name| {
        (name == "STRAIT_SKIP_OUTBOUND_CIDRS").then(|| "192.0.2.0/24".to_string())
    })
    .unwrap();
    let script = strait_init::rules::render(&config, strait_init::Family::V4, &Default::default());
    let mut restore = Command::new("ip")
        .args(["netns", "exec", &pod.name, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    restore.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(restore.wait().unwrap().success());
    let working = validate();
    assert!(
        working.status.success(),
        "with the redirect in place the check passes: {}",
        String::from_utf8_lossy(&working.stderr)
    );

    // An IPv4-only pod that skips all of IPv4 has nothing to redirect: not
    // a fault of the node's plugin.
    let nothing = validate_with("STRAIT_SKIP_OUTBOUND_CIDRS=0.0.0.0/0");
    let said = String::from_utf8_lossy(&nothing.stderr);
    assert!(nothing.status.success() && said.contains("nothing to check"), "{said}");
}
