//! Reads a pod from the API server with the credentials of the plugin's
//! kubeconfig (the installer's ServiceAccount: `get` on pods, nothing else).

use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::pod::PodRef;

/// How long one request may take, and how many times a failed one is
/// tried again: the runtime itself retries a failed ADD, so the plugin
/// gives up within seconds rather than holding the sandbox.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot start the plugin's HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "reading pod {pod} from the API server at {server} ({tries} tries): {}",
        describe(error)
    )]
    Get {
        pod: PodRef,
        server: String,
        tries: usize,
        error: Box<kube::Error>,
    },
}

impl ApiError {
    /// The HTTP status the API server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Get { error, .. } => match &**error {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Gets one pod. Transport failures and server errors are tried again
/// with back-off; a missing pod or a refusal (404, 403) is not.
pub fn get_pod(kubeconfig: &Path, pod: &PodRef) -> Result<Pod, ApiError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ApiError::Runtime)?;
    runtime.block_on(async {
        let config = client_config(kubeconfig).await?;
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| ApiError::Kubeconfig {
            path: kubeconfig.display().to_string(),
            source: Box::new(e),
        })?;
        let pods: Api<Pod> = Api::namespaced(client, &pod.namespace);
        let tries = std::sync::atomic::AtomicUsize::new(0);
        (|| {
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pods.get(&pod.name)
        })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(RETRIES),
        )
        .when(|e| !matches!(e, kube::Error::Api(status) if status.code < 500))
        .await
        .map_err(|error| ApiError::Get {
            pod: pod.clone(),
            server,
            tries: tries.load(std::sync::atomic::Ordering::Relaxed),
            error: Box::new(error),
        })
    })
}

/// A kube error as a person reads it: the API server's own message for its
/// answers (not the whole Status object).
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => strait_contract::Chain(other).to_string(),
    }
}

async fn client_config(path: &Path) -> Result<Config, ApiError> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| ApiError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| error(Box::new(e)))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| error(Box::new(e)))?;
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    Ok(config)
}
