//! Which endpoints are meshed, and as whom, as the identity service says:
//! proxies never read Pods themselves. A namespace's workloads are followed
//! from the first time the proxy talks to it; a bare pod IP is looked up on
//! its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use strait_contract::SpiffeId;
use strait_contract::identity_api::{Workload, WorkloadEvent};
use tokio::sync::watch;

use crate::identity::client::IdentityClient;

/// How long a connection waits for a namespace's workloads to be known.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(3);
/// How long a pod-IP lookup is trusted.
const IP_TTL: Duration = Duration::from_secs(10);

/// A followed namespace: its pods, and whether they have been listed yet.
struct Namespace {
    pods: RwLock<HashMap<String, Workload>>,
    synced: watch::Receiver<bool>,
}

pub struct Workloads {
    client: IdentityClient,
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
    by_ip: Mutex<HashMap<IpAddr, (Option<Workload>, Instant)>>,
    /// Bumped on every change to a followed namespace, so users of
    /// `pod()` know when to look again.
    generation: Arc<AtomicU64>,
}

/// The identity to expect from a workload, if it is meshed.
pub fn peer_identity(workload: &Workload) -> Option<SpiffeId> {
    workload
        .identity
        .as_deref()
        .filter(|_| workload.meshed)
        .and_then(|id| id.parse().ok())
}

impl Workloads {
    pub fn new(client: IdentityClient) -> Arc<Self> {
        Arc::new(Workloads {
            client,
            namespaces: Mutex::new(HashMap::new()),
            by_ip: Mutex::new(HashMap::new()),
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    fn follow(&self, namespace: &str) -> Arc<Namespace> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = namespaces.get(namespace) {
            return existing.clone();
        }
        let (synced_tx, synced) = watch::channel(false);
        let state = Arc::new(Namespace {
            pods: RwLock::new(HashMap::new()),
            synced,
        });
        namespaces.insert(namespace.to_string(), state.clone());
        let (client, name, followed) = (self.client.clone(), namespace.to_string(), state.clone());
        let generation = self.generation.clone();
        tokio::spawn(async move {
            let (first, max) = (Duration::from_millis(200), Duration::from_secs(10));
            let mut delays = crate::retry::delays(first, max);
            loop {
                match client.workloads(&format!("namespace={name}")).await {
                    Ok(events) => {
                        futures::pin_mut!(events);
                        while let Some(event) = events.next().await {
                            let mut pods = followed.pods.write().unwrap_or_else(PoisonError::into_inner);
                            match event {
                                Ok(WorkloadEvent::Snapshot { workloads }) => {
                                    *pods = workloads.into_iter().map(|w| (w.name.clone(), w)).collect();
                                    let _ = synced_tx.send(true);
                                    delays = crate::retry::delays(first, max);
                                }
                                Ok(WorkloadEvent::Update { workload }) => {
                                    pods.insert(workload.name.clone(), workload);
                                }
                                Ok(WorkloadEvent::Delete { name, .. }) => {
                                    pods.remove(&name);
                                }
                                Err(error) => {
                                    tracing::warn!(namespace = %name, %error, "workload stream broke");
                                    break;
                                }
                            }
                            generation.fetch_add(1, Ordering::Release);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(namespace = %name, %error, "cannot follow workloads; keeping what is known")
                    }
                }
                tokio::time::sleep(delays.next().unwrap_or(max)).await;
            }
        });
        state
    }

    /// Follows a namespace and waits (briefly) until its workloads are known.
    pub async fn ready(&self, namespace: &str) {
        let mut synced = self.follow(namespace).synced.clone();
        let _ = tokio::time::timeout(FIRST_SYNC_WAIT, synced.wait_for(|s| *s)).await;
    }

    /// Changes whenever what `pod()` answers may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A pod of a followed namespace.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Workload> {
        let state = self.follow(namespace);
        let pods = state.pods.read().unwrap_or_else(PoisonError::into_inner);
        pods.get(name).cloned()
    }

    /// The pod with this IP, if any.
    pub async fn by_ip(&self, ip: IpAddr) -> Option<Workload> {
        if let Some((workload, at)) = self
            .by_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .cloned()
            && at.elapsed() < IP_TTL
        {
            return workload;
        }
        let first = async {
            let events = self.client.workloads(&format!("ip={ip}")).await.ok()?;
            futures::pin_mut!(events);
            match events.next().await? {
                Ok(WorkloadEvent::Snapshot { workloads }) => Some(workloads.into_iter().next()),
                _ => None,
            }
        };
        let found = tokio::time::timeout(FIRST_SYNC_WAIT, first).await.ok().flatten()?;
        self.by_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ip, (found.clone(), Instant::now()));
        found
    }
}
