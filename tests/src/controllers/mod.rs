//! The lab's controllers, each level-triggered: any change to a kind it
//! watches schedules one reconcile of everything it owns.

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::apiserver::Api;
use crate::apiserver::resource::Resource;
use crate::apiserver::store::{Store, name_of};

const RESYNC: Duration = Duration::from_secs(5);

/// Calls `reconcile` once at start and again after any change to one of
/// `kinds`, coalescing bursts of changes into one call.
pub async fn run_controller<F, Fut>(store: Arc<Store>, kinds: &[&str], mut reconcile: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut events = store.subscribe();
    loop {
        reconcile().await;
        // Wait for a relevant change (or a periodic resync, so a failed
        // step is retried), then let a burst of changes settle briefly.
        let changed = async {
            loop {
                match events.recv().await {
                    Ok(event) if kinds.contains(&event.resource.plural) => return true,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        };
        if let Ok(false) = tokio::time::timeout(RESYNC, changed).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
    }
}

/// Runs the controller of a kind that owns pods: `reconcile` for every
/// object of `kind` at start and after any change to one of them or to a
/// pod; a failure is logged and retried at the next change or resync.
pub async fn run_owner<F, Fut>(api: Arc<Api>, kind: &'static str, reconcile: F)
where
    F: Fn(Arc<Api>, Value) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let store = api.store.clone();
    run_controller(store, &[kind, "pods"], || async {
        for object in api.store.list(Resource::named(kind), None).0 {
            let name = name_of(&object).to_string();
            if let Err(error) = reconcile(api.clone(), object).await {
                tracing::warn!(kind, %name, %error, "reconcile failed");
            }
        }
    })
    .await;
}

/// Writes an object's `status` when it differs from what is stored (an
/// unchanged write would only wake every watcher again).
pub fn set_status(api: &Api, kind: &'static str, object: &Value, status: Value) -> Result<(), String> {
    if object.get("status") == Some(&status) {
        return Ok(());
    }
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    api.store
        .modify(Resource::named(kind), namespace, name_of(object), |o| {
            o["status"] = status;
            Ok(())
        })
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A short stable hash in the alphabet Kubernetes uses for generated names.
pub fn short_hash(value: &Value, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest
        .iter()
        .take(len)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Whether a pod's Ready condition is true.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub fn is_terminating(object: &Value) -> bool {
    object.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether `object` names `owner` (by uid) among its owners.
pub fn owned_by(object: &Value, owner_uid: &str) -> bool {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|owners| owners.iter().any(|o| o["uid"] == owner_uid))
}

pub fn owner_reference(owner: &Value) -> Value {
    serde_json::json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A pod from `owner`'s `spec.template`, named `name`, with `labels` added
/// to the template's and `owner` as its controller.
pub fn owned_pod(owner: &Value, name: String, labels: &[(&str, &Value)]) -> Value {
    let template = owner
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let mut metadata = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    for (label, value) in labels {
        metadata["labels"][*label] = (*value).clone();
    }
    metadata["name"] = Value::from(name);
    metadata["namespace"] = owner["metadata"]["namespace"].clone();
    metadata["ownerReferences"] = serde_json::json!([owner_reference(owner)]);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or_else(|| serde_json::json!({})),
    })
}
