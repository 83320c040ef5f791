//! Jobs: runs pods to completion, `parallelism` at a time, until
//! `completions` have succeeded or `backoffLimit` have failed.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{is_terminating, owned_by, owned_pod};
use crate::apiserver::Api;
use crate::apiserver::resource::Resource;
use crate::apiserver::store::{name_of, namespace_of, now_rfc3339, random_suffix};

pub async fn run(api: Arc<Api>) {
    super::run_owner(api, "jobs", |api, job| async move { reconcile(&api, &job).await }).await;
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

async fn reconcile(api: &Arc<Api>, job: &Value) -> Result<(), String> {
    let namespace = namespace_of(job).to_string();
    let uid = job.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let spec_number = |field: &str, default: i64| {
        job.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_i64)
            .unwrap_or(default)
    };
    let (completions, parallelism, backoff_limit) = (
        spec_number("completions", 1),
        spec_number("parallelism", 1),
        spec_number("backoffLimit", 6),
    );

    let pods: Vec<Value> = api
        .store
        .list(Resource::named("pods"), Some(&namespace))
        .0
        .into_iter()
        .filter(|p| owned_by(p, uid))
        .collect();
    let count = |wanted: &str| pods.iter().filter(|p| phase(p) == wanted).count() as i64;
    let (succeeded, failed) = (count("Succeeded"), count("Failed"));
    let active = pods
        .iter()
        .filter(|p| !is_terminating(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .count() as i64;
    let finished = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());

    if !finished && succeeded < completions && failed <= backoff_limit {
        let wanted = parallelism.min(completions - succeeded) - active;
        for _ in 0..wanted.max(0) {
            api.create_object(Resource::named("pods"), Some(namespace.clone()), pod_for(job))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let mut status = json!({"active": active, "succeeded": succeeded, "failed": failed});
    if let Some(started) = job.pointer("/status/startTime") {
        status["startTime"] = started.clone();
    } else {
        status["startTime"] = json!(now_rfc3339());
    }
    let condition = if succeeded >= completions {
        Some(("Complete", "Completed"))
    } else if failed > backoff_limit {
        Some(("Failed", "BackoffLimitExceeded"))
    } else {
        None
    };
    if let Some(existing) = job.pointer("/status/conditions") {
        status["conditions"] = existing.clone();
        if let Some(done) = job.pointer("/status/completionTime") {
            status["completionTime"] = done.clone();
        }
    } else if let Some((kind, reason)) = condition {
        let now = now_rfc3339();
        status["conditions"] = json!([{"type": kind, "status": "True", "reason": reason, "lastTransitionTime": now}]);
        if kind == "Complete" {
            status["completionTime"] = json!(now);
        }
    }
    super::set_status(api, "jobs", job, status)
}

fn pod_for(job: &Value) -> Value {
    let job_name = json!(name_of(job));
    let uid = job["metadata"]["uid"].clone();
    owned_pod(
        job,
        format!("{}-{}", name_of(job), random_suffix(5)),
        &[
            ("job-name", &job_name),
            ("batch.kubernetes.io/job-name", &job_name),
            ("batch.kubernetes.io/controller-uid", &uid),
        ],
    )
}
