//! The cluster as the destination service needs it (Services, their
//! EndpointSlices, and which pods are meshed as whom), and the view of each
//! destination some proxy follows, recomputed only when something it
//! depends on changes.
//!
//! A followed destination is one `watch` channel: every subscriber of it
//! shares the latest view, and a change wakes only the subscribers of the
//! destinations it touches. Memory: the cluster's Services, slices and pod
//! addresses once, plus one view per followed destination (its endpoints),
//! whatever the number of subscribers.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use strait_api::destination::v1::{Endpoint, RouteRule, ServicePort};
use strait_contract::names::{MESHED_LABEL, annotations};
use strait_contract::{PortSet, SpiffeId};
use tokio::sync::watch;

use super::routes::{self, Route, RouteKey, TableKey};
use super::view::View;

/// An object by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        ObjectKey {
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// What a Service contributes: its ClusterIPs and TCP ports.
#[derive(Clone, Debug, PartialEq)]
struct ServiceInfo {
    uid: Option<String>,
    ips: Vec<IpAddr>,
    ports: Vec<ServicePort>,
}

/// One EndpointSlice, reduced to what views are made of.
#[derive(Clone, Debug, PartialEq)]
struct SliceInfo {
    /// The UID of the Service that owns it (its controller reference), when
    /// it has one: a slice of a Service deleted and made again under the
    /// same name lingers until garbage collection, and is not the new one's.
    owner: Option<String>,
    /// Port name → port number.
    ports: Vec<(String, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
struct SliceEndpoint {
    ips: Vec<IpAddr>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone: String,
    pod: Option<ObjectKey>,
}

/// What the index keeps of a pod: its addresses, and whether and as whom
/// it is meshed.
#[derive(Clone, Debug, PartialEq)]
struct Workload {
    ips: Vec<IpAddr>,
    /// It runs the proxy (it carries `strait.io/meshed=true`).
    meshed: bool,
    /// Its SPIFFE ID (the `strait.io/identity` annotation), when meshed.
    identity: Option<String>,
}

/// What the index keeps of `pod`. Its identity is the SPIFFE ID of its
/// ServiceAccount, the one the identity service issues it certificates for;
/// the `strait.io/identity` annotation says only that its proxy has one
/// (a pod with mutual TLS disabled has none), since whoever can edit the pod
/// can edit the annotation.
fn workload(pod: &Pod, trust_domain: &str) -> Workload {
    let metadata = &pod.metadata;
    let status = pod.status.as_ref();
    // A finished pod (a Job's) keeps its `podIP` in status though the
    // address has gone back to the node's pool and may be a new pod's; a
    // host-network pod's address is its node's, shared by many. Neither
    // says who is at the address.
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    let meshed = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MESHED_LABEL))
        .is_some_and(|v| v == "true");
    if finished || host_network {
        ips.clear();
    }
    Workload {
        ips,
        meshed,
        identity: metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(annotations::IDENTITY))
            .then(|| {
                let account = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref())
                    .unwrap_or("default");
                SpiffeId::new(trust_domain, metadata.namespace.as_deref().unwrap_or_default(), account).to_string()
            })
            .filter(|_| meshed),
    }
}

/// What a followed destination's view was made from, to know when to make
/// it again.
#[derive(Default)]
struct Depends {
    service: Option<ObjectKey>,
    pods: HashSet<ObjectKey>,
    /// Endpoint addresses whose slice names no pod: whichever pod comes to
    /// have one is that endpoint's.
    addresses: HashSet<IpAddr>,
}

struct Followed {
    view: watch::Sender<Arc<View>>,
    depends: Depends,
}

#[derive(Default)]
struct State {
    services: HashMap<ObjectKey, ServiceInfo>,
    by_cluster_ip: HashMap<IpAddr, ObjectKey>,
    /// By Service, then by slice name.
    slices: HashMap<ObjectKey, HashMap<String, SliceInfo>>,
    /// The Service each slice belongs to, by slice.
    slice_service: HashMap<ObjectKey, ObjectKey>,
    pods: HashMap<ObjectKey, Workload>,
    pod_by_ip: HashMap<IpAddr, ObjectKey>,
    followed: HashMap<SocketAddr, Followed>,
    /// Gateway API routes (HTTPRoute, GRPCRoute), by kind and name.
    routes: HashMap<RouteKey, Route>,
    /// Gateway API ReferenceGrants, by namespace and name.
    grants: HashMap<ObjectKey, routes::Grant>,
    /// The routes some proxy follows, by destination and the proxy's
    /// namespace (GAMMA routes depend on the client's namespace).
    followed_routes: HashMap<(SocketAddr, String), watch::Sender<Arc<Vec<RouteRule>>>>,
}

