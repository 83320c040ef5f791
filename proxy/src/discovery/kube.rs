//! Discovery from the Kubernetes API with the kube crate: one cluster-wide
//! watch of Services maps ClusterIP:port to a Service port, and each Service
//! actually used gets its own watch of its EndpointSlices. Watches retry with
//! back-off and keep the last known state while the API server is away; a
//! stale watch (410 Gone) re-lists.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::endpoints::endpoint_set;
use super::{Destination, EndpointSet, Resolve, ServicePort, ServiceRef};
use crate::metrics::DiscoveryMetrics;

/// How long a connection waits for the first list of Services before it is
/// passed through as if it were not addressed to a Service.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
struct PortInfo {
    port: u16,
    name: String,
    app_protocol: Option<String>,
}

#[derive(Clone, Debug)]
struct ServiceInfo {
    service: ServiceRef,
    ports: Vec<PortInfo>,
}

/// One Service's slices and the endpoint set of each of its ports.
#[derive(Default)]
struct ServiceEndpoints {
    slices: HashMap<String, EndpointSlice>,
    ports: HashMap<String, watch::Sender<Arc<EndpointSet>>>,
}

impl ServiceEndpoints {
    fn publish(&self) {
        for (port_name, sender) in &self.ports {
            let set = endpoint_set(self.slices.values(), port_name);
            sender.send_if_modified(|current| {
                let changed = **current != set;
                if changed {
                    *current = Arc::new(set.clone());
                }
                changed
            });
        }
    }
}

