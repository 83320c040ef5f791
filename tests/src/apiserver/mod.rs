//! The lab's Kubernetes API server: real REST paths and JSON for the kinds
//! the mesh uses, list and watch with resourceVersions, selectors, the status
//! and scale subresources, merge and JSON patches, graceful pod deletion,
//! TokenReviews, RBAC authorization ([`rbac`], [`request_info`]), admission
//! with Pod Security ([`admission`], [`podsecurity`], [`validation`]), and
//! per-user statistics ([`stats`]).

pub mod admission;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod gateway;
pub mod podsecurity;
pub mod rbac;
pub mod request_info;
pub mod resource;
pub mod route;
pub mod selector;
pub mod serve;
pub mod stats;
pub mod store;
pub mod validation;
pub mod watch;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use admission::Admission;
use auth::{Principal, Tokens};
use error::ApiError;
use resource::Resource;
use route::{Discovery, Route};
use selector::{FieldSelector, LabelSelector};
use store::{Store, name_of, namespace_of, now_rfc3339};
use watch::WatchRequest;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Kubernetes' limit on request bodies.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Api {
    pub store: Arc<Store>,
    pub tokens: Arc<Tokens>,
    pub admission: Admission,
    pub stats: Arc<stats::ApiStats>,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn json_response(status: StatusCode, value: &Value, warnings: &[String]) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "'"));
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.status(), &[])
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

async fn read_json(request: Request<Incoming>) -> Result<(Value, Option<String>), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let value = if content_type.as_deref().is_some_and(|t| t.contains("yaml")) {
        serde_yaml::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?
    };
    Ok((value, content_type))
}

