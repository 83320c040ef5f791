//! Reading Kubernetes YAML (multi-document, `List`s) and applying it to the
//! lab: create, or replace what is already there, in dependency order.

use std::path::Path;

use serde_json::Value;

use crate::apiserver::resource::Resource;
use crate::client::{ClientError, LabClient};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: document {index}: {problem}")]
    Invalid {
        file: String,
        index: usize,
        problem: String,
    },
    #[error("{object}: {source}")]
    Apply { object: String, source: ClientError },
}

/// One object from a manifest, with where it came from for messages.
#[derive(Clone, Debug)]
pub struct Object {
    pub resource: &'static Resource,
    pub value: Value,
    pub origin: String,
}

impl Object {
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }

    pub fn describe(&self) -> String {
        if self.resource.namespaced {
            format!(
                "{} {}/{} ({})",
                self.resource.kind,
                self.namespace(),
                self.name(),
                self.origin
            )
        } else {
            format!("{} {} ({})", self.resource.kind, self.name(), self.origin)
        }
    }
}

pub fn read_file(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses every document; `List`s are flattened. Kinds the lab does not
/// serve are an error naming the document.
pub fn parse(text: &str, file: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |problem: String| ManifestError::Invalid {
            file: file.to_string(),
            index: index + 1,
            problem,
        };
        let value: Value =
            serde::Deserialize::deserialize(document).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let items = if value.get("kind").and_then(Value::as_str) == Some("List") {
            value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![value]
        };
        for item in items {
            let api_version = item
                .get("apiVersion")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("apiVersion is missing".into()))?;
            let kind = item
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("kind is missing".into()))?;
            if item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                return Err(invalid(format!("{kind}: metadata.name is missing")));
            }
            let resource = Resource::by_kind(api_version, kind)
                .filter(|r| !r.virtual_only)
                .ok_or_else(|| invalid(format!("{api_version} {kind} is not a kind the lab serves")))?;
            objects.push(Object {
                resource,
                value: item,
                origin: format!("{file}#{}", index + 1),
            });
        }
    }
    objects.sort_by_key(|o| apply_order(o.resource));
    Ok(objects)
}

/// Namespaces first, then what workloads refer to, then workloads.
fn apply_order(resource: &Resource) -> u8 {
    match resource.plural {
        "namespaces" => 0,
        "serviceaccounts" | "configmaps" | "secrets" | "roles" | "clusterroles" => 1,
        "rolebindings" | "clusterrolebindings" | "services" | "mutatingwebhookconfigurations" => 2,
        _ => 3,
    }
}

/// Tries at replacing an object that keeps changing under the replace, as
/// kubectl apply's (`maxPatchRetry`).
const REPLACE_TRIES: usize = 5;

/// Creates the object, or replaces the existing one's contents. A replace
/// that meets a newer version (409 Conflict: a controller wrote the object,
/// its status say, between the read and the write) reads it again and tries
/// again, up to [`REPLACE_TRIES`] times.
pub async fn apply(client: &LabClient, object: &Object) -> Result<Value, ManifestError> {
    let namespace = object.resource.namespaced.then(|| object.namespace());
    let collection = object.resource.path(namespace, None);
    let error = |source| ManifestError::Apply {
        object: object.describe(),
        source,
    };
    let mut value = object.value.clone();
    if let Some(namespace) = namespace {
        value["metadata"]["namespace"] = Value::String(namespace.to_string());
    }
    match client.post(&collection, &value).await {
        Ok(created) => Ok(created),
        Err(ClientError::Api { code: 409, .. }) => {
            let path = object.resource.path(namespace, Some(object.name()));
            let mut tries = 1;
            loop {
                let current = client.get(&path).await.map_err(error)?;
                value["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                match client.put(&path, &value).await {
                    Err(ClientError::Api { code: 409, .. }) if tries < REPLACE_TRIES => tries += 1,
                    replaced => return replaced.map_err(error),
                }
            }
        }
        Err(other) => Err(error(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An API server whose Deployment `demo/web` a controller writes
    /// between each read and each of the first `conflicts` replaces.
    async fn racing_api_server(socket: &Path, conflicts: usize) -> Arc<AtomicUsize> {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let replaces = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let counted = replaces.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let replaces = counted.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let replaces = replaces.clone();
                    async move {
                        let (status, body) = match *request.method() {
                            http::Method::POST => (409, serde_json::json!({"reason": "AlreadyExists"})),
                            http::Method::GET => (200, serde_json::json!({"metadata": {"resourceVersion": "7"}})),
                            _ if replaces.fetch_add(1, Ordering::SeqCst) < conflicts => (
                                409,
                                serde_json::json!({"reason": "Conflict", "message": "the object has been modified"}),
                            ),
                            _ => (200, serde_json::json!({"metadata": {"name": "web"}})),
                        };
                        let response = http::Response::builder()
                            .status(status)
                            .body(Full::new(bytes::Bytes::from(body.to_string())))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        replaces
    }

    #[tokio::test]
    async fn a_replace_that_meets_a_newer_version_reads_it_again_and_tries_again() {
        let state = std::env::temp_dir().join(format!("strait-manifest-race-{}", std::process::id()));
        std::fs::create_dir_all(&state).unwrap();
        let paths = crate::paths::LabPaths {
            name: "race".into(),
            state: state.clone(),
        };
        let object = &parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n",
            "web.yaml",
        )
        .unwrap()[0];
        let client = LabClient::new(&paths);
        let replaces = racing_api_server(&paths.socket(), 2).await;
        apply(&client, object).await.unwrap();
        assert_eq!(replaces.load(Ordering::SeqCst), 3, "two conflicts, then the replace");

        // An object that never stops changing is an error, named.
        std::fs::remove_file(paths.socket()).unwrap();
        let replaces = racing_api_server(&paths.socket(), usize::MAX).await;
        let error = apply(&client, object).await.unwrap_err().to_string();
        assert_eq!(replaces.load(Ordering::SeqCst), REPLACE_TRIES);
        assert!(
            error.contains("Deployment demo/web") && error.contains("modified"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&state);
    }

    #[test]
    fn documents_are_read_in_dependency_order() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n\
                    apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: demo}}\n";
        let objects = parse(text, "demo.yaml").unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| o.resource.kind).collect();
        assert_eq!(kinds, ["Namespace", "Service", "Deployment"]);
        assert_eq!(objects[2].describe(), "Deployment demo/web (demo.yaml#1)");
    }

    #[test]
    fn bad_documents_are_named() {
        let error = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [\n",
            "x.yaml",
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("x.yaml: document 2: not valid YAML"),
            "{error}"
        );
        let error = parse(
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
            "x.yaml",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.yaml: document 1: example.com/v1 Widget is not a kind the lab serves"
        );
        let error = parse("apiVersion: v1\nkind: Service\nmetadata: {}\n", "x.yaml").unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.yaml: document 1: Service: metadata.name is missing"
        );
    }
}
