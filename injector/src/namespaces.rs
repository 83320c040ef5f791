//! Which namespaces turn injection on: a cache of namespace labels, kept by
//! a watch, so the webhook answers from memory.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use strait_contract::names::INJECT_LABEL;
use tokio::sync::watch;

use crate::webhook::NamespaceLabels;

pub struct NamespaceCache {
    enabled: RwLock<HashMap<String, bool>>,
    synced: watch::Receiver<bool>,
}

fn enabled(namespace: &Namespace) -> (String, bool) {
    let name = namespace.metadata.name.clone().unwrap_or_default();
    let on = namespace
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "enabled");
    (name, on)
}

impl NamespaceCache {
    /// Starts watching namespaces.
    pub fn start(client: kube::Client) -> Arc<Self> {
        let (synced_tx, synced) = watch::channel(false);
        let cache = Arc::new(NamespaceCache {
            enabled: RwLock::new(HashMap::new()),
            synced,
        });
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let stream = watcher::watcher(Api::<Namespace>::all(client), watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            let mut pending = HashMap::new();
            while let Some(event) = stream.next().await {
                let Some(cache) = weak.upgrade() else { return };
                let mut map = cache.enabled.write().unwrap_or_else(PoisonError::into_inner);
                match event {
                    Ok(Event::Init) => pending.clear(),
                    Ok(Event::InitApply(namespace)) => {
                        let (name, on) = enabled(&namespace);
                        pending.insert(name, on);
                    }
                    Ok(Event::InitDone) => {
                        *map = std::mem::take(&mut pending);
                        let _ = synced_tx.send(true);
                    }
                    Ok(Event::Apply(namespace)) => {
                        let (name, on) = enabled(&namespace);
                        map.insert(name, on);
                    }
                    Ok(Event::Delete(namespace)) => {
                        map.remove(&enabled(&namespace).0);
                    }
                    Err(error) => tracing::warn!(%error, "namespace watch failed; keeping the last known labels"),
                }
            }
        });
        cache
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }
}

impl NamespaceLabels for NamespaceCache {
    fn injection_enabled(&self, namespace: &str) -> Option<bool> {
        self.enabled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .copied()
    }
}