/// The destination service's picture of the cluster.
pub struct Index {
    state: Mutex<State>,
    /// The mesh's trust domain, in the SPIFFE IDs of meshed pods.
    trust_domain: String,
    /// Changes whenever a route or a Service changes, so that route
    /// status can be written again (`super::status`).
    routes_changed: watch::Sender<u64>,
}

/// What changed, for deciding which followed destinations to recompute.
enum Touched {
    Service { key: ObjectKey, ips: Vec<IpAddr> },
    Pod { key: ObjectKey, ips: Vec<IpAddr> },
    Everything,
}

impl Index {
    /// An empty picture, for a mesh of `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        Index {
            state: Mutex::new(State::default()),
            trust_domain: trust_domain.to_string(),
            routes_changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows `address`: the receiver holds its view now and every later
    /// one. The destination is forgotten once its last receiver is gone.
    pub fn follow(&self, address: SocketAddr) -> watch::Receiver<Arc<View>> {
        let mut state = self.lock();
        state.followed.retain(|_, f| f.view.receiver_count() > 0);
        if let Some(followed) = state.followed.get(&address) {
            return followed.view.subscribe();
        }
        let (view, depends) = state.view(address);
        let (sender, receiver) = watch::channel(Arc::new(view));
        state.followed.insert(address, Followed { view: sender, depends });
        receiver
    }

    /// How many destinations are followed now.
    pub fn followed(&self) -> usize {
        let mut state = self.lock();
        state.followed.retain(|_, f| f.view.receiver_count() > 0);
        state.followed.len()
    }

    pub fn apply_service(&self, service: &Service) {
        let key = ObjectKey::of(&service.metadata);
        let info = service_info(service);
        let mut state = self.lock();
        let mut ips = state.remove_service(&key);
        if let Some(info) = info {
            ips.extend(info.ips.iter().copied());
            for ip in &info.ips {
                state.by_cluster_ip.insert(*ip, key.clone());
            }
            state.services.insert(key.clone(), info);
        }
        state.refresh(&Touched::Service { key, ips });
        self.routes_touched(&mut state);
    }

    pub fn delete_service(&self, service: &Service) {
        let key = ObjectKey::of(&service.metadata);
        let mut state = self.lock();
        let ips = state.remove_service(&key);
        state.refresh(&Touched::Service { key, ips });
        self.routes_touched(&mut state);
    }

    pub fn apply_slice(&self, slice: &EndpointSlice) {
        let key = ObjectKey::of(&slice.metadata);
        let mut state = self.lock();
        let mut touched = state.remove_slice(&key);
        if let Some(service) = slice_service(slice) {
            state
                .slices
                .entry(service.clone())
                .or_default()
                .insert(key.name.clone(), slice_info(slice));
            state.slice_service.insert(key, service.clone());
            touched.push(service);
        }
        for service in touched {
            state.refresh(&Touched::Service {
                key: service,
                ips: Vec::new(),
            });
        }
    }

    pub fn delete_slice(&self, slice: &EndpointSlice) {
        let key = ObjectKey::of(&slice.metadata);
        let mut state = self.lock();
        for service in state.remove_slice(&key) {
            state.refresh(&Touched::Service {
                key: service,
                ips: Vec::new(),
            });
        }
    }

    pub fn apply_pod(&self, pod: &Pod) {
        let key = ObjectKey::of(&pod.metadata);
        let workload = workload(pod, &self.trust_domain);
        let mut state = self.lock();
        // Most pod updates are status changes that leave its addresses and
        // identity as they were: no view changes then.
        if state.pods.get(&key) == Some(&workload) {
            return;
        }
        let mut ips = state.remove_pod(&key);
        let new_ips = workload.ips.clone();
        for ip in &new_ips {
            state.pod_by_ip.insert(*ip, key.clone());
        }
        ips.extend(new_ips);
        state.pods.insert(key.clone(), workload);
        state.refresh(&Touched::Pod { key, ips });
    }

    pub fn delete_pod(&self, pod: &Pod) {
        let key = ObjectKey::of(&pod.metadata);
        let mut state = self.lock();
        let ips = state.remove_pod(&key);
        state.refresh(&Touched::Pod { key, ips });
    }

    /// Replaces every Service (a watch's relist).
    pub fn replace_services(&self, services: &[Service]) {
        let mut state = self.lock();
        state.services.clear();
        state.by_cluster_ip.clear();
        for service in services {
            if let Some(info) = service_info(service) {
                let key = ObjectKey::of(&service.metadata);
                for ip in &info.ips {
                    state.by_cluster_ip.insert(*ip, key.clone());
                }
                state.services.insert(key, info);
            }
        }
        state.refresh(&Touched::Everything);
        self.routes_touched(&mut state);
    }

