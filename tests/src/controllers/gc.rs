//! Garbage collection and namespace upkeep: objects whose owner is gone are
//! deleted (pods gracefully), a terminating namespace is emptied and then
//! removed, and every namespace gets its `default` ServiceAccount.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::is_terminating;
use crate::apiserver::Api;
use crate::apiserver::resource::{RESOURCES, Resource};
use crate::apiserver::store::{name_of, namespace_of};

pub async fn run(api: Arc<Api>) {
    let store = api.store.clone();
    let kinds: Vec<&str> = RESOURCES.iter().map(|r| r.plural).collect();
    super::run_controller(store, &kinds, || {
        collect(&api);
        std::future::ready(())
    })
    .await;
}

fn collect(api: &Api) {
    let namespaces = api.store.list(Resource::named("namespaces"), None).0;
    let stored = RESOURCES.iter().filter(|r| !r.virtual_only);
    let everything: Vec<(&'static Resource, Value)> = stored
        .flat_map(|r| api.store.list(r, None).0.into_iter().map(move |o| (r, o)))
        .collect();
    let uids: HashSet<&str> = everything
        .iter()
        .filter_map(|(_, o)| o.pointer("/metadata/uid").and_then(Value::as_str))
        .collect();

    for (resource, object) in &everything {
        let owners = object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
        let orphaned = owners.is_some_and(|owners| {
            !owners.is_empty()
                && owners
                    .iter()
                    .all(|o| !uids.contains(o["uid"].as_str().unwrap_or_default()))
        });
        let namespace_gone = resource.namespaced
            && namespaces
                .iter()
                .find(|n| name_of(n) == namespace_of(object))
                .is_none_or(is_terminating);
        if (orphaned || namespace_gone) && !is_terminating(object) {
            let _ = api.delete_object(resource, namespace_of(object), name_of(object), None);
        }
    }

    for namespace in &namespaces {
        let name = name_of(namespace);
        if is_terminating(namespace) {
            let empty = !everything.iter().any(|(r, o)| r.namespaced && namespace_of(o) == name);
            if empty {
                let _ = api.store.remove(Resource::named("namespaces"), "", name);
            }
            continue;
        }
        let service_accounts = Resource::named("serviceaccounts");
        if api.store.get(service_accounts, name, "default").is_err() {
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}});
            let _ = api.store.create(service_accounts, account);
        }
    }
}
