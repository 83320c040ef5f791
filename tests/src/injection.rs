//! How pods of labelled namespaces get the mesh: the mutating admission
//! step the lab's API server runs on every new pod. The mutation itself is
//! strait-injector's, applied in-process.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use strait_contract::names::INJECT_LABEL;
use strait_injector::InjectSettings;
use strait_injector::inject::{Decision, decide};

use crate::apiserver::admission::{Mutated, PodMutator};
use crate::apiserver::error::ApiError;
use crate::apiserver::store::name_of;

struct BuiltIn {
    settings: InjectSettings,
}

impl PodMutator for BuiltIn {
    fn mutate<'a>(&'a self, mut pod: Value, namespace: &'a Value) -> BoxFuture<'a, Result<Mutated, ApiError>> {
        Box::pin(async move {
            let label = format!("/metadata/labels/{}", INJECT_LABEL.replace('/', "~1"));
            let enabled = namespace.pointer(&label).and_then(Value::as_str) == Some("enabled");
            match decide(&pod, name_of(namespace), enabled, &self.settings) {
                Decision::Skip(_) => Ok(Mutated {
                    pod,
                    warnings: Vec::new(),
                }),
                Decision::Inject { patch, warnings } => {
                    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch))
                        .map_err(|e| ApiError::internal(format!("the injector's patch does not parse: {e}")))?;
                    json_patch::patch(&mut pod, &patch.0)
                        .map_err(|e| ApiError::internal(format!("the injector's patch does not apply: {e}")))?;
                    Ok(Mutated { pod, warnings })
                }
            }
        })
    }
}

/// The pod mutator the lab's daemon installs.
pub fn pod_mutator() -> Option<Arc<dyn PodMutator>> {
    Some(Arc::new(BuiltIn {
        settings: InjectSettings::default(),
    }))
}
