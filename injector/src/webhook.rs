//! The mutating admission webhook: AdmissionReview v1 in, the injection
//! patch (or nothing) out. A body that is not an AdmissionReview is a 400
//! with a message; anything inside a well-formed review that the injector
//! cannot use admits the pod unchanged, so the webhook never blocks a pod
//! on a bad annotation.

use base64::Engine;
use serde_json::{Value, json};

use crate::inject::{Decision, decide};
use crate::settings::InjectSettings;

/// Why a request body is not something the webhook can answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed AdmissionReview: {0}")]
pub struct MalformedReview(pub String);

/// Answers whether a namespace turns injection on (its `strait.io/inject`
/// label); `None` when the namespace is unknown.
pub trait NamespaceLabels: Send + Sync {
    fn injection_enabled(&self, namespace: &str) -> Option<bool>;
}

/// Builds the AdmissionReview response for a request body.
pub fn review(
    body: &[u8],
    namespaces: &dyn NamespaceLabels,
    settings: &InjectSettings,
) -> Result<Value, MalformedReview> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| MalformedReview(format!("the body is not JSON: {e}")))?;
    let kind = review.get("kind").and_then(Value::as_str);
    let api_version = review.get("apiVersion").and_then(Value::as_str);
    if kind != Some("AdmissionReview") || api_version != Some("admission.k8s.io/v1") {
        return Err(MalformedReview(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {api_version:?} {kind:?}"
        )));
    }
    let request = review
        .get("request")
        .ok_or_else(|| MalformedReview("request is missing".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| MalformedReview("request.uid is missing".into()))?;
    let mut response = json!({"uid": uid, "allowed": true});
    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request
            .pointer("/kind/group")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty();
    let is_create = request.get("operation").and_then(Value::as_str) == Some("CREATE");
    if let (true, true, Some(pod)) = (is_pod, is_create, request.get("object").filter(|o| o.is_object())) {
        let namespace = request
            .get("namespace")
            .and_then(Value::as_str)
            .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
            .unwrap_or("default");
        let enabled = namespaces.injection_enabled(namespace).unwrap_or(false);
        match decide(pod, namespace, enabled, settings) {
            Decision::Skip(reason) => tracing::debug!(%namespace, %reason, "not injecting"),
            Decision::Inject { patch, warnings } => {
                let patch = serde_json::to_vec(&patch).unwrap_or_default();
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                if !warnings.is_empty() {
                    response["warnings"] = json!(warnings);
                }
            }
        }
    }
    Ok(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Labelled(&'static [&'static str]);

    impl NamespaceLabels for Labelled {
        fn injection_enabled(&self, namespace: &str) -> Option<bool> {
            Some(self.0.contains(&namespace))
        }
    }

    fn request(namespace: &str, pod: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": pod,
            },
        })
        .to_string()
        .into_bytes()
    }

    fn pod(annotations: Value) -> Value {
        json!({"metadata": {"generateName": "web-", "annotations": annotations}, "spec": {"containers": [{"name": "app", "image": "x"}]}})
    }

    #[test]
    fn a_pod_in_a_labelled_namespace_gets_a_patch() {
        let answer = review(
            &request("demo", pod(json!({}))),
            &Labelled(&["demo"]),
            &InjectSettings::default(),
        )
        .unwrap();
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert!(patch.as_array().unwrap().len() > 3);
    }

    #[test]
    fn other_namespaces_opt_outs_and_other_kinds_pass_unchanged() {
        let settings = InjectSettings::default();
        let none = review(&request("other", pod(json!({}))), &Labelled(&["demo"]), &settings).unwrap();
        assert!(none["response"].get("patch").is_none());
        let out = review(
            &request("demo", pod(json!({"strait.io/inject": "disabled"}))),
            &Labelled(&["demo"]),
            &settings,
        )
        .unwrap();
        assert!(out["response"].get("patch").is_none());
        let opted_in = review(
            &request("other", pod(json!({"strait.io/inject": "enabled"}))),
            &Labelled(&[]),
            &settings,
        )
        .unwrap();
        assert!(opted_in["response"].get("patch").is_some());
    }

    #[test]
    fn a_bad_annotation_admits_with_a_warning() {
        let body = request("demo", pod(json!({"strait.io/skip-inbound-ports": "abc"})));
        let answer = review(&body, &Labelled(&["demo"]), &InjectSettings::default()).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("strait.io/skip-inbound-ports") && warning.contains("\"abc\""),
            "{warning}"
        );
    }

    #[test]
    fn malformed_bodies_are_named() {
        let settings = InjectSettings::default();
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "the body is not JSON"),
            (
                b"{}",
                "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "request is missing",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                "request.uid is missing",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
                "expected apiVersion",
            ),
        ];
        for (body, expected) in cases {
            let error = review(body, &Labelled(&[]), &settings).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
