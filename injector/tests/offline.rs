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

fn inject(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strait-injector"))
        .arg("inject")
        .args(args)
        .env("STRAIT_PROXY_IMAGE", "ghcr.io/strait-mesh/strait-proxy:test")
        .env("STRAIT_INIT_IMAGE", "ghcr.io/strait-mesh/strait-init:test")
        .output()
        .unwrap()
}

#[test]
fn every_pod_template_is_injected_and_the_rest_passes_through() {
    let out = inject(&["-f", golden("input.yaml").to_str().unwrap()]);
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
    let once = inject(&["-f", golden("output.yaml").to_str().unwrap()]);
    assert!(once.status.success());
    let expected = std::fs::read_to_string(golden("output.yaml")).unwrap();
    assert_eq!(String::from_utf8(once.stdout).unwrap(), expected);
}

#[test]
fn standard_input_and_bad_yaml() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait-injector"))
        .args(["inject", "-f", "-"])
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