    /// Replaces every EndpointSlice (a watch's relist).
    pub fn replace_slices(&self, slices: &[EndpointSlice]) {
        let mut state = self.lock();
        state.slices.clear();
        state.slice_service.clear();
        for slice in slices {
            if let Some(service) = slice_service(slice) {
                let key = ObjectKey::of(&slice.metadata);
                state
                    .slices
                    .entry(service.clone())
                    .or_default()
                    .insert(key.name.clone(), slice_info(slice));
                state.slice_service.insert(key, service);
            }
        }
        state.refresh(&Touched::Everything);
    }

    /// Replaces every Pod (a watch's relist).
    pub fn replace_pods(&self, pods: &[Pod]) {
        let mut state = self.lock();
        state.pods.clear();
        state.pod_by_ip.clear();
        for pod in pods {
            let key = ObjectKey::of(&pod.metadata);
            let workload = workload(pod, &self.trust_domain);
            for ip in &workload.ips {
                state.pod_by_ip.insert(*ip, key.clone());
            }
            state.pods.insert(key, workload);
        }
        state.refresh(&Touched::Everything);
    }
}

/// Routes: what proxies are sent of them, and what their status is.
impl Index {
    /// Follows the routes that apply to requests from a proxy in
    /// `client_namespace` to `address` (empty when it is no Service port,
    /// or none apply). Forgotten once its last receiver is gone.
    pub fn follow_routes(&self, address: SocketAddr, client_namespace: &str) -> watch::Receiver<Arc<Vec<RouteRule>>> {
        let mut state = self.lock();
        state.followed_routes.retain(|_, f| f.receiver_count() > 0);
        let key = (address, client_namespace.to_string());
        if let Some(followed) = state.followed_routes.get(&key) {
            return followed.subscribe();
        }
        let table = state.route_table(address, client_namespace);
        let (sender, receiver) = watch::channel(Arc::new(table));
        state.followed_routes.insert(key, sender);
        receiver
    }

    /// A route was made or changed.
    pub fn apply_route(&self, route: Route) {
        let mut state = self.lock();
        if state.routes.get(&route.key) == Some(&route) {
            return;
        }
        state.routes.insert(route.key.clone(), route);
        self.routes_touched(&mut state);
    }

    /// A route was deleted.
    pub fn delete_route(&self, key: &RouteKey) {
        let mut state = self.lock();
        if state.routes.remove(key).is_some() {
            self.routes_touched(&mut state);
        }
    }

    /// Replaces every route of `kind` (a watch's relist).
    pub fn replace_routes(&self, kind: routes::RouteKind, listed: Vec<Route>) {
        let mut state = self.lock();
        state.routes.retain(|key, _| key.kind != kind);
        for route in listed {
            state.routes.insert(route.key.clone(), route);
        }
        self.routes_touched(&mut state);
    }

    /// A ReferenceGrant was made or changed.
    pub fn apply_grant(&self, key: ObjectKey, grant: routes::Grant) {
        let mut state = self.lock();
        if state.grants.get(&key) == Some(&grant) {
            return;
        }
        state.grants.insert(key, grant);
        self.routes_touched(&mut state);
    }

    /// A ReferenceGrant was deleted.
    pub fn delete_grant(&self, key: &ObjectKey) {
        let mut state = self.lock();
        if state.grants.remove(key).is_some() {
            self.routes_touched(&mut state);
        }
    }

    /// Replaces every ReferenceGrant (a watch's relist).
    pub fn replace_grants(&self, listed: Vec<(ObjectKey, routes::Grant)>) {
        let mut state = self.lock();
        state.grants = listed.into_iter().collect();
        self.routes_touched(&mut state);
    }

    /// Tells when routes or Services changed: the value changes then.
    pub fn routes_changed(&self) -> watch::Receiver<u64> {
        self.routes_changed.subscribe()
    }

    /// The status patch of each route whose stored status is not what it
    /// is now (see [`routes::status_patch`]); `now` is the RFC 3339 time
    /// for conditions that change.
    pub fn route_status_patches(&self, now: &str) -> Vec<(RouteKey, serde_json::Value)> {
        let state = self.lock();
        let mut patches: Vec<(RouteKey, serde_json::Value)> = state
            .routes
            .values()
            .filter_map(|route| {
                let computed = routes::statuses(route, state.routes.values(), &*state);
                routes::status_patch(route, &computed, now).map(|patch| (route.key.clone(), patch))
            })
            .collect();
        patches.sort_by(|a, b| a.0.cmp(&b.0));
        patches
    }

