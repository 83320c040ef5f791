//! strait's control plane in the lab, installed the way a user installs it:
//! the Helm chart rendered (`helm template`) and applied; the kubelet runs
//! its containers from the images `make images` built.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::apiserver::Api;
use crate::apiserver::resource::Resource;
use crate::manifest;
use crate::paths::bin_dir;

pub const NAMESPACE: &str = "strait-system";
/// Overrides where the chart is.
pub const CHART_ENV: &str = "STRAIT_LAB_CHART";
/// Overrides which helm to run.
pub const HELM_ENV: &str = "STRAIT_LAB_HELM";

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("the chart is not at {0} (set {CHART_ENV})")]
    NoChart(String),
    #[error("cannot run {helm}: {problem} (scripts/deps.sh installs helm into .tools/bin; or set {HELM_ENV})")]
    Helm { helm: String, problem: String },
    #[error("the rendered chart: {0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("installing {object}: {problem}")]
    Install { object: String, problem: String },
}

/// The source tree the binaries were built from: the nearest directory
/// above them holding the chart (`target/<profile>/` for the binaries,
/// `target/<profile>/deps/` for the tests).
fn source_tree() -> Option<PathBuf> {
    bin_dir()
        .ancestors()
        .find(|dir| dir.join("charts/strait/Chart.yaml").exists())
        .map(Path::to_path_buf)
}

fn chart() -> Result<PathBuf, ControlPlaneError> {
    let chart = std::env::var_os(CHART_ENV)
        .map(PathBuf::from)
        .or_else(|| source_tree().map(|tree| tree.join("charts/strait")))
        .unwrap_or_default();
    if chart.join("Chart.yaml").exists() {
        Ok(chart)
    } else {
        Err(ControlPlaneError::NoChart(chart.display().to_string()))
    }
}

fn helm() -> PathBuf {
    if let Some(helm) = std::env::var_os(HELM_ENV) {
        return PathBuf::from(helm);
    }
    source_tree()
        .map(|tree| tree.join(".tools/bin/helm"))
        .filter(|helm| helm.exists())
        .unwrap_or_else(|| PathBuf::from("helm"))
}

/// `helm template strait charts/strait -n strait-system`, with `--set`
/// for each of `extra_values`.
pub fn render(extra_values: &[String]) -> Result<String, ControlPlaneError> {
    render_with(&[], extra_values)
}

/// Like [`render`], with values files first (`-f`, for values such as PEM
/// certificates that `--set` cannot carry).
pub fn render_with(values_files: &[&Path], extra_values: &[String]) -> Result<String, ControlPlaneError> {
    let (chart, helm) = (chart()?, helm());
    let error = |problem: String| ControlPlaneError::Helm {
        helm: helm.display().to_string(),
        problem,
    };
    let output = Command::new(&helm)
        .args(["template", "strait"])
        .arg(&chart)
        .args(["--namespace", NAMESPACE])
        .args(values_files.iter().flat_map(|file| [Path::new("-f"), file]))
        .args(extra_values.iter().flat_map(|v| ["--set".to_string(), v.clone()]))
        .output()
        .map_err(|e| error(e.to_string()))?;
    if !output.status.success() {
        return Err(error(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Renders the chart and creates its objects in the lab.
pub async fn install(api: &Api, extra_values: &[String]) -> Result<(), ControlPlaneError> {
    let rendered = render(extra_values)?;
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    api.create_object(Resource::named("namespaces"), None, namespace)
        .await
        .map_err(|e| ControlPlaneError::Install {
            object: format!("namespace {NAMESPACE}"),
            problem: e.message,
        })?;
    for object in manifest::parse(&rendered, "charts/strait")? {
        let namespace = object.resource.namespaced.then(|| NAMESPACE.to_string());
        api.create_object(object.resource, namespace, object.value.clone())
            .await
            .map_err(|e| ControlPlaneError::Install {
                object: object.describe(),
                problem: e.message,
            })?;
    }
    Ok(())
}
