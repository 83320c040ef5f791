//! `strait-injector inject`: the webhook's mutation applied to manifests on
//! disk, for clusters without the webhook or for review. Every pod template
//! in Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
//! CronJobs and Lists is injected (unless it opts out); everything else
//! passes through unchanged.

use serde_json::Value;

use crate::inject::{Decision, decide};
use crate::settings::InjectSettings;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {index}: not valid YAML: {problem}")]
    Yaml { index: usize, problem: String },
    #[error("document {index}: {problem}")]
    Patch { index: usize, problem: String },
}

/// Where each kind keeps its pod template.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn describe(object: &Value) -> String {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|namespace| !namespace.is_empty())
    {
        Some(namespace) => format!("{} {namespace}/{}", text("/kind"), text("/metadata/name")),
        None => format!("{} {}", text("/kind"), text("/metadata/name")),
    }
}

/// Injects one object (recursing into Lists); notes go to `notes`. An
/// object without a namespace gets `namespace`, and without either it is
/// refused: its proxy's identity names its namespace.
fn inject_object(
    object: &mut Value,
    settings: &InjectSettings,
    namespace: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind == "List" {
        for item in object
            .get_mut("items")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            inject_object(item, settings, namespace, notes)?;
        }
        return Ok(());
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(());
    };
    let own = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|own| !own.is_empty());
    let namespace = match (own, namespace) {
        (Some(own), Some(given)) if own != given => {
            return Err(format!(
                "{} is in namespace {own:?}, not {given:?} as --namespace says (as kubectl would, this is refused)",
                describe(object)
            ));
        }
        (Some(own), _) => own.to_string(),
        (None, Some(given)) => {
            if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                metadata.insert("namespace".into(), Value::String(given.to_string()));
            }
            given.to_string()
        }
        (None, None) => {
            return Err(format!(
                "{} has no metadata.namespace: pass --namespace NAMESPACE, the namespace it will be applied to \
                 (its proxy's SPIFFE identity names it)",
                describe(object)
            ));
        }
    };
    let name = describe(object);
    let Some(template) = object.pointer_mut(pointer) else {
        return Err(format!("{name} has no pod template at {pointer}"));
    };
    match decide(template, &namespace, true, settings) {
        Decision::Skip(reason) => notes.push(format!("{name}: not injected: {reason}")),
        Decision::Inject { patch, warnings } => {
            if settings.trust_anchors_pem.trim().is_empty() && needs_anchors(&patch) {
                return Err(format!(
                    "{name}: no trust anchors: its proxy would not start without them. Pass --trust-anchors FILE \
                     with the mesh's anchors, for example from the control plane's Secret: kubectl -n strait-system \
                     get secret strait-identity-generated -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ca.crt"
                ));
            }
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).map_err(|e| e.to_string())?;
            json_patch::patch(template, &patch.0).map_err(|e| format!("{name}: {e}"))?;
            notes.extend(warnings.into_iter().map(|w| format!("{name}: {w}")));
        }
    }
    Ok(())
}

/// Whether a patch gives a proxy mutual TLS, which needs trust anchors.
fn needs_anchors(patch: &[Value]) -> bool {
    patch.iter().any(|operation| {
        operation["value"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&operation["value"]))
            .filter_map(|container| container.get("env")?.as_array())
            .flatten()
            .any(|var| var["name"] == strait_contract::names::env::TRUST_ANCHORS)
    })
}

/// Injects every document of a multi-document YAML text. Returns the YAML
/// to print and notes (skips and warnings) for the user.
pub fn inject_yaml(
    text: &str,
    settings: &InjectSettings,
    namespace: Option<&str>,
) -> Result<(String, Vec<String>), OfflineError> {
    let mut out = String::new();
    let mut notes = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value: Value = serde::Deserialize::deserialize(document).map_err(|e| OfflineError::Yaml {
            index,
            problem: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let mut value = value;
        inject_object(&mut value, settings, namespace, &mut notes)
            .map_err(|problem| OfflineError::Patch { index, problem })?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&value).map_err(|e| OfflineError::Yaml {
            index,
            problem: e.to_string(),
        })?);
    }
    Ok((out, notes))
}