    /// Makes every followed route table again, and wakes the status writer.
    fn routes_touched(&self, state: &mut State) {
        state.followed_routes.retain(|_, f| f.receiver_count() > 0);
        let keys: Vec<(SocketAddr, String)> = state.followed_routes.keys().cloned().collect();
        for key in keys {
            let table = state.route_table(key.0, &key.1);
            if let Some(sender) = state.followed_routes.get(&key) {
                sender.send_if_modified(|current| {
                    let changed = **current != table;
                    if changed {
                        *current = Arc::new(table);
                    }
                    changed
                });
            }
        }
        self.routes_changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl routes::Services for State {
    fn address(&self, service: &ObjectKey, port: u16, like: &SocketAddr) -> Option<SocketAddr> {
        let info = self.services.get(service)?;
        info.ports.iter().find(|p| p.port == u32::from(port))?;
        let ip = info.ips.iter().find(|ip| ip.is_ipv4() == like.is_ipv4())?;
        Some(SocketAddr::new(*ip, port))
    }

    fn grants(&self, kind: routes::RouteKind, from_namespace: &str, service: &ObjectKey) -> bool {
        self.grants
            .values()
            .any(|grant| grant.allows(kind, from_namespace, service))
    }

    fn ports(&self, service: &ObjectKey) -> Option<Vec<(u16, String)>> {
        let info = self.services.get(service)?;
        Some(
            info.ports
                .iter()
                .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.port_name.clone())))
                .collect(),
        )
    }
}

impl State {
    /// The route table of `address` for a client in `client_namespace`.
    fn route_table(&self, address: SocketAddr, client_namespace: &str) -> Vec<RouteRule> {
        let Some(service) = self.by_cluster_ip.get(&address.ip()) else {
            return Vec::new();
        };
        let Some(port) = self
            .services
            .get(service)
            .and_then(|info| info.ports.iter().find(|p| p.port == u32::from(address.port())))
        else {
            return Vec::new();
        };
        let key = TableKey {
            service: service.clone(),
            port: address.port(),
            port_name: port.port_name.clone(),
            client_namespace: client_namespace.to_string(),
        };
        routes::table(&key, &address, self.routes.values(), self)
    }

    /// Forgets a Service; returns its ClusterIPs.
    fn remove_service(&mut self, key: &ObjectKey) -> Vec<IpAddr> {
        let Some(old) = self.services.remove(key) else {
            return Vec::new();
        };
        for ip in &old.ips {
            if self.by_cluster_ip.get(ip) == Some(key) {
                self.by_cluster_ip.remove(ip);
            }
        }
        old.ips
    }

    /// Forgets a slice; returns the Service it belonged to.
    fn remove_slice(&mut self, key: &ObjectKey) -> Vec<ObjectKey> {
        let Some(service) = self.slice_service.remove(key) else {
            return Vec::new();
        };
        if let Some(slices) = self.slices.get_mut(&service) {
            slices.remove(&key.name);
            if slices.is_empty() {
                self.slices.remove(&service);
            }
        }
        vec![service]
    }

    /// Forgets a pod; returns its addresses.
    fn remove_pod(&mut self, key: &ObjectKey) -> Vec<IpAddr> {
        let Some(old) = self.pods.remove(key) else {
            return Vec::new();
        };
        for ip in &old.ips {
            if self.pod_by_ip.get(ip) == Some(key) {
                self.pod_by_ip.remove(ip);
            }
        }
        old.ips
    }

    /// Makes again the views that `touched` can change; their subscribers
    /// are woken only if a view did change.
    fn refresh(&mut self, touched: &Touched) {
        self.followed.retain(|_, f| f.view.receiver_count() > 0);
        let stale: Vec<SocketAddr> = self
            .followed
            .iter()
            .filter(|(address, followed)| match touched {
                Touched::Everything => true,
                Touched::Service { key, ips } => {
                    followed.depends.service.as_ref() == Some(key) || ips.contains(&address.ip())
                }
                Touched::Pod { key, ips } => {
                    followed.depends.pods.contains(key)
                        || ips
                            .iter()
                            .any(|ip| *ip == address.ip() || followed.depends.addresses.contains(ip))
                }
            })
            .map(|(address, _)| *address)
            .collect();
        for address in stale {
            let (view, depends) = self.view(address);
            if let Some(followed) = self.followed.get_mut(&address) {
                followed.depends = depends;
                followed.view.send_if_modified(|current| {
                    let changed = **current != view;
                    if changed {
                        *current = Arc::new(view);
                    }
                    changed
                });
            }
        }
    }