pub struct KubeDiscovery {
    client: kube::Client,
    /// ClusterIP → Service, from the cluster-wide watch.
    services: RwLock<HashMap<IpAddr, ServiceInfo>>,
    synced: watch::Receiver<bool>,
    /// Services in use, each with its EndpointSlice watch.
    endpoints: Mutex<HashMap<ServiceRef, Arc<Mutex<ServiceEndpoints>>>>,
    metrics: DiscoveryMetrics,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn service_info(service: &Service) -> Option<(Vec<IpAddr>, ServiceInfo)> {
    let spec = service.spec.as_ref()?;
    let ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(PortInfo {
                port: u16::try_from(p.port).ok()?,
                name: p.name.clone().unwrap_or_default(),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let info = ServiceInfo {
        service: ServiceRef {
            namespace: service.metadata.namespace.clone().unwrap_or_default(),
            name: service.metadata.name.clone().unwrap_or_default(),
        },
        ports,
    };
    Some((ips, info))
}

impl KubeDiscovery {
    /// Starts the Service watch; EndpointSlice watches start on first use.
    pub fn start(client: kube::Client, metrics: DiscoveryMetrics) -> Arc<Self> {
        let (synced_tx, synced) = watch::channel(false);
        let discovery = Arc::new(KubeDiscovery {
            client,
            services: RwLock::new(HashMap::new()),
            synced,
            endpoints: Mutex::new(HashMap::new()),
            metrics,
        });
        tokio::spawn(Self::watch_services(Arc::downgrade(&discovery), synced_tx));
        discovery
    }

    async fn watch_services(this: std::sync::Weak<Self>, synced: watch::Sender<bool>) {
        let Some(client) = this.upgrade().map(|d| d.client.clone()) else {
            return;
        };
        let stream = watcher::watcher(Api::<Service>::all(client), watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut pending: HashMap<IpAddr, ServiceInfo> = HashMap::new();
        while let Some(event) = stream.next().await {
            let Some(discovery) = this.upgrade() else { return };
            let event = match event {
                Ok(event) => {
                    discovery.metrics.watch_ok("services");
                    event
                }
                Err(error) => {
                    tracing::warn!(%error, "Service watch failed; keeping the last known Services and retrying");
                    discovery.metrics.watch_failed("services");
                    continue;
                }
            };
            let mut services = discovery.services.write().unwrap_or_else(PoisonError::into_inner);
            match event {
                Event::Init => pending.clear(),
                Event::InitApply(service) => {
                    if let Some((ips, info)) = service_info(&service) {
                        pending.extend(ips.into_iter().map(|ip| (ip, info.clone())));
                    }
                }
                Event::InitDone => {
                    *services = std::mem::take(&mut pending);
                    let _ = synced.send(true);
                }
                Event::Apply(service) => {
                    let name = (service.metadata.namespace.clone(), service.metadata.name.clone());
                    services.retain(|_, info| {
                        (Some(&info.service.namespace), Some(&info.service.name)) != (name.0.as_ref(), name.1.as_ref())
                    });
                    if let Some((ips, info)) = service_info(&service) {
                        services.extend(ips.into_iter().map(|ip| (ip, info.clone())));
                    }
                }
                Event::Delete(service) => {
                    if let Some((ips, _)) = service_info(&service) {
                        for ip in ips {
                            services.remove(&ip);
                        }
                    }
                }
            }
        }
    }

    /// The endpoints of a Service, watching its slices from the first call.
    fn service_endpoints(self: &Arc<Self>, service: &ServiceRef) -> Arc<Mutex<ServiceEndpoints>> {
        let mut all = lock(&self.endpoints);
        if let Some(existing) = all.get(service) {
            return existing.clone();
        }
        let state = Arc::new(Mutex::new(ServiceEndpoints::default()));
        all.insert(service.clone(), state.clone());
        tokio::spawn(watch_slices(
            self.client.clone(),
            service.clone(),
            Arc::downgrade(&state),
            self.metrics.clone(),
        ));
        state
    }

    fn lookup(self: &Arc<Self>, orig_dst: SocketAddr) -> Destination {
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        let Some(info) = services.get(&orig_dst.ip()) else {
            return Destination::Passthrough;
        };
        let Some(port) = info.ports.iter().find(|p| p.port == orig_dst.port()) else {
            return Destination::Passthrough;
        };
        let (service, port) = (info.service.clone(), port.clone());
        drop(services);
        let state = self.service_endpoints(&service);
        let mut state = lock(&state);
        let receiver = match state.ports.get(&port.name) {
            Some(sender) => sender.subscribe(),
            None => {
                let set = endpoint_set(state.slices.values(), &port.name);
                let (sender, receiver) = watch::channel(Arc::new(set));
                state.ports.insert(port.name.clone(), sender);
                receiver
            }
        };
        Destination::Service(ServicePort {
            service,
            port: port.port,
            app_protocol: port.app_protocol,
            endpoints: receiver,
        })
    }
}

async fn watch_slices(
    client: kube::Client,
    service: ServiceRef,
    state: std::sync::Weak<Mutex<ServiceEndpoints>>,
    metrics: DiscoveryMetrics,
) {
    let api = Api::<EndpointSlice>::namespaced(client, &service.namespace);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", service.name));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut pending: HashMap<String, EndpointSlice> = HashMap::new();
    while let Some(event) = stream.next().await {
        let Some(state) = state.upgrade() else { return };
        let event = match event {
            Ok(event) => {
                metrics.watch_ok("endpointslices");
                event
            }
            Err(error) => {
                tracing::warn!(service = %format!("{}/{}", service.namespace, service.name), %error, "EndpointSlice watch failed; keeping the last known endpoints and retrying");
                metrics.watch_failed("endpointslices");
                continue;
            }
        };
        let name = |slice: &EndpointSlice| slice.metadata.name.clone().unwrap_or_default();
        let mut state = lock(&state);
        match event {
            Event::Init => pending.clear(),
            Event::InitApply(slice) => {
                pending.insert(name(&slice), slice);
            }
            Event::InitDone => {
                state.slices = std::mem::take(&mut pending);
                state.publish();
            }
            Event::Apply(slice) => {
                state.slices.insert(name(&slice), slice);
                state.publish();
            }
            Event::Delete(slice) => {
                state.slices.remove(&name(&slice));
                state.publish();
            }
        }
    }
}

impl Resolve for Arc<KubeDiscovery> {
    fn resolve(&self, orig_dst: SocketAddr) -> BoxFuture<'_, Destination> {
        Box::pin(async move {
            let mut synced = self.synced.clone();
            if !*synced.borrow() {
                let _ = tokio::time::timeout(FIRST_SYNC_WAIT, synced.wait_for(|s| *s)).await;
            }
            self.lookup(orig_dst)
        })
    }
}
