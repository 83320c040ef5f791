//! The lab network: a bridge in the node namespace, and each pod's veth with
//! a /32 address routed through the node. Routing every packet through the
//! node (rather than switching pod to pod on the bridge) lets the node's
//! conntrack see both directions of service traffic, as on a real node.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

pub const BRIDGE: &str = "strait0";
/// The node's address on the bridge: pods' gateway, API server and DNS.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Pod addresses come from 198.18.0.0/16, above the node's .0.x.
const POD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
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
/// bridge with the node address, forwarding, and no ICMP redirects (the node
/// routes pod-to-pod traffic back out of the bridge it came in on).
pub fn setup_node() -> Result<(), NetError> {
    ip_batch(
        None,
        &format!(
            "link set lo up\n\
             link add {BRIDGE} type bridge\n\
             addr add {NODE_IP}/16 dev {BRIDGE}\n\
             link set {BRIDGE} up\n\
             route add {SERVICE_BASE}/16 dev {BRIDGE}\n"
        ),
    )?;
    write_sysctl("net/ipv4/ip_forward", "1")?;
    write_sysctl("net/ipv4/conf/all/send_redirects", "0")?;
    write_sysctl(&format!("net/ipv4/conf/{BRIDGE}/send_redirects"), "0")?;
    // Conntrack must not let connections to a vanished pod linger forever.
    let _ = write_sysctl("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "10");
    Ok(())
}

/// Wires a pod's namespace to the bridge: a veth pair whose pod end is
/// `eth0` with a /32 address, and routes through the node.
pub fn attach_pod(netns: &str, veth: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    ip_batch(
        None,
        &format!(
            "link add {veth} type veth peer name eth0 netns {netns}\n\
             link set {veth} master {BRIDGE} up\n"
        ),
    )?;
    ip_batch(
        Some(netns),
        &format!(
            "link set lo up\n\
             addr add {ip}/32 dev eth0\n\
             link set eth0 up\n\
             route add {NODE_IP} dev eth0 scope link\n\
             route add default via {NODE_IP} dev eth0\n"
        ),
    )
}

/// Hands out pod addresses in turn, as host-local IPAM does: a released
/// address is reused only after all the others, so it is not handed to a new
/// pod while the node's neighbour cache still points it at the old one.
#[derive(Default)]
pub struct PodIps {
    state: Mutex<Allocations>,
}

#[derive(Default)]
struct Allocations {
    used: BTreeSet<u32>,
    /// The offset handed out last.
    last: u32,
}

const MAX_OFFSET: u32 = 65_000;

impl PodIps {
    pub fn allocate(&self) -> Option<Ipv4Addr> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let usable = |o: &u32| !o.is_multiple_of(256) && o % 256 != 255 && !state.used.contains(o);
        let offset = (state.last + 1..MAX_OFFSET).chain(1..=state.last).find(usable)?;
        state.used.insert(offset);
        state.last = offset;
        Some(Ipv4Addr::from(u32::from(POD_BASE) + offset))
    }

    pub fn release(&self, ip: Ipv4Addr) {
        let offset = u32::from(ip).wrapping_sub(u32::from(POD_BASE));
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .used
            .remove(&offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_address_is_reused_last() {
        let ips = PodIps::default();
        let first = ips.allocate().unwrap();
        let second = ips.allocate().unwrap();
        ips.release(first);
        let third = ips.allocate().unwrap();
        assert!(third != first && third != second, "{third}");
        assert_eq!(u32::from(third), u32::from(second) + 1);
    }
}
