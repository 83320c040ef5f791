//! The lab's kubelet: runs every pod in the store as local processes in its
//! own namespaces and reports their status back.

pub mod cni;
pub mod container;
pub mod image;
pub mod nsenter;
pub mod pod;
pub mod probe;
pub mod sandbox;
pub mod security;
pub mod volumes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use crate::apiserver::auth::Tokens;
use crate::apiserver::resource::Resource;
use crate::apiserver::store::{EventType, Store};
use crate::paths::LabPaths;
use image::ImageStore;
use pod::{Message, PodRunner};

pub struct Kubelet {
    pub store: Arc<Store>,
    pub tokens: Arc<Tokens>,
    pub paths: LabPaths,
    /// The node's CNI configuration and plugins: pod networks.
    pub cni: cni::Cni,
    /// The node's images: strait's own, pulled from the lab's registry.
    pub images: ImageStore,
    /// The runner of each pod, by uid.
    pods: Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>,
}

fn uid_of(pod: &Value) -> String {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Kubelet {
    pub fn new(store: Arc<Store>, tokens: Arc<Tokens>, paths: LabPaths, cni: cni::Cni) -> Arc<Self> {
        Arc::new(Kubelet {
            store,
            tokens,
            images: ImageStore::new(&paths.images(), image::registry()),
            paths,
            cni,
            pods: Mutex::new(HashMap::new()),
        })
    }

    fn runners(&self) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Message>>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn forget(&self, uid: &str) {
        self.runners().remove(uid);
    }

    /// Runs pods as they appear, stops them as they are deleted.
    pub async fn run(self: Arc<Self>) {
        let pods = Resource::named("pods");
        let mut events = self.store.subscribe();
        let (existing, _) = self.store.list(pods, None);
        for pod in existing {
            self.observe(&pod);
        }
        loop {
            match events.recv().await {
                Ok(event) if event.resource == pods => match event.kind {
                    EventType::Deleted => self.send(&uid_of(&event.object), Message::Kill),
                    _ => self.observe(&event.object),
                },
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for pod in self.store.list(pods, None).0 {
                        self.observe(&pod);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn observe(self: &Arc<Self>, pod: &Value) {
        let uid = uid_of(pod);
        let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
        let known = self.runners().contains_key(&uid);
        if !known {
            let finished = matches!(
                pod.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            if finished && (deleting || pod.pointer("/status/podIP").is_some()) {
                // A completed pod, or one from before a restart: nothing to run.
                if deleting {
                    let name = pod
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let namespace = pod
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let _ = self.store.remove(Resource::named("pods"), namespace, name);
                }
                return;
            }
            match PodRunner::new(self.clone(), pod.clone()) {
                Ok((runner, messages)) => {
                    self.runners().insert(uid.clone(), messages);
                    tokio::spawn(runner.run());
                }
                Err(error) => tracing::warn!(%error, "cannot run a pod whose spec does not parse"),
            }
        }
        if deleting {
            let grace = pod
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30);
            self.send(
                &uid,
                Message::Terminate {
                    grace: Duration::from_secs(grace),
                },
            );
        }
    }

    fn send(&self, uid: &str, message: Message) {
        if let Some(runner) = self.runners().get(uid) {
            let _ = runner.send(message);
        }
    }

    /// Crashes a pod: its processes die at once and the pod object goes, so
    /// its controller replaces it.
    pub fn kill(&self, uid: &str) -> bool {
        let known = self.runners().contains_key(uid);
        self.send(uid, Message::Kill);
        known
    }

    pub fn running(&self) -> usize {
        self.runners().len()
    }
}
