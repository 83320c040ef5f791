//! The admission webhook on any request body: a 400-worthy error or an
//! AdmissionReview response for the same uid, whose patch (if any) is
//! base64 of a JSON Patch array. Never a panic.

#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use strait_injector::settings::InjectSettings;
use strait_injector::webhook::{NamespaceLabels, review};

struct Enabled;

impl NamespaceLabels for Enabled {
    fn injection_enabled(&self, namespace: &str) -> Option<bool> {
        (!namespace.starts_with("kube-")).then_some(true)
    }
}

fuzz_target!(|data: &[u8]| {
    let settings = InjectSettings::default();
    let Ok(answer) = review(data, &Enabled, &settings) else {
        return;
    };
    let request: Value = serde_json::from_slice(data).expect("an answered review was JSON");
    assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
    if let Some(patch) = answer["response"]["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("the patch is base64");
        let patch: Value = serde_json::from_slice(&bytes).expect("the patch is JSON");
        assert!(patch.is_array(), "a JSON Patch is an array: {patch}");
    }
});
