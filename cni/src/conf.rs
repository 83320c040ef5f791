//! strait-cni's fields in its network configuration (the object the
//! installer appends to the node's conflist):
//!
//! ```json
//! {"type": "strait-cni", "kubeconfig": "/etc/cni/net.d/strait-cni.kubeconfig",
//!  "excludeNamespaces": ["kube-system", "strait-system"]}
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The plugin's settings, read from the network configuration's own keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConf {
    /// The kubeconfig with which the plugin reads pods (the installer writes
    /// it with its ServiceAccount's token file); a path on the node.
    pub kubeconfig: PathBuf,
    /// Namespaces whose pods the plugin never looks up: the control plane's
    /// and the cluster's own, so their networking never waits on the API
    /// server.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
}

/// The keys of a network configuration that the CNI specification or the
/// runtime own (well-known fields, and `runtimeConfig`/`args`), which are
/// not the plugin's.
const SPEC_KEYS: [&str; 2] = ["cniVersions", "disableCheck"];

impl PluginConf {
    /// Reads the plugin's keys from the configuration's keys the spec does
    /// not define (`custom`). Errors name the key and what was wrong.
    pub fn from_custom(custom: &HashMap<String, Value>) -> Result<Self, String> {
        let ours: serde_json::Map<String, Value> = custom
            .iter()
            .filter(|(key, _)| !SPEC_KEYS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let conf: PluginConf = serde_json::from_value(Value::Object(ours))
            .map_err(|e| format!("strait-cni's network configuration: {e}"))?;
        if conf.kubeconfig.as_os_str().is_empty() {
            return Err("strait-cni's network configuration: kubeconfig is empty".into());
        }
        Ok(conf)
    }

    /// This object as it goes into a conflist's `plugins`.
    pub fn to_plugin_entry(&self) -> Value {
        let mut entry = serde_json::to_value(self).unwrap_or_default();
        entry["type"] = Value::from(strait_contract::names::CNI_PLUGIN);
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(value: Value) -> HashMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_plugins_keys_are_read_and_unknown_ones_named() {
        let conf = PluginConf::from_custom(&custom(serde_json::json!({
            "kubeconfig": "/etc/cni/net.d/strait-cni.kubeconfig",
            "excludeNamespaces": ["kube-system"],
        })))
        .unwrap();
        assert_eq!(conf.exclude_namespaces, ["kube-system"]);
        let error = PluginConf::from_custom(&custom(serde_json::json!({
            "kubeconfig": "/k", "excludeNamespace": ["x"],
        })))
        .unwrap_err();
        assert!(error.contains("unknown field `excludeNamespace`"), "{error}");
        let error = PluginConf::from_custom(&custom(serde_json::json!({}))).unwrap_err();
        assert!(error.contains("missing field `kubeconfig`"), "{error}");
        let error = PluginConf::from_custom(&custom(serde_json::json!({"kubeconfig": 3}))).unwrap_err();
        assert!(error.contains("invalid type"), "{error}");
    }
}
