//! The CNI operations (spec 1.1, chained: the previous plugin made the
//! pod's interface and addresses; this one only adds nat rules).
//!
//! - ADD: for a meshed pod, enter its namespace and write the redirects;
//!   the previous result is returned unchanged. A pod that is not meshed,
//!   uses the host's network or lives in an excluded namespace is left as
//!   the previous plugins made it.
//! - DEL: remove strait's chains if the namespace is still there. DEL never
//!   fails: the namespace is about to go, and a failed DEL would keep the
//!   runtime from removing the pod and its address (a problem is said on
//!   stderr).
//! - CHECK: a meshed pod's namespace must still hold every rule, in order.
//! - STATUS: ready when the kubeconfig can be read. GC: nothing is kept
//!   outside pods' namespaces, so there is nothing to collect.
//!
//! Errors are CNI error results naming the pod and the cause: an API server
//! that does not answer is "try again later" (11), so the runtime retries
//! rather than start a meshed pod without its redirects.

use rscni_plugin::cni::Cni;
use rscni_plugin::error::Error;
use rscni_plugin::types::{Args, CNIResult};
use strait_init::iptables;

use crate::api;
use crate::conf::PluginConf;
use crate::netns::{self, NetnsError};
use crate::pod::{self, Decision, PodRef};

/// strait's plugin-specific error code: the pod's redirect settings could
/// not be read.
pub const BAD_POD_SETTINGS: u32 = 100;
/// strait's plugin-specific error code: iptables failed in the pod.
pub const RULES_FAILED: u32 = 101;
/// strait's plugin-specific error code: the API server refused the
/// plugin's credentials (401) or its RBAC (403).
pub const NOT_ALLOWED: u32 = 102;

#[derive(Debug, Default)]
pub struct StraitCni;

fn conf(args: &Args) -> Result<PluginConf, Error> {
    PluginConf::from_custom(&args.config().custom).map_err(Error::InvalidNetworkConfig)
}

/// What to do for the pod of this call: `None` when there is nothing to do.
fn decide(args: &Args, conf: &PluginConf) -> Result<Option<(PodRef, strait_init::Config)>, Error> {
    let Some(pod) = PodRef::from_cni_args(args.args()) else {
        return Ok(None);
    };
    if conf.exclude_namespaces.contains(&pod.namespace) {
        return Ok(None);
    }
    let object = api::get_pod(&conf.kubeconfig, &pod).map_err(|e| match e.status() {
        Some(404) => Error::NotExist(error_chain(&e)),
        Some(401 | 403) => Error::Custom(
            NOT_ALLOWED,
            format!("pod {pod}: the API server refused strait-cni's credentials"),
            format!(
                "{}; the kubeconfig's ServiceAccount must exist and be allowed to get pods (the chart's strait-cni ClusterRole)",
                error_chain(&e)
            ),
        ),
        _ => match e {
            api::ApiError::Kubeconfig { .. } => Error::InvalidNetworkConfig(error_chain(&e)),
            _ => Error::TryAgainLater(error_chain(&e)),
        },
    })?;
    let found = object.metadata.uid.as_deref();
    if let (Some(wanted), Some(found)) = (pod.uid.as_deref(), found)
        && wanted != found
    {
        return Err(Error::NotExist(format!(
            "pod {pod}: the sandbox is for uid {wanted}, the API server has uid {found} under that name"
        )));
    }
    match pod::decide(&object) {
        Ok(Decision::Redirect(config)) => Ok(Some((pod, *config))),
        Ok(Decision::Skip(_)) => Ok(None),
        Err(problem) => Err(Error::Custom(
            BAD_POD_SETTINGS,
            format!("pod {pod}: its redirect settings cannot be read"),
            problem,
        )),
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    strait_contract::Chain(error).to_string()
}

fn enter(args: &Args) -> Result<(), Error> {
    let path = args
        .netns()
        .ok_or_else(|| Error::InvalidEnvValue("CNI_NETNS is not set".into()))?;
    netns::enter(path).map_err(|e| match e {
        NetnsError::Missing { .. } => Error::InvalidNetNS(e.to_string()),
        NetnsError::Enter { .. } => Error::IOFailure(e.to_string()),
    })
}

fn rules_error(pod: &PodRef, what: &str, error: &iptables::IptablesError) -> Error {
    Error::Custom(RULES_FAILED, format!("pod {pod}: {what}"), error_chain(error))
}

/// Removes strait's chains from the namespace at `args`' CNI_NETNS, if it
/// is still there. Needs neither the pod (it may be gone) nor its settings.
fn remove_rules(args: &Args) -> Result<(), String> {
    let Some(path) = args.netns() else {
        return Ok(());
    };
    match netns::enter(path) {
        Ok(()) => {}
        Err(NetnsError::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    }
    let defaults = strait_init::Config::from_args(strait_init::Args::default(), |_| None).map_err(|e| e.to_string())?;
    match iptables::cleanup(&defaults) {
        // No iptables here: nothing can have been written.
        Ok(()) | Err(iptables::IptablesError::NoBackend { .. }) => Ok(()),
        Err(e) => Err(error_chain(&e)),
    }
}

impl Cni for StraitCni {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let conf = conf(&args)?;
        let previous = args.config().prev_result.clone().ok_or_else(|| {
            Error::InvalidNetworkConfig(
                "no prevResult: strait-cni must be chained after the plugin that sets up the pod's interface".into(),
            )
        })?;
        if let Some((pod, config)) = decide(&args, &conf)? {
            enter(&args)?;
            iptables::apply(&config).map_err(|e| rules_error(&pod, "writing the redirects", &e))?;
        }
        Ok(previous)
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        if let Err(problem) = remove_rules(&args) {
            let pod = PodRef::from_cni_args(args.args()).map_or_else(|| "(unnamed)".to_string(), |p| p.to_string());
            eprintln!(
                "strait-cni: DEL for pod {pod}: removing the redirects: {problem} (the namespace goes with the pod)"
            );
        }
        Ok(())
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        let conf = conf(&args)?;
        if let Some((pod, config)) = decide(&args, &conf)? {
            enter(&args)?;
            iptables::verify(&config).map_err(|e| rules_error(&pod, "the redirects are not as written", &e))?;
        }
        Ok(())
    }

    fn status(&self, args: Args) -> Result<(), Error> {
        let conf = conf(&args)?;
        kube::config::Kubeconfig::read_from(&conf.kubeconfig)
            .map(drop)
            .map_err(|e| Error::PluginNotAvailable(format!("reading {}: {e}", conf.kubeconfig.display())))?;
        iptables::available().map_err(|e| Error::PluginNotAvailable(error_chain(&e)))
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        conf(&args).map(drop)
    }
}
