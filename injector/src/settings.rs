//! What the chart decides for every injected pod: images, resources, the
//! identity service's address, the trust domain and anchors, the proxy's
//! limits.

use strait_contract::limits::Limits;
use strait_contract::logging::LogFormat;
use strait_contract::{Setting, SettingError, names};

/// CPU and memory requests and limits of a container, as quantities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Resources {
    /// Checks each value is a quantity and each request at most its limit,
    /// as the API server will when it admits the injected pod; `names` are
    /// the variables the values came from (cpu request, cpu limit, memory
    /// request, memory limit).
    fn check(&self, names: [&str; 4]) -> Result<(), SettingError> {
        let values = [
            &self.cpu_request,
            &self.cpu_limit,
            &self.memory_request,
            &self.memory_limit,
        ];
        for (name, value) in names.iter().zip(values) {
            if let Some(value) = value {
                strait_contract::quantity::parse_resource(value)
                    .map_err(|problem| SettingError::new(*name, value.clone(), problem))?;
            }
        }
        for (resource, request, limit, name) in [
            ("cpu", &self.cpu_request, &self.cpu_limit, names[0]),
            ("memory", &self.memory_request, &self.memory_limit, names[2]),
        ] {
            if let (Some(request), Some(limit)) = (request, limit) {
                strait_contract::quantity::check_request_within_limit(resource, request, limit)
                    .map_err(|problem| SettingError::new(name, request.clone(), problem))?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    pub proxy_image: String,
    pub init_image: String,
    /// The strait-cni image, whose `validate` command is CNI mode's init
    /// container.
    pub cni_image: String,
    pub image_pull_policy: String,
    /// The proxy as a native sidecar (Kubernetes 1.29+), or as the first
    /// regular container with a postStart wait for older clusters.
    pub native_sidecar: bool,
    /// CNI mode (chart value `cni.enabled`): `strait-cni` writes the
    /// redirects when the pod's network is set up, and the injected init
    /// container is the unprivileged validator instead of `strait-init`.
    pub cni: bool,
    pub proxy_resources: Resources,
    pub init_resources: Resources,
    pub log_level: String,
    /// The proxies' log format (`STRAIT_PROXY_LOG_FORMAT`, text or json).
    pub log_format: LogFormat,
    /// host:port of the identity service.
    pub identity_addr: String,
    /// host:port of the destination service, which proxies ask about
    /// their destinations.
    pub destination_addr: String,
    pub trust_domain: String,
    /// PEM of the trust anchors proxies verify peers against.
    pub trust_anchors_pem: String,
    pub inbound_mode: String,
    /// The proxies' limits and timeouts; those unlike the proxy's defaults
    /// are written on every proxy.
    pub proxy_limits: Limits,
}

impl Default for InjectSettings {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        InjectSettings {
            proxy_image: format!("ghcr.io/strait-mesh/strait-proxy:{version}"),
            init_image: format!("ghcr.io/strait-mesh/strait-init:{version}"),
            cni_image: format!("ghcr.io/strait-mesh/strait-cni:{version}"),
            image_pull_policy: "IfNotPresent".into(),
            native_sidecar: true,
            cni: false,
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
            log_format: LogFormat::Text,
            identity_addr: "strait-identity.strait-system.svc.cluster.local:8083".into(),
            destination_addr: "strait-destination.strait-system.svc.cluster.local:8086".into(),
            trust_domain: names::DEFAULT_TRUST_DOMAIN.into(),
            trust_anchors_pem: String::new(),
            inbound_mode: "permissive".into(),
            proxy_limits: Limits::default(),
        }
    }
}

/// The variables the chart sets on the injector.
pub mod env {
    pub const PROXY_IMAGE: &str = "STRAIT_PROXY_IMAGE";
    pub const INIT_IMAGE: &str = "STRAIT_INIT_IMAGE";
    pub const CNI_IMAGE: &str = "STRAIT_CNI_IMAGE";
    pub const IMAGE_PULL_POLICY: &str = "STRAIT_IMAGE_PULL_POLICY";
    pub const NATIVE_SIDECAR: &str = "STRAIT_NATIVE_SIDECAR";
    /// `true` in CNI mode.
    pub const CNI: &str = "STRAIT_CNI";
    pub const PROXY_CPU_REQUEST: &str = "STRAIT_PROXY_CPU_REQUEST";
    pub const PROXY_CPU_LIMIT: &str = "STRAIT_PROXY_CPU_LIMIT";
    pub const PROXY_MEMORY_REQUEST: &str = "STRAIT_PROXY_MEMORY_REQUEST";
    pub const PROXY_MEMORY_LIMIT: &str = "STRAIT_PROXY_MEMORY_LIMIT";
    pub const INIT_CPU_REQUEST: &str = "STRAIT_INIT_CPU_REQUEST";
    pub const INIT_CPU_LIMIT: &str = "STRAIT_INIT_CPU_LIMIT";
    pub const INIT_MEMORY_REQUEST: &str = "STRAIT_INIT_MEMORY_REQUEST";
    pub const INIT_MEMORY_LIMIT: &str = "STRAIT_INIT_MEMORY_LIMIT";
    pub const PROXY_LOG_LEVEL: &str = "STRAIT_PROXY_LOG_LEVEL";
    pub const PROXY_LOG_FORMAT: &str = "STRAIT_PROXY_LOG_FORMAT";
    pub const PROXY_INBOUND_MODE: &str = "STRAIT_PROXY_INBOUND_MODE";
    /// host:port of the identity service, as proxies reach it.
    pub const IDENTITY_SERVICE: &str = "STRAIT_IDENTITY_SERVICE";
    pub const DESTINATION_SERVICE: &str = "STRAIT_DESTINATION_SERVICE";
    pub const TRUST_DOMAIN: &str = "STRAIT_TRUST_DOMAIN";
    /// A file holding the trust anchors' PEM.
    pub const TRUST_ANCHORS_FILE: &str = "STRAIT_TRUST_ANCHORS_FILE";

    /// The injector's variable for a proxy limit: `STRAIT_PROXY_` and the
    /// rest of the proxy's name, as `STRAIT_PROXY_MAX_CONNECTIONS` for
    /// `STRAIT_MAX_CONNECTIONS`.
    pub fn proxy_limit(proxy_name: &str) -> String {
        format!("STRAIT_PROXY_{}", proxy_name.trim_start_matches("STRAIT_"))
    }
}

impl InjectSettings {
    /// Reads the settings through `env` (so tests can pass a map), with
    /// the defaults for anything unset.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let defaults = InjectSettings::default();
        let text = |name: &str, default: String| env(name).filter(|v| !v.is_empty()).unwrap_or(default);
        let optional = |name: &str, default: Option<String>| match env(name) {
            Some(value) if value.is_empty() => None,
            Some(value) => Some(value),
            None => default,
        };
        let native_sidecar =
            Setting::new(env::NATIVE_SIDECAR, env(env::NATIVE_SIDECAR)).switch(true, "true", "false")?;
        let cni = Setting::new(env::CNI, env(env::CNI)).switch(false, "true", "false")?;
        if cni && !native_sidecar {
            // The plugin's redirects exist from the pod's first instant: the
            // application's init containers, running before a non-native
            // proxy, would have no outbound TCP at all.
            return Err(SettingError::new(
                env::CNI,
                "true",
                format!(
                    "CNI mode needs the proxy as a native sidecar ({}=true, Kubernetes 1.29+)",
                    env::NATIVE_SIDECAR
                ),
            ));
        }
        let trust_anchors_pem = match env(env::TRUST_ANCHORS_FILE) {
            None => String::new(),
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|e| SettingError::new(env::TRUST_ANCHORS_FILE, path.clone(), e.to_string()))?,
        };
        let proxy_limits = Limits::from_env(|proxy_name| {
            let name = env::proxy_limit(proxy_name);
            env(&name).filter(|v| !v.trim().is_empty()).map(|value| (name, value))
        })?;
        let resources = |names: [&str; 4], default: &Resources| {
            let resources = Resources {
                cpu_request: optional(names[0], default.cpu_request.clone()),
                cpu_limit: optional(names[1], default.cpu_limit.clone()),
                memory_request: optional(names[2], default.memory_request.clone()),
                memory_limit: optional(names[3], default.memory_limit.clone()),
            };
            resources.check(names).map(|()| resources)
        };
        Ok(InjectSettings {
            proxy_image: text(env::PROXY_IMAGE, defaults.proxy_image.clone()),
            init_image: text(env::INIT_IMAGE, defaults.init_image.clone()),
            cni_image: text(env::CNI_IMAGE, defaults.cni_image.clone()),
            image_pull_policy: text(env::IMAGE_PULL_POLICY, defaults.image_pull_policy.clone()),
            native_sidecar,
            cni,
            proxy_resources: resources(
                [
                    env::PROXY_CPU_REQUEST,
                    env::PROXY_CPU_LIMIT,
                    env::PROXY_MEMORY_REQUEST,
                    env::PROXY_MEMORY_LIMIT,
                ],
                &defaults.proxy_resources,
            )?,
            init_resources: resources(
                [
                    env::INIT_CPU_REQUEST,
                    env::INIT_CPU_LIMIT,
                    env::INIT_MEMORY_REQUEST,
                    env::INIT_MEMORY_LIMIT,
                ],
                &defaults.init_resources,
            )?,
            log_level: {
                let filter = text(env::PROXY_LOG_LEVEL, defaults.log_level.clone());
                strait_contract::check_log_filter(&filter)
                    .map_err(|problem| SettingError::new(env::PROXY_LOG_LEVEL, filter.clone(), problem))?;
                filter
            },
            log_format: Setting::new(env::PROXY_LOG_FORMAT, env(env::PROXY_LOG_FORMAT))
                .parse(defaults.log_format, LogFormat::parse)?,
            identity_addr: text(env::IDENTITY_SERVICE, defaults.identity_addr.clone()),
            destination_addr: text(env::DESTINATION_SERVICE, defaults.destination_addr.clone()),
            trust_domain: text(env::TRUST_DOMAIN, defaults.trust_domain.clone()),
            trust_anchors_pem,
            inbound_mode: text(env::PROXY_INBOUND_MODE, defaults.inbound_mode.clone()),
            proxy_limits,
        })
    }
}
