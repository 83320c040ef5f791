//! The containers and volume the injector adds to a pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use strait_contract::PortSet;
use strait_contract::limits::Limits;
use strait_contract::logging::{self, LogFormat};
use strait_contract::names::{self, env};

use super::annotations::Overrides;
use crate::settings::{InjectSettings, Resources};

pub const TOKEN_VOLUME: &str = "strait-identity-token";
/// The proxy's projected token lives an hour; the kubelet refreshes it.
const TOKEN_LIFETIME_SECONDS: i64 = 3600;

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn requirements(resources: &Resources) -> ResourceRequirements {
    let set = |pairs: [(&str, &Option<String>); 2]| {
        let map: BTreeMap<String, Quantity> = pairs
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_string(), Quantity(value.clone()?))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: set([("cpu", &resources.cpu_request), ("memory", &resources.memory_request)]),
        limits: set([("cpu", &resources.cpu_limit), ("memory", &resources.memory_limit)]),
        ..ResourceRequirements::default()
    }
}

/// The container runtime's default seccomp profile, which Pod Security
/// "restricted" asks for.
fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    })
}

/// The init container that installs the iptables redirects: a non-root user
/// with only NET_ADMIN and NET_RAW, which the strait-init image's file
/// capabilities let it use; /run is an emptyDir for iptables-legacy's lock.
/// In CNI mode `strait-cni` has written the rules already and this is the
/// validator (`strait-cni validate`, from its image, whose binary carries
/// no file capabilities) with no capability at all, which passes Pod
/// Security "restricted". Both carry the same `STRAIT_*`
/// settings: `strait-cni` reads them from here.
pub fn init_container(settings: &InjectSettings, overrides: &Overrides) -> Container {
    let mut env_vars = vec![var(env::PROXY_UID, names::PROXY_UID.to_string())];
    let optional = [
        (env::SKIP_INBOUND_PORTS, &overrides.skip_inbound_ports),
        (env::SKIP_OUTBOUND_PORTS, &overrides.skip_outbound_ports),
        (env::SKIP_OUTBOUND_CIDRS, &overrides.skip_outbound_cidrs),
    ];
    env_vars.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some(var(name, value.clone()?))),
    );
    let (name, image, args, add, volume_mounts) = if settings.cni {
        (
            names::VALIDATE_CONTAINER,
            &settings.cni_image,
            Some(vec!["validate".to_string()]),
            None,
            None,
        )
    } else {
        (
            names::INIT_CONTAINER,
            &settings.init_image,
            None,
            Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            Some(vec![VolumeMount {
                name: "strait-init-run".into(),
                mount_path: "/run".into(),
                ..VolumeMount::default()
            }]),
        )
    };
    Container {
        name: name.to_string(),
        image: Some(image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args,
        env: Some(env_vars),
        resources: Some(requirements(&settings.init_resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(names::INIT_UID)),
            run_as_group: Some(i64::from(names::INIT_UID)),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: runtime_default_seccomp(),
            ..SecurityContext::default()
        }),
        volume_mounts,
        ..Container::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(names::ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The proxy sidecar for a pod whose identity is `identity`, securing its
/// traffic with it unless `mtls` is false (the pod opted out: the identity
/// then only reaches the control plane), which answers the application's
/// rewritten TCP probes on `app_probe_ports` (see [`super::probes`]).
pub fn proxy_container(
    settings: &InjectSettings,
    overrides: &Overrides,
    resources: &Resources,
    identity: &str,
    mtls: bool,
    app_probe_ports: &PortSet,
) -> Container {
    let mut env_vars = vec![
        var(
            env::LOG_LEVEL,
            overrides
                .log_level
                .clone()
                .unwrap_or_else(|| settings.log_level.clone()),
        ),
        var(
            env::INBOUND_MODE,
            overrides
                .inbound_mode
                .clone()
                .unwrap_or_else(|| settings.inbound_mode.clone()),
        ),
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
        field(env::POD_IP, "status.podIP"),
        field(env::HOST_IP, "status.hostIP"),
        field(env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
    ];
    env_vars.extend([
        var(env::IDENTITY, identity),
        var(env::IDENTITY_ADDR, settings.identity_addr.clone()),
        var(env::DESTINATION_ADDR, settings.destination_addr.clone()),
        var(env::IDENTITY_TOKEN, format!("{}/token", names::IDENTITY_TOKEN_DIR)),
        var(env::TRUST_DOMAIN, settings.trust_domain.clone()),
        var(env::TRUST_ANCHORS, settings.trust_anchors_pem.clone()),
    ]);
    if !mtls {
        env_vars.push(var(env::MTLS, "disabled"));
    }
    if let Some(opaque) = &overrides.opaque_ports {
        env_vars.push(var(env::OPAQUE_PORTS, opaque.clone()));
    }
    if settings.log_format != LogFormat::Text {
        env_vars.push(var(logging::LOG_FORMAT, settings.log_format.as_str()));
    }
    if !app_probe_ports.is_empty() {
        env_vars.push(var(env::APP_PROBE_PORTS, app_probe_ports.to_string()));
    }
    if !settings.native_sidecar {
        // Stopped together with the application: serve it until it stops.
        env_vars.push(var(env::WAIT_FOR_APP, "true"));
    }
    let defaults = Limits::default().to_env();
    env_vars.extend(
        settings
            .proxy_limits
            .to_env()
            .into_iter()
            .filter(|limit| !defaults.contains(limit))
            .map(|(name, value)| var(name, value)),
    );
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let mut container = Container {
        name: names::PROXY_CONTAINER.to_string(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        env: Some(env_vars),
        ports: Some(vec![
            port("strait-admin", names::ADMIN_PORT),
            port("strait-inbound", names::INBOUND_PORT),
        ]),
        resources: Some(requirements(resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(names::PROXY_UID)),
            run_as_group: Some(i64::from(names::PROXY_UID)),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: runtime_default_seccomp(),
            ..SecurityContext::default()
        }),
        startup_probe: Some(http_probe("/ready", 1, 120)),
        readiness_probe: Some(http_probe("/ready", 2, 3)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: names::IDENTITY_TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    if settings.native_sidecar {
        container.restart_policy = Some("Always".into());
    } else {
        // A regular first container: the kubelet starts the next container
        // only once this hook returns, that is once the proxy is ready.
        container.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "strait-proxy".into(),
                        "wait-ready".into(),
                        "--timeout".into(),
                        "120s".into(),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
    }
    container
}

/// The projected ServiceAccount token the proxy shows the identity service,
/// and the writable /run the init container's iptables needs.
pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(names::IDENTITY_TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "strait-init-run".into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
    ]
}
