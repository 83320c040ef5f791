//! The lab network: the node namespace with its bridge and address (the
//! pods' gateway, API server and DNS). Pods are wired to the bridge by the
//! CNI plugins (`kubelet::cni`); bridged traffic passes the node's netfilter
//! (`bridge-nf-call-iptables`), so its conntrack sees both directions of
//! service traffic, as on a node with a bridge CNI.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

pub const BRIDGE: &str = "strait0";
/// The bridge's own MAC address (locally administered). Set once, it stays:
/// a bridge without one takes the lowest of its ports' addresses, so adding
/// a pod could change the node's MAC under every other pod, whose packets
/// to the node (DNS, the API server) then went to the old one until their
/// neighbour entries were probed again, seconds later.
const BRIDGE_MAC: &str = "02:73:74:72:00:01";
/// The node's address on the bridge: pods' gateway, API server and DNS.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Pod addresses come from 198.18.0.0/16, above the node's .0.x (the
/// host-local range of `kubelet::cni::node_conflist`).
/// ClusterIPs come from 198.19.0.0/16.
pub const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// The `kubernetes` Service's ClusterIP.
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const API_PORT: u16 = 6443;
pub const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
#[error("{command}: {message}")]
pub struct NetError {
    pub command: String,
    pub message: String,
}

/// Runs `ip` with a batch of commands (one per line), failing on the first.
pub fn ip_batch(netns: Option<&str>, batch: &str) -> Result<(), NetError> {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    command.args(["-batch", "-"]);
    run_with_input(command, batch)
}

pub fn run_with_input(mut command: Command, input: &str) -> Result<(), NetError> {
    let described = format!("{:?}", command).replace('"', "");
    let error = |message: String| NetError {
        command: described.clone(),
        message,
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| error(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| error(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| error(e.to_string()))?;
    if !output.status.success() {
        return Err(error(format!(
            "{} (input: {})",
            String::from_utf8_lossy(&output.stderr).trim(),
            input.trim()
        )));
    }
    Ok(())
}

pub fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let output = Command::new(program).args(args).output().map_err(|e| NetError {
        command: format!("{program} {}", args.join(" ")),
        message: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(NetError {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(format!("/proc/sys/{path}"), value).map_err(|e| NetError {
        command: format!("sysctl {path}={value}"),
        message: e.to_string(),
    })
}

/// Sets up the node namespace the calling process is in: loopback, the
/// bridge with the node address (the pods' gateway), forwarding, no ICMP
/// redirects (the node routes service traffic back out of the bridge it
/// came in on), and bridged traffic through netfilter, so a Service's
/// answer that a pod sends straight to another on the bridge is un-NATed
/// by the node's conntrack, as kube-proxy needs with a bridge CNI.
pub fn setup_node() -> Result<(), NetError> {
    ip_batch(
        None,
        &format!(
            "link set lo up\n\
             link add {BRIDGE} type bridge\n\
             link set {BRIDGE} address {BRIDGE_MAC}\n\
             addr add {NODE_IP}/16 dev {BRIDGE}\n\
             link set {BRIDGE} up\n\
             route add {SERVICE_BASE}/16 dev {BRIDGE}\n"
        ),
    )?;
    write_sysctl("net/ipv4/ip_forward", "1")?;
    write_sysctl("net/ipv4/conf/all/send_redirects", "0")?;
    write_sysctl(&format!("net/ipv4/conf/{BRIDGE}/send_redirects"), "0")?;
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
    // Conntrack must not let connections to a vanished pod linger forever.
    let _ = write_sysctl("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "10");
    Ok(())
}
