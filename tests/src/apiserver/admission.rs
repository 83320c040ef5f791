//! What the API server does to an object before storing it, in Kubernetes'
//! order: defaulting (as its built-in admission does), ClusterIP
//! allocation, the mutating admission step for pods (sidecar injection),
//! field validation (resource quantities, see [`super::validation`]), then
//! validating admission (Pod Security, see [`super::podsecurity`]).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::error::ApiError;
use super::resource::Resource;
use super::store::{Store, namespace_of, random_suffix};
use super::{gateway, podsecurity, validation};

/// A pod mutation and the warnings to return with the admission.
pub struct Mutated {
    pub pod: Value,
    pub warnings: Vec<String>,
}

/// The mutating admission step for pods: given the pod and its namespace,
/// returns the pod to store.
pub trait PodMutator: Send + Sync {
    fn mutate<'a>(&'a self, pod: Value, namespace: &'a Value) -> BoxFuture<'a, Result<Mutated, ApiError>>;
}

/// Hands out ClusterIPs from the service range. Like Kubernetes, an address
/// just released is not handed out again at once (Kubernetes picks at
/// random; the lab goes round the range), so a Service deleted and made
/// again gets a new ClusterIP, as clients must expect.
pub struct ClusterIps {
    base: Ipv4Addr,
    used: Mutex<Allocations>,
}

#[derive(Default)]
struct Allocations {
    offsets: BTreeSet<u32>,
    /// The offset handed out last; the next search starts after it.
    last: u32,
}

/// Offsets in the range: .1 is the kubernetes Service, .10 the cluster DNS,
/// by convention; dynamic ones start at .11.
const FIRST_DYNAMIC: u32 = 11;
const RANGE: u32 = 65_536;

impl ClusterIps {
    pub fn new(base: Ipv4Addr) -> Self {
        ClusterIps {
            base,
            used: Mutex::new(Allocations::default()),
        }
    }

    /// Reserves a given address (one a manifest asked for).
    fn reserve(&self, ip: Ipv4Addr) -> Result<(), ApiError> {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
        if offset == 0 || offset >= RANGE {
            return Err(ApiError::invalid(
                "Service",
                "",
                format!(
                    "spec.clusterIP: {ip} is not in the lab's service range {}/16",
                    self.base
                ),
            ));
        }
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if !used.offsets.insert(offset) {
            return Err(ApiError::invalid(
                "Service",
                "",
                format!("spec.clusterIP: {ip} is already allocated"),
            ));
        }
        Ok(())
    }

    fn allocate(&self) -> Result<Ipv4Addr, ApiError> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let start = used.last.max(FIRST_DYNAMIC - 1);
        let offset = (start + 1..RANGE - 1)
            .chain(FIRST_DYNAMIC..=start)
            .find(|o| !used.offsets.contains(o))
            .ok_or_else(|| ApiError::internal("service range exhausted"))?;
        used.offsets.insert(offset);
        used.last = offset;
        Ok(Ipv4Addr::from(u32::from(self.base) + offset))
    }

    pub fn release(&self, ip: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
            self.used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .offsets
                .remove(&offset);
        }
    }
}

pub struct Admission {
    pub store: Arc<Store>,
    pub cluster_ips: ClusterIps,
    pub pod_mutator: Option<Arc<dyn PodMutator>>,
}

impl Admission {
    /// Defaults and mutates a new object; returns it with any warnings.
    pub async fn create(&self, resource: &'static Resource, object: Value) -> Result<(Value, Vec<String>), ApiError> {
        match resource.plural {
            "services" => Ok((self.default_service(object)?, Vec::new())),
            "pods" => self.admit_pod(object).await,
            "deployments" => {
                let deployment = default_deployment(object);
                validation::validate_resources("Deployment", &deployment)?;
                Ok((deployment, Vec::new()))
            }
            "jobs" => {
                validation::validate_resources("Job", &object)?;
                Ok((object, Vec::new()))
            }
            "daemonsets" => {
                validation::validate_resources("DaemonSet", &object)?;
                Ok((object, Vec::new()))
            }
            "namespaces" => {
                podsecurity::check_namespace(&object)?;
                Ok((label_namespace(object), Vec::new()))
            }
            "httproutes" | "grpcroutes" | "referencegrants" => {
                gateway::validate(resource.kind, &object)?;
                Ok((object, Vec::new()))
            }
            _ => Ok((object, Vec::new())),
        }
    }