    /// The view of `address` now, and what it was made from.
    fn view(&self, address: SocketAddr) -> (View, Depends) {
        let mut depends = Depends::default();
        let service_port = self.by_cluster_ip.get(&address.ip()).and_then(|key| {
            let service = self.services.get(key)?;
            let port = service.ports.iter().find(|p| p.port == u32::from(address.port()))?;
            Some((key, service.uid.as_ref(), port))
        });
        let Some((key, uid, port)) = service_port else {
            // Not a Service port: a pod IP is that pod; anything else has
            // nothing to tell.
            let mut view = View::default();
            if let Some(pod) = self.pod_by_ip.get(&address.ip()) {
                depends.pods.insert(pod.clone());
                let endpoint = Endpoint {
                    address: address.to_string(),
                    ready: true,
                    serving: true,
                    ..self.pod_endpoint(pod)
                };
                view.endpoints.insert(address, endpoint);
            }
            return (view, depends);
        };
        depends.service = Some(key.clone());
        let mut endpoints = BTreeMap::new();
        let current = |slice: &&SliceInfo| match (&slice.owner, uid) {
            (Some(owner), Some(uid)) => owner == uid,
            _ => true,
        };
        for slice in self
            .slices
            .get(key)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(current)
        {
            let Some(number) = slice
                .ports
                .iter()
                .find(|(name, _)| *name == port.port_name)
                .map(|(_, number)| *number)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // A slice written by hand (a Service without a selector) may
                // name no pod; an address that is a pod's is still that pod.
                if endpoint.pod.is_none() {
                    depends.addresses.extend(endpoint.ips.iter().copied());
                }
                let pod = endpoint
                    .pod
                    .clone()
                    .or_else(|| endpoint.ips.iter().find_map(|ip| self.pod_by_ip.get(ip).cloned()));
                let of_pod = match &pod {
                    Some(pod) => {
                        depends.pods.insert(pod.clone());
                        self.pod_endpoint(pod)
                    }
                    None => Endpoint::default(),
                };
                // A dual-stack Service has a slice per family; a ClusterIP
                // of one family is served by endpoints of that family, as
                // kube-proxy does.
                for ip in endpoint.ips.iter().filter(|ip| ip.is_ipv4() == address.is_ipv4()) {
                    let addr = SocketAddr::new(*ip, number);
                    let candidate = Endpoint {
                        address: addr.to_string(),
                        ready: endpoint.ready,
                        serving: endpoint.serving,
                        terminating: endpoint.terminating,
                        zone: endpoint.zone.clone(),
                        ..of_pod.clone()
                    };
                    // An endpoint can stand in two slices for a while (the
                    // controller moving it): the most usable copy wins,
                    // whatever order the slices are read in.
                    match endpoints.entry(addr) {
                        Entry::Vacant(entry) => {
                            entry.insert(candidate);
                        }
                        Entry::Occupied(mut entry) => {
                            if usability(&candidate) > usability(entry.get()) {
                                entry.insert(candidate);
                            }
                        }
                    }
                }
            }
        }
        (
            View {
                service: Some(port.clone()),
                endpoints,
            },
            depends,
        )
    }

    /// What an endpoint says of its pod: names, and whether and as whom it
    /// is meshed.
    fn pod_endpoint(&self, pod: &ObjectKey) -> Endpoint {
        let workload = self.pods.get(pod);
        Endpoint {
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            meshed: workload.is_some_and(|w| w.meshed),
            identity: workload.and_then(|w| w.identity.clone()).unwrap_or_default(),
            ..Endpoint::default()
        }
    }
}

/// How usable an endpoint's conditions make it, for choosing between two
/// copies of one address: ready, then serving, then not terminating, then
/// (for a stable choice) the pod's name.
fn usability(endpoint: &Endpoint) -> (bool, bool, bool, &str, &str) {
    (
        endpoint.ready,
        endpoint.serving,
        !endpoint.terminating,
        &endpoint.pod_namespace,
        &endpoint.pod_name,
    )
}

/// A Service's ClusterIPs and TCP ports; `None` for one without a
/// ClusterIP (headless, ExternalName): its addresses are its pods'.
fn service_info(service: &Service) -> Option<ServiceInfo> {
    let spec = service.spec.as_ref()?;
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    let key = ObjectKey::of(&service.metadata);
    let opaque = opaque_ports(service, &key);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePort {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                port: u32::from(u16::try_from(p.port).ok().filter(|&n| n != 0)?),
                port_name: p.name.clone().unwrap_or_default(),
                app_protocol: p.app_protocol.clone().unwrap_or_default(),
                opaque: u16::try_from(p.port).is_ok_and(|n| opaque.contains(n)),
            })
        })
        .collect();
    Some(ServiceInfo {
        uid: service.metadata.uid.clone(),
        ips,
        ports,
    })
}

/// The ports a Service declares opaque (annotation `strait.io/opaque-ports`,
/// the pods' syntax). One that cannot be read declares none, and says why.
fn opaque_ports(service: &Service, key: &ObjectKey) -> PortSet {
    let Some(value) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::OPAQUE_PORTS))
    else {
        return PortSet::default();
    };
    PortSet::parse(value).unwrap_or_else(|error| {
        tracing::warn!(
            service = %format!("{}/{}", key.namespace, key.name),
            annotation = annotations::OPAQUE_PORTS,
            %value,
            %error,
            "ignoring the Service's opaque ports: not a comma list of ports and ranges a-b"
        );
        PortSet::default()
    })
}

/// The Service a slice belongs to (label `kubernetes.io/service-name`).
fn slice_service(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
    Some(ObjectKey {
        namespace: slice.metadata.namespace.clone().unwrap_or_default(),
        name: name.clone(),
    })
}