impl Api {
    /// Serves one request for an authenticated principal: authorizes it
    /// (RBAC for ServiceAccounts), serves it, and counts it for its user.
    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        principal: Principal,
        stop: CancellationToken,
    ) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let route = route::parse(&path);
        let query = query(&request);
        let attributes = route
            .as_ref()
            .and_then(|route| request_info::attributes(route, &method, &query));
        let verb = attributes.as_ref().map(|a| a.verb);
        let denied = match (&principal, &attributes) {
            (Principal::ServiceAccount { namespace, name }, Some(attributes)) => {
                rbac::authorize(&self.store, &rbac::User::service_account(namespace, name), attributes).err()
            }
            _ => None,
        };
        let result = match (route, denied) {
            (Some(route), None) => self.dispatch(request, route, &query, stop).await,
            (route, denied) => {
                // The body is read before the refusal, as Kubernetes does:
                // an HTTP/2 client still sending it would miss the answer.
                let _ = Limited::new(request.into_body(), MAX_BODY).collect().await;
                Err(match (route, denied) {
                    (_, Some(denied)) => denied,
                    _ => ApiError::new_not_found_path(&path),
                })
            }
        };
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%method, %path, ?principal, %error, "API request failed");
                error_response(&error)
            }
        };
        self.stats.count(&principal.user_name(), verb, response)
    }

    async fn dispatch(
        self: &Arc<Self>,
        request: Request<Incoming>,
        route: Route,
        query: &HashMap<String, String>,
        stop: CancellationToken,
    ) -> Result<Response<Body>, ApiError> {
        let method = request.method().clone();
        match route {
            Route::Discovery(discovery) => {
                let document = match discovery {
                    Discovery::Version => discovery::version(),
                    Discovery::Health => return Ok(Response::new(full("ok"))),
                    Discovery::CoreVersions => discovery::core_versions(),
                    Discovery::Groups => discovery::groups(),
                    Discovery::Resources { group, version } => discovery::resources(&group, &version)
                        .ok_or_else(|| ApiError::new_not_found_path(request.uri().path()))?,
                };
                Ok(json_response(StatusCode::OK, &document, &[]))
            }
            Route::Collection { resource, namespace } => match method {
                Method::GET => {
                    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                        self.watch(resource, namespace, query, stop)
                    } else {
                        self.list(resource, namespace.as_deref(), query)
                    }
                }
                Method::POST => {
                    let (object, _) = read_json(request).await?;
                    self.create(resource, namespace, object).await
                }
                _ => Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on {}",
                    resource.plural
                ))),
            },
            Route::Object {
                resource,
                namespace,
                name,
                subresource,
            } => {
                let namespace = namespace.unwrap_or_default();
                let sub = subresource.as_deref();
                match (method, sub) {
                    (_, Some("scale")) if resource.plural != "deployments" => {
                        Err(ApiError::new_not_found_path(&format!("{}/scale", resource.plural)))
                    }
                    (Method::GET, Some("scale")) => Ok(ok(&scale_of(&self.store.get(resource, &namespace, &name)?))),
                    (Method::GET, _) => Ok(ok(&self.store.get(resource, &namespace, &name)?)),
                    (Method::PUT, sub) => {
                        let (object, _) = read_json(request).await?;
                        self.replace(resource, &namespace, &name, sub, object)
                    }
                    (Method::PATCH, sub) => {
                        let (patch, content_type) = read_json(request).await?;
                        self.patch(resource, &namespace, &name, sub, &patch, content_type.as_deref())
                    }
                    (Method::DELETE, None) => {
                        let grace = query.get("gracePeriodSeconds").and_then(|g| g.parse().ok());
                        let body_grace = match read_json(request).await {
                            Ok((options, _)) => options.get("gracePeriodSeconds").and_then(Value::as_u64),
                            Err(_) => None,
                        };
                        self.delete_object(resource, &namespace, &name, grace.or(body_grace))
                            .map(|deleted| ok(&deleted))
                    }
                    (method, _) => Err(ApiError::method_not_allowed(format!("{method} is not supported here"))),
                }
            }
        }
    }

    fn list(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (objects, rv) = self.store.list(resource, namespace);
        let items: Vec<Value> = objects
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .collect();
        Ok(ok(&json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        })))
    }

    fn watch(
        &self,
        resource: &'static Resource,
        namespace: Option<String>,
        query: &HashMap<String, String>,
        stop: CancellationToken,
    ) -> Result<Response<Body>, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let since = match query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(rv) => Some(
                rv.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
            ),
        };
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        let request = WatchRequest {
            resource,
            namespace,
            labels,
            fields,
            since,
            timeout,
            bookmarks: query.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        };
        let lines = watch::start(self.store.clone(), request, stop);
        let stream = futures::stream::unfold(lines, |mut lines| async move {
            let line = lines.recv().await?;
            Some((Ok::<_, std::io::Error>(Frame::data(line)), lines))
        });
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    async fn create(
        &self,
        resource: &'static Resource,
        namespace: Option<String>,
        object: Value,
    ) -> Result<Response<Body>, ApiError> {
        if resource.plural == "tokenreviews" {
            return Ok(json_response(StatusCode::CREATED, &self.tokens.review(object), &[]));
        }
        let (created, warnings) = self.create_object(resource, namespace, object).await?;
        Ok(json_response(StatusCode::CREATED, &created, &warnings))
    }

    /// Creates an object as a client's POST would: checks, defaulting,
    /// admission, then the store. The lab's controllers create through here
    /// too, so their pods are admitted like any other.
    pub async fn create_object(
        &self,
        resource: &'static Resource,
        namespace: Option<String>,
        mut object: Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if resource.virtual_only {
            return Err(ApiError::method_not_allowed(format!(
                "{} cannot be stored",
                resource.plural
            )));
        }
        check_kind(resource, &object)?;
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        if resource.namespaced {
            let namespace = match (namespace, namespace_of(&object)) {
                (Some(path), body) if !body.is_empty() && body != path => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the object ({body}) does not match the namespace on the request ({path})"
                    )));
                }
                (Some(path), _) => path,
                (None, body) if !body.is_empty() => body.to_string(),
                (None, _) => {
                    return Err(ApiError::bad_request("a namespaced object needs a namespace"));
                }
            };
            let ns = self.store.get(Resource::named("namespaces"), "", &namespace)?;
            if ns.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::forbidden(format!(
                    "namespace {namespace} is being terminated"
                )));
            }
            object["metadata"]["namespace"] = json!(namespace);
        }
        let (object, warnings) = self.admission.create(resource, object).await?;
        Ok((self.store.create(resource, object)?, warnings))
    }

    fn replace(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        sub: Option<&str>,
        object: Value,
    ) -> Result<Response<Body>, ApiError> {
        if name_of(&object) != name && sub != Some("scale") {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&object)
            )));
        }
        let expected = store::rv_of(&object);
        let updated = self.store.modify(resource, namespace, name, |stored| {
            if expected.is_some_and(|rv| Some(rv) != store::rv_of(stored)) {
                return Err(ApiError::conflict(resource, name));
            }
            let object = match sub {
                None => self.admission.update(resource, stored, object)?,
                Some(_) => object,
            };
            apply_part(stored, object, sub);
            Ok(())
        })?;
        Ok(ok(&if sub == Some("scale") {
            scale_of(&updated)
        } else {
            updated
        }))
    }

    fn patch(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        sub: Option<&str>,
        patch: &Value,
        content_type: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let updated = self.store.modify(resource, namespace, name, |stored| {
            let mut target = if sub == Some("scale") { scale_of(stored) } else { stored.clone() };
            match content_type {
                Some("application/json-patch+json") => {
                    let operations: json_patch::Patch = serde_json::from_value(patch.clone())
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut target, &operations.0).map_err(|e| ApiError::invalid(resource.kind, name, format!("cannot apply the JSON patch: {e}")))?;
                }
                Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => json_patch::merge(&mut target, patch),
                other => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "unsupported patch type {other:?}: use application/merge-patch+json, application/strategic-merge-patch+json or application/json-patch+json"
                    )));
                }
            }
            if store::rv_of(patch).is_some_and(|rv| Some(rv) != store::rv_of(stored)) {
                return Err(ApiError::conflict(resource, name));
            }
            let target = match sub {
                None => self.admission.update(resource, stored, target)?,
                Some(_) => target,
            };
            apply_part(stored, target, sub);
            Ok(())
        })?;
        Ok(ok(&if sub == Some("scale") {
            scale_of(&updated)
        } else {
            updated
        }))
    }

    /// Deletes an object. Pods are deleted gracefully: they are marked with a
    /// deletionTimestamp and the kubelet removes them once their containers
    /// have stopped. Objects they own are collected by the lab's garbage
    /// collector.
    pub fn delete_object(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        grace: Option<u64>,
    ) -> Result<Value, ApiError> {
        if resource.plural != "pods" && resource.plural != "namespaces" {
            let removed = self.store.remove(resource, namespace, name)?;
            if resource.plural == "services"
                && let Some(ip) = removed.pointer("/spec/clusterIP").and_then(Value::as_str)
            {
                self.admission.cluster_ips.release(ip);
            }
            return Ok(removed);
        }
        self.store.modify(resource, namespace, name, |object| {
            if object.pointer("/metadata/deletionTimestamp").is_none() {
                let grace = grace
                    .or_else(|| {
                        object
                            .pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_u64)
                    })
                    .unwrap_or(30);
                object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if resource.plural == "namespaces" {
                    object["status"] = json!({"phase": "Terminating"});
                }
            }
            Ok(())
        })
    }
}

