//! Discovery documents, so kubectl and other clients can find the kinds.

use serde_json::{Value, json};

use super::resource::RESOURCES;

pub fn version() -> Value {
    json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-strait-lab", "platform": "linux/amd64"})
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

pub fn groups() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for resource in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if groups.iter().any(|g| g["name"] == resource.group) {
            continue;
        }
        let version = json!({"groupVersion": resource.api_version(), "version": resource.version});
        groups.push(json!({"name": resource.group, "versions": [version], "preferredVersion": version}));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn resources(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let verbs: &[&str] = if r.virtual_only {
                &["create"]
            } else {
                &["create", "delete", "get", "list", "patch", "update", "watch"]
            };
            json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs})
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}