    /// Defaults a changed object (a PUT or PATCH of the whole object), as
    /// Kubernetes does on every write; a Service keeps the addresses it was
    /// allocated when the new object leaves them out (as `helm upgrade`,
    /// `kubectl replace` and GitOps tools send it) and may not change them.
    pub fn update(&self, resource: &'static Resource, old: &Value, mut new: Value) -> Result<Value, ApiError> {
        match resource.plural {
            "services" => {
                let name = new
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let allocated = old.pointer("/spec/clusterIP").cloned().unwrap_or(Value::Null);
                let spec = new
                    .get_mut("spec")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| ApiError::invalid("Service", &name, "spec: Required value"))?;
                match spec.get("clusterIP") {
                    None | Some(Value::Null) => {
                        spec.insert("clusterIP".into(), allocated);
                    }
                    Some(Value::String(ip)) if ip.is_empty() => {
                        spec.insert("clusterIP".into(), allocated);
                    }
                    Some(ip) if *ip != allocated => {
                        return Err(ApiError::invalid(
                            "Service",
                            &name,
                            format!("spec.clusterIP: Invalid value: {ip}: field is immutable"),
                        ));
                    }
                    Some(_) => {}
                }
                service_defaults(spec);
                Ok(new)
            }
            "pods" => {
                let pod = default_pod(new);
                validation::validate_resources("Pod", &pod)?;
                Ok(pod)
            }
            "deployments" => {
                let deployment = default_deployment(new);
                validation::validate_resources("Deployment", &deployment)?;
                Ok(deployment)
            }
            "jobs" => {
                validation::validate_resources("Job", &new)?;
                Ok(new)
            }
            "daemonsets" => {
                validation::validate_resources("DaemonSet", &new)?;
                Ok(new)
            }
            "namespaces" => {
                podsecurity::check_namespace(&new)?;
                Ok(label_namespace(new))
            }
            "httproutes" | "grpcroutes" | "referencegrants" => {
                gateway::validate(resource.kind, &new)?;
                Ok(new)
            }
            _ => Ok(new),
        }
    }

    fn default_service(&self, mut service: Value) -> Result<Value, ApiError> {
        let spec = service
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::invalid("Service", "", "spec: Required value"))?;
        match spec.get("clusterIP").and_then(Value::as_str) {
            Some("None") => {}
            Some(ip) if !ip.is_empty() => {
                let ip = ip.parse().map_err(|_| {
                    ApiError::invalid("Service", "", format!("spec.clusterIP: {ip:?} is not an IPv4 address"))
                })?;
                self.cluster_ips.reserve(ip)?;
            }
            _ => {
                spec.insert("clusterIP".into(), json!(self.cluster_ips.allocate()?.to_string()));
            }
        }
        service_defaults(spec);
        Ok(service)
    }

    async fn admit_pod(&self, pod: Value) -> Result<(Value, Vec<String>), ApiError> {
        let pod = default_pod(pod);
        let namespace = self.store.get(Resource::named("namespaces"), "", namespace_of(&pod))?;
        let (mut pod, mut warnings) = match &self.pod_mutator {
            Some(mutator) => {
                let mutated = mutator.mutate(pod, &namespace).await?;
                (mutated.pod, mutated.warnings)
            }
            None => (pod, Vec::new()),
        };
        // The name is generated before validation, as Kubernetes does, so
        // that refusals name the pod.
        let generated = pod["metadata"]["generateName"]
            .as_str()
            .map(|prefix| format!("{prefix}{}", random_suffix(5)));
        if pod["metadata"]["name"].as_str().unwrap_or_default().is_empty()
            && let Some(name) = generated
        {
            pod["metadata"]["name"] = json!(name);
        }
        validation::validate_resources("Pod", &pod)?;
        warnings.extend(podsecurity::admit(&namespace, &pod)?);
        Ok((pod, warnings))
    }
}