fn ok(value: &Value) -> Response<Body> {
    json_response(StatusCode::OK, value, &[])
}

fn check_kind(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or(resource.kind);
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .map_or_else(|| resource.api_version(), str::to_string);
    if kind != resource.kind || api_version != resource.api_version() {
        return Err(ApiError::bad_request(format!(
            "the object is a {api_version} {kind}, but was sent to {} ({} {})",
            resource.plural,
            resource.api_version(),
            resource.kind
        )));
    }
    Ok(())
}

/// Applies an update to the part of the object the endpoint owns: the main
/// resource keeps the stored status, `/status` changes only the status, and
/// `/scale` only `spec.replicas`.
fn apply_part(stored: &mut Value, new: Value, sub: Option<&str>) {
    match sub {
        Some("status") => stored["status"] = new.get("status").cloned().unwrap_or(Value::Null),
        Some("scale") => stored["spec"]["replicas"] = new.pointer("/spec/replicas").cloned().unwrap_or(json!(0)),
        _ => {
            let status = stored.get("status").cloned();
            let metadata = stored["metadata"].clone();
            *stored = new;
            if let Some(status) = status {
                stored["status"] = status;
            }
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                if let Some(value) = metadata.get(field) {
                    stored["metadata"][field] = value.clone();
                }
            }
        }
    }
}

/// The `autoscaling/v1` Scale view of a Deployment.
fn scale_of(deployment: &Value) -> Value {
    let selector = deployment
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": name_of(deployment),
            "namespace": namespace_of(deployment),
            "uid": deployment.pointer("/metadata/uid"),
            "resourceVersion": deployment.pointer("/metadata/resourceVersion"),
        },
        "spec": {"replicas": deployment.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": deployment.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}
