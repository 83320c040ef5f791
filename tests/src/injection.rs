//! How pods of labelled namespaces get the mesh: the mutating admission
//! step the lab's API server runs on every new pod.

use std::sync::Arc;

use crate::apiserver::admission::PodMutator;

/// The pod mutator the lab's daemon installs.
pub fn pod_mutator() -> Option<Arc<dyn PodMutator>> {
    None
}
