//! The API server's object store: every object as JSON, one cluster-wide
//! resourceVersion counter, and a bounded log of recent changes from which
//! watches resume (older resourceVersions get 410 Gone, as from etcd after
//! compaction).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::resource::Resource;

/// How many changes the store remembers for resuming watches.
const LOG_SIZE: usize = 5000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches and controllers see it.
#[derive(Debug)]
pub struct Event {
    pub kind: EventType,
    pub resource: &'static Resource,
    pub rv: u64,
    /// The object after the change (for a deletion, its last state).
    pub object: Value,
    /// The object before a modification, so selector watches can tell an
    /// object that stopped matching from one that changed.
    pub old: Option<Value>,
}

impl Event {
    pub fn namespace(&self) -> &str {
        namespace_of(&self.object)
    }
}

type Key = (&'static str, String, String);

/// Changes as they happen.
pub type Subscription = broadcast::Receiver<Arc<Event>>;

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Event>>,
}

pub struct Store {
    inner: Mutex<Inner>,
    /// Every change, to watches and to the lab's controllers.
    events: broadcast::Sender<Arc<Event>>,
}

pub fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn namespace_of(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn rv_of(object: &Value) -> Option<u64> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
}

fn key(resource: &'static Resource, namespace: &str, name: &str) -> Key {
    let namespace = if resource.namespaced { namespace } else { "" };
    (resource.plural, namespace.to_string(), name.to_string())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn random_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A random suffix in the alphabet Kubernetes uses for generated names.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(16 * 1024).0,
        }
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn record(&self, inner: &mut Inner, event: Event) {
        let event = Arc::new(event);
        if inner.log.len() == LOG_SIZE {
            inner.log.pop_front();
        }
        inner.log.push_back(event.clone());
        let _ = self.events.send(event);
    }

    pub fn create(&self, resource: &'static Resource, mut object: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata is missing"))?;
        if meta.get("name").and_then(Value::as_str).unwrap_or_default().is_empty() {
            let prefix = meta.get("generateName").and_then(Value::as_str).unwrap_or_default();
            if prefix.is_empty() {
                return Err(ApiError::invalid(resource.kind, "", "metadata.name: Required value"));
            }
            let name = format!("{prefix}{}", random_suffix(5));
            meta.insert("name".into(), json!(name));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = key(resource, &namespace, &name);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        inner.rv += 1;
        meta.insert("uid".into(), json!(random_uid()));
        meta.insert("resourceVersion".into(), json!(inner.rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if object.get("spec").is_some() {
            object["metadata"]["generation"] = json!(1);
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        inner.objects.insert(key, object.clone());
        let rv = inner.rv;
        self.record(
            &mut inner,
            Event {
                kind: EventType::Added,
                resource,
                rv,
                object: object.clone(),
                old: None,
            },
        );
        Ok(object)
    }

    pub fn get(&self, resource: &'static Resource, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Every object of a kind (in one namespace, or all), with the
    /// resourceVersion the list is consistent with.
    pub fn list(&self, resource: &'static Resource, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let objects = inner
            .objects
            .iter()
            .filter(|((plural, ns, _), _)| *plural == resource.plural && namespace.is_none_or(|wanted| wanted == ns))
            .map(|(_, object)| object.clone())
            .collect();
        (objects, inner.rv)
    }

    /// Replaces an object. A resourceVersion in `object` must match the
    /// stored one (optimistic concurrency); identity fields are kept.
    pub fn update(&self, resource: &'static Resource, object: Value) -> Result<Value, ApiError> {
        let namespace = namespace_of(&object).to_string();
        let name = name_of(&object).to_string();
        self.modify(resource, &namespace, &name, |stored| {
            if let Some(expected) = rv_of(&object)
                && Some(expected) != rv_of(stored)
            {
                return Err(ApiError::conflict(resource, &name));
            }
            let metadata = stored["metadata"].clone();
            *stored = object;
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match metadata.get(field) {
                    Some(value) => stored["metadata"][field] = value.clone(),
                    None => {
                        if let Some(meta) = stored["metadata"].as_object_mut() {
                            meta.remove(field);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Read-modify-write of one object under the store's lock, so the lab's
    /// own controllers never conflict. Bumps generation when `spec` changes;
    /// records nothing when `change` leaves the object as it was.
    pub fn modify(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key(resource, namespace, name);
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let mut object = old.clone();
        change(&mut object)?;
        object["metadata"]["name"] = old["metadata"]["name"].clone();
        if resource.namespaced {
            object["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
        }
        object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        if object == old {
            return Ok(object);
        }
        if object.get("spec") != old.get("spec") {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.objects.insert(key, object.clone());
        self.record(
            &mut inner,
            Event {
                kind: EventType::Modified,
                resource,
                rv,
                object: object.clone(),
                old: Some(old),
            },
        );
        Ok(object)
    }

    /// Removes an object at once (graceful pod deletion is the API layer's
    /// and the kubelet's business).
    pub fn remove(&self, resource: &'static Resource, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let mut object = inner
            .objects
            .remove(&key(resource, namespace, name))
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut inner,
            Event {
                kind: EventType::Deleted,
                resource,
                rv,
                object: object.clone(),
                old: None,
            },
        );
        Ok(object)
    }

    /// Starts a watch after `since`: the changes already logged after it, and
    /// a receiver for the ones to come, taken under one lock so none is lost
    /// or repeated. Fails with 410 Gone when `since` is older than the log.
    pub fn watch_from(&self, since: u64) -> Result<(Vec<Arc<Event>>, Subscription), ApiError> {
        let inner = self.lock();
        let receiver = self.events.subscribe();
        let oldest = inner.log.front().map_or(inner.rv + 1, |event| event.rv);
        if since + 1 < oldest && since < inner.rv {
            return Err(ApiError::gone(since));
        }
        let backlog = inner.log.iter().filter(|event| event.rv > since).cloned().collect();
        Ok((backlog, receiver))
    }

    /// All changes from now on, for the lab's controllers.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests;
