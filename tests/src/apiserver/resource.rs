//! The kinds the lab's API server serves, and where they live in the REST
//! path space (`/api/v1/...` for the core group, `/apis/GROUP/VERSION/...`).

/// One REST resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Create-only review kinds (TokenReview) are answered, never stored.
    pub virtual_only: bool,
}

const fn stored(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        virtual_only: false,
    }
}

pub static RESOURCES: &[Resource] = &[
    stored("", "v1", "namespaces", "Namespace", false),
    stored("", "v1", "pods", "Pod", true),
    stored("", "v1", "services", "Service", true),
    stored("", "v1", "serviceaccounts", "ServiceAccount", true),
    stored("", "v1", "configmaps", "ConfigMap", true),
    stored("", "v1", "secrets", "Secret", true),
    stored("", "v1", "events", "Event", true),
    stored("apps", "v1", "deployments", "Deployment", true),
    stored("apps", "v1", "daemonsets", "DaemonSet", true),
    stored("batch", "v1", "jobs", "Job", true),
    stored("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true),
    // The Gateway API's route kinds and ReferenceGrant, as if their CRDs
    // (standard channel) were installed: `gateway::validate` holds them to
    // the schema.
    stored("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", true),
    stored("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute", true),
    stored(
        "gateway.networking.k8s.io",
        "v1",
        "referencegrants",
        "ReferenceGrant",
        true,
    ),
    stored("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true),
    stored("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
    stored("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true),
    stored("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false),
    stored(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    stored(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
    ),
    Resource {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
        virtual_only: true,
    },
];

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Finds the resource for a manifest's `apiVersion` and `kind`.
    pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }

    pub fn named(plural: &str) -> &'static Resource {
        RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .unwrap_or_else(|| panic!("the lab serves no resource {plural}"))
    }

    /// The REST path of a collection, or of one object when `name` is given.
    pub fn path(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut path = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let (true, Some(namespace)) = (self.namespaced, namespace) {
            path.push_str(&format!("/namespaces/{namespace}"));
        }
        path.push('/');
        path.push_str(self.plural);
        if let Some(name) = name {
            path.push('/');
            path.push_str(name);
        }
        path
    }
}
