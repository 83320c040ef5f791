//! The lab's background process: it lives in the node namespace and runs the
//! API server, the controllers, the kubelet, service routing and DNS until
//! `strait-lab down` asks it to stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::apiserver::admission::{Admission, ClusterIps};
use crate::apiserver::auth::{Principal, Tokens};
use crate::apiserver::resource::Resource;
use crate::apiserver::serve::NetworkServer;
use crate::apiserver::store::Store;
use crate::apiserver::webhooks::Webhooks;
use crate::apiserver::{Api, Body};
use crate::controllers::{self, endpointslice};
use crate::kubelet::Kubelet;
use crate::network::{self, API_PORT, API_SERVICE_IP, NODE_IP};
use crate::paths::LabPaths;
use crate::{dns, kubeproxy, pki};

struct Daemon {
    paths: LabPaths,
    api: Arc<Api>,
    kubelet: Arc<Kubelet>,
    network: NetworkServer,
    shutdown: CancellationToken,
    /// The controllers, stopped before the pods so nothing is recreated.
    controllers: Vec<tokio::task::AbortHandle>,
    /// Started on demand by `strait-lab prometheus`.
    prometheus: crate::prometheus::Prometheus,
}

/// Set to `off` for a lab without strait's control plane.
pub const MESH_ENV: &str = "STRAIT_LAB_MESH";
/// Chart values for the control plane, `key=value` separated by spaces.
pub const CHART_VALUES_ENV: &str = "STRAIT_LAB_CHART_VALUES";
/// `on` for CNI mode (`strait-lab up --cni`), set by the CLI.
pub const CNI_ENV: &str = "STRAIT_LAB_CNI";

/// Runs the lab until shut down. The caller has put this process in the
/// node namespace.
pub async fn run(paths: LabPaths) -> anyhow::Result<()> {
    network::setup_node()?;
    let pki = pki::generate()?;
    std::fs::write(paths.ca_cert(), &pki.ca_pem)?;

    let store = Arc::new(Store::default());
    let tokens = Arc::new(Tokens::default());
    let admission = Admission {
        store: store.clone(),
        cluster_ips: ClusterIps::new(network::SERVICE_BASE),
        pod_mutator: Some(Arc::new(Webhooks { store: store.clone() })),
    };
    let api = Arc::new(Api {
        store: store.clone(),
        tokens: tokens.clone(),
        admission,
        stats: Arc::default(),
    });
    bootstrap(&api).await?;

    let network_server = NetworkServer::new(api.clone(), pki.server, SocketAddr::from((NODE_IP, API_PORT)));
    network_server.start().await?;
    dns::serve(store.clone(), SocketAddr::from((NODE_IP, 53))).await?;

    let cni = crate::kubelet::cni::Cni::setup(&paths)?;
    let kubelet = Kubelet::new(store.clone(), tokens, paths.clone(), cni);
    tokio::spawn(kubelet.clone().run());
    tokio::spawn(endpointslice::run(store.clone()));
    tokio::spawn(kubeproxy::run(store.clone()));
    let controllers = vec![
        tokio::spawn(controllers::deployment::run(api.clone())).abort_handle(),
        tokio::spawn(controllers::job::run(api.clone())).abort_handle(),
        tokio::spawn(controllers::daemonset::run(api.clone())).abort_handle(),
        tokio::spawn(controllers::tokens::run(api.clone(), pki.ca_pem.clone())).abort_handle(),
        tokio::spawn(controllers::gc::run(api.clone())).abort_handle(),
    ];

    let daemon = Arc::new(Daemon {
        paths: paths.clone(),
        api,
        kubelet,
        network: network_server,
        shutdown: CancellationToken::new(),
        controllers,
        prometheus: crate::prometheus::Prometheus::default(),
    });
    if std::env::var(MESH_ENV).as_deref() != Ok("off") {
        let mut values: Vec<String> = std::env::var(CHART_VALUES_ENV)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if std::env::var(CNI_ENV).as_deref() == Ok("on") {
            // The node's CNI dirs are the lab's (hostPath volumes bind them).
            std::fs::write(paths.cni_mode_marker(), "on\n")?;
            values.extend([
                "cni.enabled=true".to_string(),
                format!("cni.binDir={}", paths.cni_bin_dir().display()),
                format!("cni.confDir={}", paths.cni_conf_dir().display()),
            ]);
        }
        crate::controlplane::install(&daemon.api, &values).await?;
    }
    daemon.clone().serve_local().await?;
    std::fs::write(paths.daemon_pid(), std::process::id().to_string())?;
    tracing::info!(lab = %paths.name, "lab running");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = daemon.shutdown.cancelled() => {},
        _ = terminate.recv() => {},
    }
    daemon.stop_all_pods().await;
    Ok(())
}

