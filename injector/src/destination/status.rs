//! Writes the status of Gateway API routes bound to Services: on each
//! parent, `Accepted` and `ResolvedRefs` conditions under the controller
//! name [`super::routes::CONTROLLER_NAME`], as computed by
//! [`super::routes::statuses`]. Other controllers' parent entries are kept.
//!
//! A route's status is written only when it differs from what is stored,
//! so the writer's own updates (which the route watch sees again) end the
//! loop. Each write is conditional on the route's `resourceVersion` (the
//! whole `parents` list is replaced, other controllers' entries included):
//! a conflict (HTTP 409) means someone wrote since, and the watch brings
//! the new version, which is checked again. Every replica writes the same
//! status (they read the same objects).

use std::sync::Arc;
use std::time::Duration;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use kube::Api;
use kube::api::{Patch, PatchParams};
use strait_contract::Chain;

use super::index::Index;
use super::routes::{RouteKey, RouteKind};

/// How long after a failed write the writer tries again, if nothing
/// changes before.
const RETRY: Duration = Duration::from_secs(5);

/// Writes route status until the process ends.
pub async fn write(client: kube::Client, index: Arc<Index>) {
    let mut changed = index.routes_changed();
    loop {
        changed.borrow_and_update();
        let now = now();
        let mut failed = false;
        for (key, patch) in index.route_status_patches(&now) {
            if let Err(error) = patch_status(&client, &key, &patch).await {
                if matches!(&error, kube::Error::Api(status) if status.code == 409) {
                    tracing::debug!(route = %format!("{}/{}/{}", key.kind.kind(), key.object.namespace, key.object.name), "route changed since read; its status is written from the new version");
                    continue;
                }
                failed = true;
                tracing::warn!(
                    route = %format!("{}/{}/{}", key.kind.kind(), key.object.namespace, key.object.name),
                    error = %Chain(&error),
                    "could not write the route's status"
                );
            }
        }
        if failed {
            let _ = tokio::time::timeout(RETRY, changed.changed()).await;
        } else if changed.changed().await.is_err() {
            return;
        }
    }
}

async fn patch_status(client: &kube::Client, key: &RouteKey, patch: &serde_json::Value) -> Result<(), kube::Error> {
    let (namespace, name) = (&key.object.namespace, &key.object.name);
    let params = PatchParams::default();
    let patch = Patch::Merge(patch);
    match key.kind {
        RouteKind::Http => Api::<HttpRoute>::namespaced(client.clone(), namespace)
            .patch_status(name, &params, &patch)
            .await
            .map(drop),
        RouteKind::Grpc => Api::<GrpcRoute>::namespaced(client.clone(), namespace)
            .patch_status(name, &params, &patch)
            .await
            .map(drop),
    }
}

/// Now as Kubernetes writes times (RFC 3339, seconds, UTC).
fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
