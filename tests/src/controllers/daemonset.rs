//! DaemonSets: one pod on the lab's one node, from the current template
//! (`controller-revision-hash`); a changed template replaces it (the
//! RollingUpdate default, maxUnavailable 1: the old pod goes first), and a
//! failed pod is replaced. Status counts as Kubernetes' does for one node.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{is_terminating, owned_by, owned_pod, pod_ready, short_hash};
use crate::apiserver::Api;
use crate::apiserver::resource::Resource;
use crate::apiserver::store::{name_of, namespace_of, random_suffix};

/// The label carrying the template's hash on a DaemonSet's pods.
pub const REVISION_LABEL: &str = "controller-revision-hash";

pub async fn run(api: Arc<Api>) {
    super::run_owner(api, "daemonsets", |api, daemonset| async move {
        reconcile(&api, &daemonset).await
    })
    .await;
}

async fn reconcile(api: &Arc<Api>, daemonset: &Value) -> Result<(), String> {
    if is_terminating(daemonset) {
        return Ok(());
    }
    let namespace = namespace_of(daemonset).to_string();
    let uid = daemonset
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let template = daemonset
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let hash = short_hash(&template, 10);
    let pods: Vec<Value> = api
        .store
        .list(Resource::named("pods"), Some(&namespace))
        .0
        .into_iter()
        .filter(|p| owned_by(p, uid))
        .collect();
    let current = |p: &&Value| {
        p.pointer(&format!("/metadata/labels/{REVISION_LABEL}"))
            .and_then(Value::as_str)
            == Some(hash.as_str())
    };
    let failed = |p: &Value| p.pointer("/status/phase").and_then(Value::as_str) == Some("Failed");
    for pod in pods.iter().filter(|p| !is_terminating(p) && (!current(p) || failed(p))) {
        let _ = api.delete_object(Resource::named("pods"), &namespace, name_of(pod), None);
    }
    let live: Vec<&Value> = pods.iter().filter(|p| !is_terminating(p)).collect();
    let updated: Vec<&Value> = live.iter().copied().filter(|p| current(p) && !failed(p)).collect();
    // maxUnavailable 1 on one node: the new pod comes once the old is gone.
    if pods.is_empty() {
        api.create_object(
            Resource::named("pods"),
            Some(namespace.clone()),
            owned_pod(
                daemonset,
                format!("{}-{}", name_of(daemonset), random_suffix(5)),
                &[(REVISION_LABEL, &json!(hash))],
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let ready = updated.iter().filter(|p| pod_ready(p)).count();
    let status = json!({
        "desiredNumberScheduled": 1,
        "currentNumberScheduled": live.len().min(1),
        "updatedNumberScheduled": updated.len(),
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": 1 - ready.min(1),
        "numberMisscheduled": 0,
        "observedGeneration": daemonset.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    super::set_status(api, "daemonsets", daemonset, status)
}
