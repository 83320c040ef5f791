//! What the chart decides for every injected pod: images, resources, the
//! identity service's address, the trust domain and anchors.

use strait_contract::names;

/// CPU and memory requests and limits of a container, as quantities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    pub proxy_image: String,
    pub init_image: String,
    pub image_pull_policy: String,
    /// The proxy as a native sidecar (Kubernetes 1.29+), or as the first
    /// regular container with a postStart wait for older clusters.
    pub native_sidecar: bool,
    pub proxy_resources: Resources,
    pub init_resources: Resources,
    pub log_level: String,
    /// host:port of the identity service.
    pub identity_addr: String,
    pub trust_domain: String,
    /// PEM of the trust anchors proxies verify peers against.
    pub trust_anchors_pem: String,
    pub inbound_mode: String,
}

impl Default for InjectSettings {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        InjectSettings {
            proxy_image: format!("ghcr.io/strait-mesh/strait-proxy:{version}"),
            init_image: format!("ghcr.io/strait-mesh/strait-init:{version}"),
            image_pull_policy: "IfNotPresent".into(),
            native_sidecar: true,
            proxy_resources: Resources {
                cpu_request: Some("100m".into()),
                cpu_limit: None,
                memory_request: Some("20Mi".into()),
                memory_limit: Some("250Mi".into()),
            },
            init_resources: Resources {
                cpu_request: Some("10m".into()),
                cpu_limit: Some("100m".into()),
                memory_request: Some("10Mi".into()),
                memory_limit: Some("50Mi".into()),
            },
            log_level: "info".into(),
            identity_addr: "strait-identity.strait-system.svc.cluster.local:8083".into(),
            trust_domain: names::DEFAULT_TRUST_DOMAIN.into(),
            trust_anchors_pem: String::new(),
            inbound_mode: "permissive".into(),
        }
    }
}
