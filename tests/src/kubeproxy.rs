//! Service routing in the node namespace, as kube-proxy's iptables mode does
//! it: each ClusterIP:port picks one ready endpoint per connection at random
//! (`statistic` match), DNAT sends it there, and a pod reaching itself through
//! its own Service is masqueraded so the reply comes back the same way. A
//! Service with no usable endpoint is rejected at once.

use std::fmt::Write;
use std::sync::Arc;

use serde_json::Value;

use crate::apiserver::resource::Resource;
use crate::apiserver::store::{Store, name_of, namespace_of};
use crate::controllers::endpointslice::SERVICE_NAME_LABEL;
use crate::controllers::short_hash;
use crate::network;

const MASQUERADE_MARK: &str = "0x4000/0x4000";

pub async fn run(store: Arc<Store>) {
    let mut applied = String::new();
    let reader = store.clone();
    crate::controllers::run_controller(store, &["services", "endpointslices"], || {
        let rules = render(&reader);
        if rules != applied {
            let mut command = std::process::Command::new("iptables-restore");
            command.args(["-w", "5"]);
            match network::run_with_input(command, &rules) {
                Ok(()) => applied = rules,
                Err(error) => tracing::warn!(%error, "cannot apply the service rules"),
            }
        }
        std::future::ready(())
    })
    .await;
}

/// The usable endpoints of a Service port: ready ones, or, when none is
/// ready, serving ones that are terminating (so a draining Service still
/// answers).
fn endpoints(store: &Store, service: &Value, port_name: &str) -> Vec<(String, i64)> {
    let (slices, _) = store.list(Resource::named("endpointslices"), Some(namespace_of(service)));
    let label = format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1"));
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    for slice in slices
        .iter()
        .filter(|s| s.pointer(&label).and_then(Value::as_str) == Some(name_of(service)))
    {
        let ports = slice
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(port) = ports
            .iter()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_i64())
        else {
            continue;
        };
        for endpoint in slice.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
            let condition = |name: &str| endpoint.pointer(&format!("/conditions/{name}")) == Some(&Value::Bool(true));
            for address in endpoint
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if condition("ready") {
                    ready.push((address.to_string(), port));
                } else if condition("serving") && condition("terminating") {
                    serving.push((address.to_string(), port));
                }
            }
        }
    }
    if ready.is_empty() { serving } else { ready }
}

/// The whole nat and filter tables of the node namespace.
pub fn render(store: &Store) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut rejects = String::new();
    let (services, _) = store.list(Resource::named("services"), None);
    for service in &services {
        let Some(ip) = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| *ip != "None")
        else {
            continue;
        };
        for port in service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(number), name) = (port["port"].as_i64(), port["name"].as_str().unwrap_or_default()) else {
                continue;
            };
            let targets = endpoints(store, service, name);
            if targets.is_empty() {
                let _ = writeln!(
                    rejects,
                    "-A LAB-REJECT -d {ip}/32 -p tcp -m tcp --dport {number} -j REJECT --reject-with tcp-reset"
                );
                continue;
            }
            let svc_chain = format!(
                "LAB-SVC-{}",
                short_hash(&serde_json::json!([ip, number]), 12).to_uppercase()
            );
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                rules,
                "-A LAB-SERVICES -d {ip}/32 -p tcp -m tcp --dport {number} -j {svc_chain}"
            );
            let count = targets.len();
            for (i, (address, target_port)) in targets.iter().enumerate() {
                let sep_chain = format!(
                    "LAB-SEP-{}",
                    short_hash(&serde_json::json!([ip, number, address, target_port]), 12).to_uppercase()
                );
                let _ = writeln!(chains, ":{sep_chain} - [0:0]");
                let remaining = count - i;
                if remaining > 1 {
                    let probability = 1.0 / remaining as f64;
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m statistic --mode random --probability {probability:.11} -j {sep_chain}"
                    );
                } else {
                    let _ = writeln!(rules, "-A {svc_chain} -j {sep_chain}");
                }
                let _ = writeln!(
                    rules,
                    "-A {sep_chain} -s {address}/32 -j MARK --set-xmark {MASQUERADE_MARK}"
                );
                let _ = writeln!(
                    rules,
                    "-A {sep_chain} -p tcp -m tcp -j DNAT --to-destination {address}:{target_port}"
                );
            }
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :LAB-SERVICES - [0:0]\n:LAB-POSTROUTING - [0:0]\n{chains}\
         -A PREROUTING -j LAB-SERVICES\n-A OUTPUT -j LAB-SERVICES\n-A POSTROUTING -j LAB-POSTROUTING\n\
         -A LAB-POSTROUTING -m mark --mark {MASQUERADE_MARK} -j MASQUERADE\n{rules}COMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:LAB-REJECT - [0:0]\n\
         -A INPUT -j LAB-REJECT\n-A FORWARD -j LAB-REJECT\n-A OUTPUT -j LAB-REJECT\n{rejects}COMMIT\n"
    )
}