fn slice_info(slice: &EndpointSlice) -> SliceInfo {
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|endpoint| {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Unknown conditions as the API documents them.
            let ready = conditions.ready.unwrap_or(true);
            SliceEndpoint {
                ips: endpoint.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                zone: endpoint.zone.clone().unwrap_or_default(),
                pod: endpoint
                    .target_ref
                    .as_ref()
                    .filter(|t| t.kind.as_deref() == Some("Pod"))
                    .map(|t| ObjectKey {
                        namespace: t.namespace.clone().unwrap_or_default(),
                        name: t.name.clone().unwrap_or_default(),
                    }),
            }
        })
        .collect();
    let owner = slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.kind == "Service" && owner.controller == Some(true))
        .map(|owner| owner.uid.clone());
    SliceInfo {
        owner,
        ports,
        endpoints,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "mesh"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports},
        }))
        .expect("a Service")
    }

    fn slice(name: &str, service: &str, port: (&str, u16), endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "mesh", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice")
    }

    fn pod(name: &str, ip: &str, meshed: bool) -> Pod {
        let labels = if meshed {
            json!({"strait.io/meshed": "true"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "mesh", "labels": labels,
                "annotations": {"strait.io/identity": "spiffe://cluster.local/ns/mesh/sa/default"},
            },
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("a Pod")
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    fn summary(view: &View) -> Vec<String> {
        view.endpoints
            .values()
            .map(|e| {
                format!(
                    "{} ready={} meshed={} {} {}",
                    e.address, e.ready, e.meshed, e.pod_name, e.identity
                )
            })
            .collect()
    }

    #[test]
    fn a_service_port_is_its_slices_endpoints_with_their_pods_identities() {
        let index = Index::new("cluster.local");
        index.apply_service(&service(
            "grpc",
            "198.19.0.10",
            json!([{"name": "grpc", "port": 50051, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"}]),
        ));
        index.apply_slice(&slice(
            "grpc-a",
            "grpc",
            ("grpc", 9000),
            json!([
                {"addresses": ["198.18.1.2"], "conditions": {"ready": true}, "zone": "a",
                 "targetRef": {"kind": "Pod", "namespace": "mesh", "name": "grpc-1"}},
                {"addresses": ["198.18.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "targetRef": {"kind": "Pod", "namespace": "mesh", "name": "grpc-2"}},
            ]),
        ));
        index.apply_pod(&pod("grpc-1", "198.18.1.2", true));
        index.apply_pod(&pod("grpc-2", "198.18.1.3", false));
        let view = index.follow(addr("198.19.0.10:50051"));
        let view = view.borrow().clone();
        let service = view.service.clone().expect("a Service port");
        assert_eq!(
            (
                service.name.as_str(),
                service.port,
                service.port_name.as_str(),
                service.app_protocol.as_str()
            ),
            ("grpc", 50051, "grpc", "kubernetes.io/h2c")
        );
        assert_eq!(
            summary(&view),
            [
                "198.18.1.2:9000 ready=true meshed=true grpc-1 spiffe://cluster.local/ns/mesh/sa/default",
                "198.18.1.3:9000 ready=false meshed=false grpc-2 ",
            ]
        );
        assert_eq!(view.endpoints[&addr("198.18.1.2:9000")].zone, "a");
        assert!(view.endpoints[&addr("198.18.1.3:9000")].terminating);
        // Another port of the Service, or another address: nothing.
        let other = index.follow(addr("198.19.0.10:80"));
        assert_eq!(*other.borrow().as_ref(), View::default());
        // A pod IP is that pod.
        let direct = index.follow(addr("198.18.1.2:8080"));
        assert_eq!(
            summary(&direct.borrow()),
            ["198.18.1.2:8080 ready=true meshed=true grpc-1 spiffe://cluster.local/ns/mesh/sa/default"]
        );
    }

    #[test]
    fn a_change_wakes_only_the_destinations_it_touches() {
        let index = Index::new("cluster.local");
        index.apply_service(&service("a", "198.19.0.1", json!([{"port": 80}])));
        index.apply_service(&service("b", "198.19.0.2", json!([{"port": 80}])));
        let endpoints = |ip: &str, pod: &str| json!([{"addresses": [ip], "targetRef": {"kind": "Pod", "namespace": "mesh", "name": pod}}]);
        index.apply_slice(&slice("a-1", "a", ("", 8080), endpoints("198.18.1.1", "a-pod")));
        index.apply_slice(&slice("b-1", "b", ("", 8080), endpoints("198.18.1.2", "b-pod")));
        let mut a = index.follow(addr("198.19.0.1:80"));
        let mut b = index.follow(addr("198.19.0.2:80"));
        a.mark_unchanged();
        b.mark_unchanged();

        index.apply_slice(&slice("a-2", "a", ("", 8080), endpoints("198.18.1.3", "a-pod-2")));
        assert!(a.has_changed().expect("open"), "a's subscribers hear of a's endpoints");
        assert!(!b.has_changed().expect("open"), "b's do not");
        assert_eq!(a.borrow_and_update().endpoints.len(), 2);

        index.apply_pod(&pod("b-pod", "198.18.1.2", true));
        assert!(b.has_changed().expect("open"), "b's endpoint is now meshed");
        assert!(!a.has_changed().expect("open"));
        assert!(b.borrow_and_update().endpoints[&addr("198.18.1.2:8080")].meshed);

        // The same object again changes nothing and wakes nobody.
        index.apply_pod(&pod("b-pod", "198.18.1.2", true));
        assert!(!b.has_changed().expect("open"));

        index.delete_slice(&slice("a-1", "a", ("", 8080), endpoints("198.18.1.1", "a-pod")));
        assert_eq!(
            summary(&a.borrow_and_update()),
            ["198.18.1.3:8080 ready=true meshed=false a-pod-2 "]
        );
    }

    #[test]
    fn a_service_that_appears_later_or_goes_is_followed_by_its_address() {
        let index = Index::new("cluster.local");
        let mut later = index.follow(addr("198.19.0.9:443"));
        assert_eq!(*later.borrow_and_update().as_ref(), View::default());
        index.apply_service(&service("late", "198.19.0.9", json!([{"name": "https", "port": 443}])));
        assert!(later.has_changed().expect("open"));
        assert_eq!(
            later.borrow_and_update().service.as_ref().map(|s| s.name.as_str()),
            Some("late")
        );
        index.delete_service(&service("late", "198.19.0.9", json!([])));
        assert_eq!(*later.borrow_and_update().as_ref(), View::default());
    }

    #[test]
    fn destinations_nobody_follows_are_forgotten() {
        let index = Index::new("cluster.local");
        let first = index.follow(addr("198.19.0.1:80"));
        let second = index.follow(addr("198.19.0.1:80"));
        assert_eq!(index.followed(), 1, "one view, however many subscribers");
        drop(first);
        assert_eq!(index.followed(), 1);
        drop(second);
        assert_eq!(index.followed(), 0);
    }

    #[test]
    fn a_finished_or_host_network_pod_does_not_claim_an_address() {
        let index = Index::new("cluster.local");
        let finished = |name: &str, ip: &str, extra: serde_json::Value| -> Pod {
            let mut pod = json!({
                "metadata": {"name": name, "namespace": "mesh"},
                "status": {"phase": "Succeeded", "podIP": ip, "podIPs": [{"ip": ip}]},
            });
            if let Some(spec) = extra.get("spec") {
                pod["spec"] = spec.clone();
                pod["status"]["phase"] = json!("Running");
            }
            serde_json::from_value(pod).expect("a Pod")
        };
        let direct = index.follow(addr("198.18.1.5:8080"));
        index.apply_pod(&pod("new", "198.18.1.5", true));
        // The Job's pod that had the address before is updated (or relisted)
        // after the new pod: the address is still the new pod's.
        index.apply_pod(&finished("job-1", "198.18.1.5", json!({})));
        index.apply_pod(&finished(
            "node-agent",
            "198.18.1.5",
            json!({"spec": {"hostNetwork": true, "containers": []}}),
        ));
        let expected = ["198.18.1.5:8080 ready=true meshed=true new spiffe://cluster.local/ns/mesh/sa/default"];
        assert_eq!(summary(&direct.borrow()), expected);
        index.delete_pod(&finished("job-1", "198.18.1.5", json!({})));
        assert_eq!(summary(&direct.borrow()), expected);
        index.replace_pods(&[
            pod("new", "198.18.1.5", true),
            finished("job-1", "198.18.1.5", json!({})),
        ]);
        assert_eq!(summary(&direct.borrow()), expected);
    }

    #[test]
    fn an_endpoint_in_two_slices_is_its_most_usable_copy_whatever_the_order() {
        for order in [["a", "b"], ["b", "a"]] {
            let index = Index::new("cluster.local");
            index.apply_service(&service("web", "198.19.0.12", json!([{"name": "http", "port": 80}])));
            let view = index.follow(addr("198.19.0.12:80"));
            for name in order {
                let ready = name == "b";
                index.apply_slice(&slice(
                    &format!("web-{name}"),
                    "web",
                    ("http", 8080),
                    json!([{"addresses": ["198.18.1.7"], "conditions": {"ready": ready, "serving": ready}}]),
                ));
            }
            assert_eq!(
                summary(&view.borrow()),
                ["198.18.1.7:8080 ready=true meshed=false  "],
                "{order:?}"
            );
        }
    }

    #[test]
    fn a_cluster_ip_is_served_by_endpoints_of_its_own_family() {
        let index = Index::new("cluster.local");
        index.apply_service(
            &serde_json::from_value(json!({
                "metadata": {"name": "dual", "namespace": "mesh"},
                "spec": {"clusterIP": "198.19.0.13", "clusterIPs": ["198.19.0.13", "fd00:19::13"],
                         "ports": [{"name": "http", "port": 80}]},
            }))
            .expect("a Service"),
        );
        index.apply_slice(&slice(
            "dual-v4",
            "dual",
            ("http", 8080),
            json!([{"addresses": ["198.18.1.8"]}]),
        ));
        let mut v6: EndpointSlice = slice(
            "dual-v6",
            "dual",
            ("http", 8080),
            json!([{"addresses": ["fd00:18::8"]}]),
        );
        v6.address_type = "IPv6".into();
        index.apply_slice(&v6);
        let v4 = index.follow(addr("198.19.0.13:80"));
        assert_eq!(summary(&v4.borrow()), ["198.18.1.8:8080 ready=true meshed=false  "]);
        let v6 = index.follow(addr("[fd00:19::13]:80"));
        assert_eq!(summary(&v6.borrow()), ["[fd00:18::8]:8080 ready=true meshed=false  "]);
    }

    #[test]
    fn a_service_declares_its_opaque_ports_by_annotation_and_a_bad_one_declares_none() {
        let index = Index::new("cluster.local");
        let annotated = |name: &str, ip: &str, value: &str| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "mesh", "annotations": {"strait.io/opaque-ports": value}},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}, {"port": 9001}]},
            }))
            .expect("a Service")
        };
        index.apply_service(&annotated("db", "198.19.0.14", "3306,9000-9001"));
        index.apply_service(&annotated("odd", "198.19.0.15", "9001,lots"));
        let opaque = |address: &str| {
            let view = index.follow(addr(address));
            let view = view.borrow();
            view.service.as_ref().expect("a Service port").opaque
        };
        assert!(opaque("198.19.0.14:9001"));
        assert!(!opaque("198.19.0.14:80"));
        assert!(
            !opaque("198.19.0.15:9001"),
            "an annotation that cannot be read declares nothing"
        );
    }

    #[test]
    fn a_service_made_again_under_its_name_is_not_served_by_its_predecessors_slices() {
        let index = Index::new("cluster.local");
        let owned = |name: &str, uid: &str, ip: &str| -> EndpointSlice {
            let mut slice = slice(name, "web", ("http", 8080), json!([{"addresses": [ip]}]));
            slice.metadata.owner_references = Some(vec![
                serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service", "name": "web", "uid": uid, "controller": true,
                }))
                .expect("an owner reference"),
            ]);
            slice
        };
        let mut web = service("web", "198.19.0.16", json!([{"name": "http", "port": 80}]));
        web.metadata.uid = Some("second".into());
        index.apply_service(&web);
        index.apply_slice(&owned("web-old", "first", "198.18.1.9"));
        index.apply_slice(&owned("web-new", "second", "198.18.1.10"));
        let view = index.follow(addr("198.19.0.16:80"));
        assert_eq!(summary(&view.borrow()), ["198.18.1.10:8080 ready=true meshed=false  "]);
    }

    #[test]
    fn a_meshed_pods_identity_is_its_service_accounts_whatever_its_annotation_says() {
        let index = Index::new("cluster.local");
        let mut web: Pod = pod("web-1", "198.18.1.11", true);
        web.metadata
            .annotations
            .get_or_insert_default()
            .insert("strait.io/identity".into(), "garbage".into());
        web.spec =
            Some(serde_json::from_value(json!({"serviceAccountName": "web", "containers": []})).expect("a spec"));
        index.apply_pod(&web);
        let view = index.follow(addr("198.18.1.11:8080"));
        assert_eq!(
            summary(&view.borrow()),
            ["198.18.1.11:8080 ready=true meshed=true web-1 spiffe://cluster.local/ns/mesh/sa/web"]
        );
    }

    #[test]
    fn an_address_in_a_hand_written_slice_is_the_pod_that_has_it_even_one_seen_later() {
        let index = Index::new("cluster.local");
        index.apply_service(&service(
            "manual",
            "198.19.0.17",
            json!([{"name": "grpc", "port": 50051}]),
        ));
        index.apply_slice(&slice(
            "manual-1",
            "manual",
            ("grpc", 50051),
            json!([{"addresses": ["198.18.1.13"]}]),
        ));
        let view = index.follow(addr("198.19.0.17:50051"));
        assert_eq!(summary(&view.borrow()), ["198.18.1.13:50051 ready=true meshed=false  "]);
        index.apply_pod(&pod("grpc-9", "198.18.1.13", true));
        assert_eq!(
            summary(&view.borrow()),
            ["198.18.1.13:50051 ready=true meshed=true grpc-9 spiffe://cluster.local/ns/mesh/sa/default"]
        );
    }
}
