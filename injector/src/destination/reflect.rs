//! The watches behind the destination service's index: one each of
//! Services, EndpointSlices, Pods, HTTPRoutes, GRPCRoutes and
//! ReferenceGrants, cluster-wide,
//! however many proxies subscribe. Each retries with back-off and keeps the last known state
//! while the API server is away; a relist (a new watch, or 410 Gone)
//! replaces that kind's state as a whole.

use std::sync::Arc;

use futures::StreamExt;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::index::{Index, ObjectKey};
use super::routes::{self, RouteKey, RouteKind};

/// How one kind of object reaches the index.
trait Kind:
    kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static
{
    const PLURAL: &'static str;
    /// Views wait for this kind's first list. Routes do not: the Gateway
    /// API CRDs may not be installed, and without them nothing is routed.
    const REQUIRED: bool = true;
    fn apply(index: &Index, object: &Self);
    fn delete(index: &Index, object: &Self);
    fn replace(index: &Index, objects: &[Self]);
}

impl Kind for Service {
    const PLURAL: &'static str = "services";
    fn apply(index: &Index, object: &Self) {
        index.apply_service(object);
    }
    fn delete(index: &Index, object: &Self) {
        index.delete_service(object);
    }
    fn replace(index: &Index, objects: &[Self]) {
        index.replace_services(objects);
    }
}

impl Kind for EndpointSlice {
    const PLURAL: &'static str = "endpointslices";
    fn apply(index: &Index, object: &Self) {
        index.apply_slice(object);
    }
    fn delete(index: &Index, object: &Self) {
        index.delete_slice(object);
    }
    fn replace(index: &Index, objects: &[Self]) {
        index.replace_slices(objects);
    }
}

impl Kind for Pod {
    const PLURAL: &'static str = "pods";
    fn apply(index: &Index, object: &Self) {
        index.apply_pod(object);
    }
    fn delete(index: &Index, object: &Self) {
        index.delete_pod(object);
    }
    fn replace(index: &Index, objects: &[Self]) {
        index.replace_pods(objects);
    }
}

impl Kind for HttpRoute {
    const PLURAL: &'static str = "httproutes";
    const REQUIRED: bool = false;
    fn apply(index: &Index, object: &Self) {
        index.apply_route(routes::http_route(object));
    }
    fn delete(index: &Index, object: &Self) {
        index.delete_route(&RouteKey {
            kind: RouteKind::Http,
            object: ObjectKey::of(&object.metadata),
        });
    }
    fn replace(index: &Index, objects: &[Self]) {
        index.replace_routes(RouteKind::Http, objects.iter().map(routes::http_route).collect());
    }
}

impl Kind for GrpcRoute {
    const PLURAL: &'static str = "grpcroutes";
    const REQUIRED: bool = false;
    fn apply(index: &Index, object: &Self) {
        index.apply_route(routes::grpc_route(object));
    }
    fn delete(index: &Index, object: &Self) {
        index.delete_route(&RouteKey {
            kind: RouteKind::Grpc,
            object: ObjectKey::of(&object.metadata),
        });
    }
    fn replace(index: &Index, objects: &[Self]) {
        index.replace_routes(RouteKind::Grpc, objects.iter().map(routes::grpc_route).collect());
    }
}

impl Kind for ReferenceGrant {
    const PLURAL: &'static str = "referencegrants";
    const REQUIRED: bool = false;
    fn apply(index: &Index, object: &Self) {
        index.apply_grant(ObjectKey::of(&object.metadata), routes::reference_grant(object));
    }
    fn delete(index: &Index, object: &Self) {
        index.delete_grant(&ObjectKey::of(&object.metadata));
    }
    fn replace(index: &Index, objects: &[Self]) {
        index.replace_grants(
            objects
                .iter()
                .map(|o| (ObjectKey::of(&o.metadata), routes::reference_grant(o)))
                .collect(),
        );
    }
}

/// Starts the watches; the receiver turns true once Services,
/// EndpointSlices and Pods have each listed once (before that, views would be missing what is merely not yet read).
pub fn start(client: kube::Client, index: Arc<Index>) -> watch::Receiver<bool> {
    let (synced_tx, synced) = watch::channel(false);
    let listed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = move || {
        if listed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 3 {
            let _ = synced_tx.send(true);
        }
    };
    let done = Arc::new(done);
    tokio::spawn(follow::<Service>(client.clone(), index.clone(), done.clone()));
    tokio::spawn(follow::<EndpointSlice>(client.clone(), index.clone(), done.clone()));
    tokio::spawn(follow::<Pod>(client.clone(), index.clone(), done.clone()));
    tokio::spawn(follow::<HttpRoute>(client.clone(), index.clone(), done.clone()));
    tokio::spawn(follow::<GrpcRoute>(client.clone(), index.clone(), done.clone()));
    tokio::spawn(follow::<ReferenceGrant>(client, index, done));
    synced
}

async fn follow<K: Kind>(client: kube::Client, index: Arc<Index>, listed: Arc<dyn Fn() + Send + Sync>) {
    let stream = watcher::watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut pending: Vec<K> = Vec::new();
    let mut first = true;
    let mut say_absent = true;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => pending.clear(),
            Ok(Event::InitApply(object)) => pending.push(object),
            Ok(Event::InitDone) => {
                K::replace(&index, &std::mem::take(&mut pending));
                if std::mem::take(&mut first) && K::REQUIRED {
                    listed();
                }
            }
            Ok(Event::Apply(object)) => K::apply(&index, &object),
            Ok(Event::Delete(object)) => K::delete(&index, &object),
            Err(error) if !K::REQUIRED && is_not_served(&error) => {
                // The Gateway API CRDs are not installed: said once, then
                // looked for again quietly (they may be installed later).
                if std::mem::take(&mut say_absent) {
                    tracing::info!(
                        kind = K::PLURAL,
                        "the Gateway API CRD is not installed: no routes of this kind until it is"
                    );
                }
            }
            Err(error) => {
                say_absent = true;
                tracing::warn!(kind = K::PLURAL, %error, "watch failed; keeping the last known state and retrying");
            }
        }
    }
}

/// Whether a watch failed because the API server serves no such resource
/// (HTTP 404: its CRD is not installed).
fn is_not_served(error: &watcher::Error) -> bool {
    let api = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status,
        _ => return false,
    };
    api.code == 404
}