/// What every cluster has from the start: the default namespaces and the
/// `kubernetes` Service in front of the API server.
async fn bootstrap(api: &Api) -> anyhow::Result<()> {
    for name in ["default", "kube-system"] {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        api.create_object(Resource::named("namespaces"), None, namespace)
            .await?;
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver"}},
        "spec": {"clusterIP": API_SERVICE_IP.to_string(), "ports": [{"name": "https", "port": 443, "targetPort": API_PORT}]},
    });
    api.create_object(Resource::named("services"), Some("default".into()), service)
        .await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {endpointslice::SERVICE_NAME_LABEL: "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": API_PORT, "protocol": "TCP"}],
    });
    endpointslice::apply(&api.store, slice);
    Ok(())
}

fn reply(status: StatusCode, body: Value) -> Response<crate::apiserver::Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

impl Daemon {
    /// The local socket: the Kubernetes API as admin, plus `/lab/v1` calls.
    async fn serve_local(self: Arc<Self>) -> std::io::Result<()> {
        let path = self.paths.socket();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let daemon = self.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let daemon = daemon.clone();
                        async move { Ok::<_, std::convert::Infallible>(daemon.handle_local(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(())
    }

    async fn handle_local(self: &Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_string();
        let Some(lab_path) = path.strip_prefix("/lab/v1/") else {
            return self.api.handle(request, Principal::Admin, self.shutdown.clone()).await;
        };
        let segments: Vec<&str> = lab_path.split('/').collect();
        match (request.method().clone(), segments.as_slice()) {
            (Method::POST, ["shutdown"]) => {
                self.shutdown.cancel();
                reply(StatusCode::OK, json!({"stopping": true}))
            }
            (Method::POST, ["apiserver", "stop"]) => {
                self.network.stop();
                reply(StatusCode::OK, json!({"apiserver": "stopped"}))
            }
            (Method::GET, ["apiserver", "stats"]) => reply(StatusCode::OK, self.api.stats.to_json()),
            (Method::POST, ["apiserver", "start"]) => match self.network.start().await {
                Ok(()) => reply(StatusCode::OK, json!({"apiserver": "running"})),
                Err(error) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"message": error.to_string()})),
            },
            (Method::POST, ["namespaces", namespace, "pods", name, "kill"]) => self.kill(namespace, name),
            (Method::GET, ["namespaces", namespace, "pods", name, "cpu"]) => self.cpu(namespace, name),
            (Method::POST, ["prometheus"]) => {
                let interval = request
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("scrapeInterval="))
                    .and_then(|text| strait_contract::parse_duration(text).ok())
                    .unwrap_or(Duration::from_secs(5));
                match self
                    .prometheus
                    .start(&self.paths, self.api.store.clone(), interval)
                    .await
                {
                    Ok(()) => reply(
                        StatusCode::OK,
                        json!({"listen": crate::prometheus::listen().to_string()}),
                    ),
                    Err(error) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"message": format!("{error:#}")}),
                    ),
                }
            }
            (Method::GET, ["webhooks"]) => {
                let webhooks = Webhooks {
                    store: self.api.store.clone(),
                };
                let answers: Vec<Value> = webhooks
                    .reachability()
                    .await
                    .into_iter()
                    .map(|(name, reachable)| json!({"name": name, "reachable": reachable.is_ok(), "problem": reachable.err()}))
                    .collect();
                reply(StatusCode::OK, json!({"webhooks": answers}))
            }
            _ => reply(StatusCode::NOT_FOUND, json!({"message": format!("no lab call {path}")})),
        }
    }

    fn kill(&self, namespace: &str, name: &str) -> Response<Body> {
        let pod = match self.api.store.get(Resource::named("pods"), namespace, name) {
            Ok(pod) => pod,
            Err(error) => return reply(StatusCode::NOT_FOUND, error.status()),
        };
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        self.kubelet.kill(uid);
        reply(StatusCode::OK, json!({"killed": format!("{namespace}/{name}")}))
    }

    fn cpu(&self, namespace: &str, name: &str) -> Response<Body> {
        let pod = match self.api.store.get(Resource::named("pods"), namespace, name) {
            Ok(pod) => pod,
            Err(error) => return reply(StatusCode::NOT_FOUND, error.status()),
        };
        let containers = ["/spec/initContainers", "/spec/containers"]
            .iter()
            .flat_map(|p| pod.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default());
        let pids: HashMap<String, u32> = containers
            .filter_map(|c| {
                let container = c["name"].as_str()?.to_string();
                let pid = std::fs::read_to_string(self.paths.container_pid(namespace, name, &container)).ok()?;
                Some((container, pid.trim().parse().ok()?))
            })
            .collect();
        reply(
            StatusCode::OK,
            json!({"cpuSeconds": crate::kubelet::pod::cpu_seconds(&pids)}),
        )
    }

    /// Deletes every pod with a short grace period and waits for the kubelet
    /// to have stopped them all.
    async fn stop_all_pods(&self) {
        for controller in &self.controllers {
            controller.abort();
        }
        let pods = Resource::named("pods");
        for pod in self.api.store.list(pods, None).0 {
            let namespace = pod
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = pod
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let _ = self.api.delete_object(pods, namespace, name, Some(2));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.kubelet.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
