//! strait-init and strait-cni write the same rules for the same
//! annotations: each golden case is a pod with annotations, injected once
//! as usual (strait-init reads its container's variables) and once in CNI
//! mode (strait-cni reads the validator's, through the pod it would get
//! from the API server), and both must render exactly
//! `init/tests/golden/<case>.<family>.rules`, the files strait-init's own
//! golden test checks.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use strait_cni::pod::{Decision, decide};
use strait_init::{Family, rules};
use strait_injector::InjectSettings;

/// The golden cases that annotations can express.
const CASES: [(&str, &[(&str, &str)]); 3] = [
    ("defaults", &[]),
    (
        "skip-ports",
        &[
            ("strait.io/skip-inbound-ports", "22,8000-8100"),
            ("strait.io/skip-outbound-ports", "3306,5432-5433"),
        ],
    ),
    (
        "skip-cidrs",
        &[("strait.io/skip-outbound-cidrs", "10.96.0.0/12,169.254.169.254,fd00::/8")],
    ),
];

/// The pod as the injector's patch leaves it (only the part read here).
fn injected(annotations: &[(&str, &str)], cni: bool) -> Pod {
    let annotations: serde_json::Map<String, Value> =
        annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let pod = json!({
        "metadata": {"name": "web", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    });
    let settings = InjectSettings {
        cni,
        ..InjectSettings::default()
    };
    let strait_injector::inject::Decision::Inject { patch, .. } =
        strait_injector::inject::decide(&pod, "mesh", true, &settings)
    else {
        panic!("the pod is injected")
    };
    let inits = patch
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .map(|op| op["value"].clone())
        .expect("the patch adds init containers");
    serde_json::from_value(json!({"spec": {"initContainers": inits, "containers": [{"name": "app"}]}})).unwrap()
}

fn golden(case: &str, family: Family) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../init/tests/golden")
        .join(format!("{case}.{}.rules", family.tool()));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn strait_init_and_strait_cni_render_the_shared_golden_rules_for_the_same_annotations() {
    for (case, annotations) in CASES {
        let classic = injected(annotations, false);
        let init = classic.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].clone();
        assert_eq!(init.name, "strait-init", "{case}");
        // strait-init reads these variables as its environment, through
        // the same `Config::from_args` that `redirect_config` calls.
        let by_init = strait_cni::pod::redirect_config(&init).unwrap();

        let cni_pod = injected(annotations, true);
        let validator = &cni_pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        assert_eq!(validator.name, "strait-validate", "{case}");
        assert!(
            validator
                .security_context
                .as_ref()
                .unwrap()
                .capabilities
                .as_ref()
                .unwrap()
                .add
                .is_none(),
            "{case}: the validator adds no capability"
        );
        let Decision::Redirect(by_cni) = decide(&cni_pod).unwrap() else {
            panic!("{case}: strait-cni writes rules for a meshed pod")
        };
        for family in [Family::V4, Family::V6] {
            let expected = golden(case, family);
            let none = rules::Jumps::default();
            assert_eq!(
                rules::render(&by_init, family, &none),
                expected,
                "{case} {family:?}: strait-init"
            );
            assert_eq!(
                rules::render(&by_cni, family, &none),
                expected,
                "{case} {family:?}: strait-cni"
            );
        }
    }
}
