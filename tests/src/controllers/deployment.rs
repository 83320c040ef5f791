//! Deployments: keeps `replicas` pods of the current template, rolling from
//! an old template to a new one within maxSurge and maxUnavailable.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{is_terminating, owned_by, owned_pod, pod_ready, short_hash};
use crate::apiserver::Api;
use crate::apiserver::resource::Resource;
use crate::apiserver::selector::LabelSelector;
use crate::apiserver::store::{name_of, namespace_of, random_suffix};

pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

pub async fn run(api: Arc<Api>) {
    super::run_owner(api, "deployments", |api, deployment| async move {
        reconcile(&api, &deployment).await
    })
    .await;
}

/// Resolves maxSurge / maxUnavailable: a count or a percentage of replicas.
fn limit(value: Option<&Value>, replicas: i64, default_percent: i64, round_up: bool) -> i64 {
    let percent = |p: i64| {
        let scaled = replicas * p;
        if round_up { (scaled + 99) / 100 } else { scaled / 100 }
    };
    match value {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s
            .trim_end_matches('%')
            .parse()
            .map_or(percent(default_percent), percent),
        _ => percent(default_percent),
    }
}

async fn reconcile(api: &Arc<Api>, deployment: &Value) -> Result<(), String> {
    let namespace = namespace_of(deployment).to_string();
    let uid = deployment
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let replicas = deployment
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let template = deployment
        .pointer("/spec/template")
        .cloned()
        .ok_or("spec.template is missing")?;
    let hash = short_hash(&template, 10);
    let selector = deployment
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(LabelSelector::from_map)
        .ok_or("spec.selector.matchLabels is missing")?;

    let (pods, _) = api.store.list(Resource::named("pods"), Some(&namespace));
    let pods: Vec<Value> = pods
        .into_iter()
        .filter(|p| owned_by(p, &uid) && selector.matches(p))
        .collect();
    let live: Vec<&Value> = pods.iter().filter(|p| !is_terminating(p)).collect();
    let (current, old): (Vec<&Value>, Vec<&Value>) = live.iter().partition(|p| {
        p.pointer(&format!("/metadata/labels/{TEMPLATE_HASH_LABEL}"))
            .and_then(Value::as_str)
            == Some(hash.as_str())
    });

    let strategy = deployment
        .pointer("/spec/strategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let rolling = deployment.pointer("/spec/strategy/rollingUpdate");
    let surge = limit(rolling.and_then(|r| r.get("maxSurge")), replicas, 25, true);
    let unavailable = limit(rolling.and_then(|r| r.get("maxUnavailable")), replicas, 25, false);
    let surge = if surge == 0 && unavailable == 0 { 1 } else { surge };

    let ready = |set: &[&Value]| set.iter().filter(|p| pod_ready(p)).count() as i64;
    let (current_n, old_n) = (current.len() as i64, old.len() as i64);
    let mut to_create = 0;
    let mut to_delete: Vec<&Value> = Vec::new();
    if strategy == "Recreate" && old_n > 0 {
        to_delete.extend(old.iter().copied());
    } else if old_n == 0 {
        to_create = (replicas - current_n).max(0);
        if current_n > replicas {
            to_delete.extend(
                deletion_order(&current)
                    .into_iter()
                    .take((current_n - replicas) as usize),
            );
        }
    } else {
        to_create = (replicas - current_n).min(replicas + surge - current_n - old_n).max(0);
        let available = ready(&current) + ready(&old);
        let min_available = replicas - unavailable;
        let unready_old: Vec<&Value> = old.iter().copied().filter(|p| !pod_ready(p)).collect();
        let deletable = (available - min_available).max(0) as usize;
        let ordered = deletion_order(&old);
        to_delete.extend(unready_old.iter().copied());
        to_delete.extend(ordered.into_iter().filter(|p| pod_ready(p)).take(deletable));
        if current_n > replicas {
            to_delete.extend(
                deletion_order(&current)
                    .into_iter()
                    .take((current_n - replicas) as usize),
            );
        }
    }

    for _ in 0..to_create {
        let name = format!("{}-{hash}-{}", name_of(deployment), random_suffix(5));
        let pod = owned_pod(deployment, name, &[(TEMPLATE_HASH_LABEL, &json!(hash))]);
        api.create_object(Resource::named("pods"), Some(namespace.clone()), pod)
            .await
            .map_err(|e| e.to_string())?;
    }
    for pod in to_delete {
        let _ = api.delete_object(Resource::named("pods"), &namespace, name_of(pod), None);
    }

    let status = json!({
        "observedGeneration": deployment.pointer("/metadata/generation"),
        "replicas": live.len(),
        "updatedReplicas": current_n,
        "readyReplicas": ready(&live),
        "availableReplicas": ready(&live),
        "unavailableReplicas": (replicas - ready(&live)).max(0),
        "conditions": [{
            "type": "Available",
            "status": if ready(&live) >= replicas - unavailable { "True" } else { "False" },
            "reason": "MinimumReplicasAvailable",
        }],
    });
    super::set_status(api, "deployments", deployment, status)
}

/// Which pods to remove first: not ready, then the newest.
fn deletion_order<'a>(pods: &[&'a Value]) -> Vec<&'a Value> {
    let mut ordered = pods.to_vec();
    ordered.sort_by_key(|p| {
        let created = p
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        (pod_ready(p), std::cmp::Reverse(created))
    });
    ordered
}
