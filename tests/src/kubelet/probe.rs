//! Container probes: httpGet, tcpSocket and exec, with the kubelet's
//! timing and thresholds. HTTP and TCP probes come from the node, as the
//! kubelet's do, so they cross the pod's inbound redirect like any client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

use super::container::Process;
use super::nsenter::PodNamespaces;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

/// The timing of a probe, with Kubernetes' defaults.
#[derive(Clone, Debug)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |v| v.max(0) as u64));
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
            failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
        }
    }
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs a probe once; `true` is success.
pub async fn check(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    namespaces: &PodNamespaces,
    process: &Process,
) -> bool {
    let timeout = Timing::of(probe).timeout;
    if let Some(http) = &probe.http_get {
        let Some(port) = port(container, &http.port) else {
            return false;
        };
        let host = http.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(pod_ip);
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        return tokio::time::timeout(timeout, http_get(SocketAddr::new(host, port), &path))
            .await
            .unwrap_or(false);
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port(container, &tcp.port) else {
            return false;
        };
        let addr = SocketAddr::new(pod_ip, port);
        return matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)));
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return run_hook(&command, namespaces, process, timeout).await;
    }
    if let Some(grpc) = &probe.grpc {
        let addr = SocketAddr::new(pod_ip, u16::try_from(grpc.port).unwrap_or(0));
        return matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)));
    }
    false
}

async fn http_get(addr: SocketAddr, path: &str) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "kube-probe/1.35")
        .body(Empty::<bytes::Bytes>::new());
    let Ok(request) = request else { return false };
    match sender.send_request(request).await {
        Ok(response) => (200..400).contains(&response.status().as_u16()),
        Err(_) => false,
    }
}

/// Runs a command in a container (an exec probe or a lifecycle hook), with
/// the container's environment and credentials; `true` when it exits 0
/// within `timeout`.
pub async fn run_hook(command: &[String], namespaces: &PodNamespaces, process: &Process, timeout: Duration) -> bool {
    let Some(program) = command.first() else {
        return false;
    };
    let mut std_command = std::process::Command::new(program);
    std_command
        .args(&command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    process.enter(namespaces, &mut std_command);
    let mut command = tokio::process::Command::from(std_command);
    command.kill_on_drop(true);
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(status)) if status.success())
}