/// A Service's defaults around its (allocated) `clusterIP`.
fn service_defaults(spec: &mut serde_json::Map<String, Value>) {
    spec.entry("type").or_insert(json!("ClusterIP"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
    spec.insert("clusterIPs".into(), json!([ip]));
    spec.insert("ipFamilies".into(), json!(["IPv4"]));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert(json!("TCP"));
            if let Some(number) = port.get("port").cloned() {
                port.entry("targetPort").or_insert(number);
            }
        }
    }
}

/// Pod defaults that Kubernetes fills in and the lab relies on.
pub fn default_pod(mut pod: Value) -> Value {
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("restartPolicy").or_insert(json!("Always"));
        spec.entry("serviceAccountName").or_insert(json!("default"));
        spec.entry("terminationGracePeriodSeconds").or_insert(json!(30));
        spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
        spec.entry("schedulerName").or_insert(json!("default-scheduler"));
    }
    if pod.get("status").is_none() {
        pod["status"] = json!({"phase": "Pending"});
    }
    pod
}

/// Every namespace carries its own name as a label, so selectors can match it.
fn label_namespace(mut namespace: Value) -> Value {
    let name = namespace.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    namespace["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    namespace
}

fn default_deployment(mut deployment: Value) -> Value {
    if let Some(spec) = deployment.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("replicas").or_insert(json!(1));
    }
    deployment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Admission {
        Admission {
            store: Arc::new(Store::default()),
            cluster_ips: ClusterIps::new(Ipv4Addr::new(198, 19, 0, 0)),
            pod_mutator: None,
        }
    }

    #[tokio::test]
    async fn a_service_keeps_its_cluster_ip_through_a_replace_that_leaves_it_out_and_may_not_change_it() {
        let admission = admission();
        let services = Resource::named("services");
        let rendered = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        let (created, _) = admission.create(services, rendered.clone()).await.unwrap();
        let ip = created["spec"]["clusterIP"].clone();
        assert!(ip.as_str().is_some_and(|ip| ip.starts_with("198.19.")), "{created}");
        let replaced = admission.update(services, &created, rendered).unwrap();
        assert_eq!(replaced["spec"]["clusterIP"], ip);
        assert_eq!(replaced["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(replaced["spec"]["ports"][0]["targetPort"], 80);
        let moved = json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "198.19.9.9", "ports": []}});
        let error = admission.update(services, &created, moved).unwrap_err();
        assert!(format!("{error:?}").contains("field is immutable"), "{error:?}");
    }

    #[test]
    fn a_released_cluster_ip_is_not_handed_out_again_at_once() {
        let ips = ClusterIps::new(Ipv4Addr::new(198, 19, 0, 0));
        let first = ips.allocate().unwrap();
        assert_eq!(first, Ipv4Addr::new(198, 19, 0, 11));
        ips.release(&first.to_string());
        let second = ips.allocate().unwrap();
        assert_ne!(second, first, "a Service made again gets a new ClusterIP");
        ips.reserve(Ipv4Addr::new(198, 19, 0, 13)).unwrap();
        assert_eq!(
            ips.allocate().unwrap(),
            Ipv4Addr::new(198, 19, 0, 14),
            "reserved ones are skipped"
        );
        // Round the range: the freed first address comes back only then.
        ips.used.lock().unwrap().last = RANGE - 2;
        assert_eq!(ips.allocate().unwrap(), first);
    }
}
