//! Which pods are meshed and as whom: the identity service is the one
//! place that watches Pods (whose specs can hold secrets); proxies ask it
//! about their endpoints instead.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use strait_contract::identity_api::{Workload, WorkloadEvent};
use strait_contract::names::{MESHED_LABEL, annotations};
use tokio::sync::{broadcast, watch};

pub fn workload(pod: &Pod) -> Workload {
    let metadata = &pod.metadata;
    let status = pod.status.clone().unwrap_or_default();
    let mut ips: Vec<String> = status.pod_ips.unwrap_or_default().into_iter().map(|ip| ip.ip).collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip);
    }
    let meshed = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MESHED_LABEL))
        .is_some_and(|v| v == "true");
    Workload {
        namespace: metadata.namespace.clone().unwrap_or_default(),
        name: metadata.name.clone().unwrap_or_default(),
        ips,
        meshed,
        identity: metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::IDENTITY))
            .cloned()
            .filter(|_| meshed),
    }
}

pub struct PodIndex {
    namespaces: RwLock<HashMap<String, HashMap<String, Workload>>>,
    /// Changes, by namespace, to every workload stream.
    events: broadcast::Sender<(String, WorkloadEvent)>,
    synced: watch::Receiver<bool>,
}

impl PodIndex {
    pub fn start(client: kube::Client) -> Arc<Self> {
        let (synced_tx, synced) = watch::channel(false);
        let index = Arc::new(PodIndex {
            namespaces: RwLock::new(HashMap::new()),
            events: broadcast::channel(4096).0,
            synced,
        });
        let weak = Arc::downgrade(&index);
        tokio::spawn(async move {
            let stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            let mut pending: HashMap<String, HashMap<String, Workload>> = HashMap::new();
            while let Some(event) = stream.next().await {
                let Some(index) = weak.upgrade() else { return };
                match event {
                    Ok(Event::Init) => pending.clear(),
                    Ok(Event::InitApply(pod)) => {
                        let workload = workload(&pod);
                        pending
                            .entry(workload.namespace.clone())
                            .or_default()
                            .insert(workload.name.clone(), workload);
                    }
                    Ok(Event::InitDone) => {
                        let namespaces: Vec<String> = {
                            let mut all = index.namespaces.write().unwrap_or_else(PoisonError::into_inner);
                            *all = std::mem::take(&mut pending);
                            all.keys().cloned().collect()
                        };
                        for namespace in namespaces {
                            let workloads = index.snapshot(&namespace);
                            let _ = index.events.send((namespace, WorkloadEvent::Snapshot { workloads }));
                        }
                        let _ = synced_tx.send(true);
                    }
                    Ok(Event::Apply(pod)) => index.apply(workload(&pod)),
                    Ok(Event::Delete(pod)) => index.delete(&workload(&pod)),
                    Err(error) => tracing::warn!(%error, "pod watch failed; keeping the last known pods"),
                }
            }
        });
        index
    }

    fn apply(&self, workload: Workload) {
        let mut all = self.namespaces.write().unwrap_or_else(PoisonError::into_inner);
        let pods = all.entry(workload.namespace.clone()).or_default();
        if pods.get(&workload.name) == Some(&workload) {
            return;
        }
        pods.insert(workload.name.clone(), workload.clone());
        let _ = self
            .events
            .send((workload.namespace.clone(), WorkloadEvent::Update { workload }));
    }

    fn delete(&self, workload: &Workload) {
        let mut all = self.namespaces.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(pods) = all.get_mut(&workload.namespace) {
            pods.remove(&workload.name);
        }
        let event = WorkloadEvent::Delete {
            namespace: workload.namespace.clone(),
            name: workload.name.clone(),
        };
        let _ = self.events.send((workload.namespace.clone(), event));
    }

    pub fn snapshot(&self, namespace: &str) -> Vec<Workload> {
        let all = self.namespaces.read().unwrap_or_else(PoisonError::into_inner);
        let mut workloads: Vec<Workload> = all
            .get(namespace)
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default();
        workloads.sort_by(|a, b| a.name.cmp(&b.name));
        workloads
    }

    /// The pods that have this IP (one, normally), across namespaces.
    pub fn with_ip(&self, ip: &str) -> Vec<Workload> {
        let all = self.namespaces.read().unwrap_or_else(PoisonError::into_inner);
        all.values()
            .flat_map(|pods| pods.values())
            .filter(|w| w.ips.iter().any(|i| i == ip))
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(String, WorkloadEvent)> {
        self.events.subscribe()
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list of pods is in.
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }
}
