//! Which pods get the redirects, and with which settings.
//!
//! The settings are not worked out here from the pod's annotations: the
//! injector already turned them into the `STRAIT_*` variables of the
//! container it added (`strait-validate` in CNI mode), and the plugin reads
//! that container's variables into [`strait_init::Config`] exactly as
//! `strait-init` reads its own environment. One translation, one rule
//! builder: the rules cannot drift. Pods injected without CNI mode (their
//! `strait-init` writes the rules once their own init containers ran) are
//! left to it.

use k8s_openapi::api::core::v1::{Container, Pod};
use strait_contract::names;
use strait_init::{Args, Config};

/// The pod `CNI_ARGS` names (`K8S_POD_NAMESPACE`, `K8S_POD_NAME` and, where
/// the runtime passes it, `K8S_POD_UID`, as Kubernetes runtimes do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl PodRef {
    /// Reads `CNI_ARGS` (`K=V;K=V`). `None` when the caller is not a
    /// Kubernetes runtime (no pod names): such a sandbox is not meshed.
    pub fn from_cni_args(args: Option<&str>) -> Option<PodRef> {
        let args = args?;
        let get = |key: &str| {
            args.split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(PodRef {
            namespace: get("K8S_POD_NAMESPACE")?,
            name: get("K8S_POD_NAME")?,
            uid: get("K8S_POD_UID"),
        })
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the plugin does for a pod.
#[derive(Debug)]
pub enum Decision {
    /// Write these redirects.
    Redirect(Box<Config>),
    /// Leave the pod's network alone, and why.
    Skip(&'static str),
}

/// Decides for a pod as read from the API server. An error names the
/// setting that could not be read; the pod must not start unmeshed then.
pub fn decide(pod: &Pod) -> Result<Decision, String> {
    let Some(spec) = &pod.spec else {
        return Ok(Decision::Skip("the pod has no spec"));
    };
    if spec.host_network == Some(true) {
        return Ok(Decision::Skip("the pod uses the node's network"));
    }
    let carrier = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == names::VALIDATE_CONTAINER);
    let Some(carrier) = carrier else {
        return Ok(Decision::Skip(
            "the pod is not meshed in CNI mode (no strait-validate container)",
        ));
    };
    redirect_config(carrier).map(|config| Decision::Redirect(Box::new(config)))
}

/// The redirect settings a container of the injector carries, read as
/// `strait-init` reads its environment.
pub fn redirect_config(container: &Container) -> Result<Config, String> {
    let env = container.env.clone().unwrap_or_default();
    if let Some(from) = env
        .iter()
        .find(|v| v.name.starts_with("STRAIT_") && v.value_from.is_some())
    {
        return Err(format!(
            "container {}: {} is set with valueFrom, which only the kubelet can resolve",
            container.name, from.name
        ));
    }
    let lookup = |name: &str| env.iter().find(|v| v.name == name).and_then(|v| v.value.clone());
    Config::from_args(Args::default(), lookup).map_err(|e| format!("container {}: {e}", container.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_name_the_pod() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc";
        assert_eq!(
            PodRef::from_cni_args(Some(&format!("{args};K8S_POD_UID=1-2"))),
            Some(PodRef {
                namespace: "mesh".into(),
                name: "web-1".into(),
                uid: Some("1-2".into()),
            })
        );
        assert_eq!(PodRef::from_cni_args(Some(args)).unwrap().uid, None);
        assert_eq!(PodRef::from_cni_args(Some("K8S_POD_NAMESPACE=mesh")), None);
        assert_eq!(PodRef::from_cni_args(None), None);
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn only_meshed_pods_off_the_host_network_get_rules() {
        let meshed = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "strait-validate", "env": [{"name": "STRAIT_SKIP_INBOUND_PORTS", "value": "22"}]}],
            "containers": [{"name": "app"}]}}));
        let Decision::Redirect(config) = decide(&meshed).unwrap() else {
            panic!("a meshed pod gets rules")
        };
        assert!(config.skip_inbound_ports.contains(22));
        let plain = pod(serde_json::json!({"spec": {"containers": [{"name": "app"}]}}));
        assert!(matches!(decide(&plain).unwrap(), Decision::Skip(_)));
        let host = pod(serde_json::json!({"spec": {"hostNetwork": true,
            "initContainers": [{"name": "strait-validate"}], "containers": [{"name": "app"}]}}));
        assert!(matches!(decide(&host).unwrap(), Decision::Skip(_)));
        // strait-init writes its own rules, after the pod's init containers.
        let classic = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "strait-init"}], "containers": [{"name": "app"}]}}));
        assert!(matches!(decide(&classic).unwrap(), Decision::Skip(_)));
    }

    #[test]
    fn a_setting_that_cannot_be_read_is_an_error_naming_it() {
        let bad = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "strait-validate", "env": [{"name": "STRAIT_SKIP_OUTBOUND_PORTS", "value": "http"}]}],
            "containers": [{"name": "app"}]}}));
        let error = decide(&bad).unwrap_err();
        assert!(
            error.contains("strait-validate") && error.contains("STRAIT_SKIP_OUTBOUND_PORTS"),
            "{error}"
        );
        let from = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "strait-validate", "env": [{"name": "STRAIT_PROXY_UID", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}],
            "containers": [{"name": "app"}]}}));
        assert!(decide(&from).unwrap_err().contains("valueFrom"));
    }
}
