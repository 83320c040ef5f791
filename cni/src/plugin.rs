//! The CNI operations (spec 1.1, chained: the previous plugin made the
//! pod's interface and addresses; this one only adds nat rules).
//!
//! - ADD: for a meshed pod, enter its namespace and write the redirects;
//!   the previous result is returned unchanged. A pod that is not meshed,
//!   uses the host's network or lives in an excluded namespace is left as
//!   the previous plugins made it.
//! - DEL: remove strait's chains if the namespace is still there; missing
//!   namespaces, pods and results are not errors (DEL is idempotent).
//! - CHECK: a meshed pod's namespace must still hold every rule.
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
    let object = api::get_pod(&conf.kubeconfig, &pod).map_err(|e| match &e {
        _ if e.is_not_found() => Error::NotExist(error_chain(&e)),
        api::ApiError::Kubeconfig { .. } => Error::InvalidNetworkConfig(error_chain(&e)),
        api::ApiError::Get { .. } => Error::TryAgainLater(error_chain(&e)),
    })?;
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

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
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

impl Cni for StraitCni {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let conf = conf(&args)?;
        let previous = args.config().prev_result.clone().unwrap_or_default();
        if let Some((pod, config)) = decide(&args, &conf)? {
            enter(&args)?;
            iptables::apply(&config).map_err(|e| rules_error(&pod, "writing the redirects", &e))?;
        }
        Ok(previous)
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        conf(&args)?;
        let Some(path) = args.netns() else {
            return Ok(());
        };
        match netns::enter(path) {
            Ok(()) => {}
            Err(NetnsError::Missing { .. }) => return Ok(()),
            Err(e) => return Err(Error::IOFailure(e.to_string())),
        }
        // The rules are strait's own chains: removing them needs neither the
        // pod (it may be gone) nor its settings.
        let pod = PodRef::from_cni_args(args.args()).map_or_else(|| "(unnamed)".to_string(), |p| p.to_string());
        let defaults = strait_init::Config::from_args(strait_init::Args::default(), |_| None)
            .map_err(|e| Error::InvalidNetworkConfig(e.to_string()))?;
        match iptables::cleanup(&defaults) {
            // No iptables here: nothing can have been written, so nothing
            // stands in the way of removing the pod.
            Ok(()) | Err(iptables::IptablesError::NoBackend { .. }) => Ok(()),
            Err(e) => Err(Error::Custom(
                RULES_FAILED,
                format!("pod {pod}: removing the redirects"),
                error_chain(&e),
            )),
        }
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
            .map_err(|e| Error::PluginNotAvailable(format!("reading {}: {e}", conf.kubeconfig.display())))
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        conf(&args).map(drop)
    }
}
