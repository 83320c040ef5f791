//! The offline `inject` command on a golden input covering every workload
//! kind; `STRAIT_UPDATE_GOLDEN=1` rewrites the expected output.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/inject")
        .join(name)
}

/// The trust anchors every run passes (a certificate, not a real mesh's).
fn anchors() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anchors.pem")
        .display()
        .to_string()
}

fn inject(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strait-injector"))
        .args(["inject", "--trust-anchors", &anchors()])
        .args(args)
        .env("STRAIT_PROXY_IMAGE", "ghcr.io/strait-mesh/strait-proxy:test")
        .env("STRAIT_INIT_IMAGE", "ghcr.io/strait-mesh/strait-init:test")
        .output()
        .unwrap()
}

#[test]
fn every_pod_template_is_injected_and_the_rest_passes_through() {
    let out = inject(&["-n", "demo", "-f", golden("input.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let actual = String::from_utf8(out.stdout).unwrap();
    let expected_path = golden("output.yaml");
    if std::env::var_os("STRAIT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert_eq!(actual, expected, "differs from {}", expected_path.display());
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("Pod demo/outside: not injected: the pod opts out"),
        "{notes}"
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = inject(&["-n", "demo", "-f", golden("output.yaml").to_str().unwrap()]);
    assert!(once.status.success());
    let expected = std::fs::read_to_string(golden("output.yaml")).unwrap();
    assert_eq!(String::from_utf8(once.stdout).unwrap(), expected);
}

#[test]
fn standard_input_and_bad_yaml() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait-injector"))
        .args(["inject", "--trust-anchors", &anchors(), "-n", "demo", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: x}]}\n---\nkind: [\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("document 2: not valid YAML"), "{error}");
    assert!(out.stdout.is_empty(), "nothing is printed when any document is bad");
}

#[test]
fn what_would_not_start_is_refused_with_what_to_do() {
    let input = golden("input.yaml");
    let input = input.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strait-injector"))
        .args(["inject", "-f", input])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{error}");
    assert!(
        error.contains("no trust anchors") && error.contains("--trust-anchors"),
        "{error}"
    );

    let dir = std::env::temp_dir().join(format!("strait-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pod = dir.join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: x}]}\n",
    )
    .unwrap();
    let out = inject(&["-f", pod.to_str().unwrap()]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{error}");
    assert!(
        error.contains("Pod web has no metadata.namespace: pass --namespace"),
        "{error}"
    );
    let elsewhere = inject(&["-n", "prod", "-f", input]);
    let error = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        !elsewhere.status.success() && error.contains("not \"prod\" as --namespace says"),
        "{error}"
    );
    let out = inject(&["-n", "shop", "-f", pod.to_str().unwrap()]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        yaml.contains("namespace: shop") && yaml.contains("spiffe://cluster.local/ns/shop/sa/default"),
        "{yaml}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
