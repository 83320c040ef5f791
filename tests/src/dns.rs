//! Cluster DNS: answers `<service>.<namespace>.svc.cluster.local` with the
//! Service's ClusterIP (or, for a headless Service, its ready pods' IPs), and
//! `<a-b-c-d>.<namespace>.pod.cluster.local`. Pods' resolv.conf search path
//! makes `<service>.<namespace>` and `<service>` work as in a cluster. Names
//! outside the cluster get NXDOMAIN: the lab sends no traffic beyond itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::apiserver::resource::Resource;
use crate::apiserver::store::Store;
use crate::controllers::endpointslice::SERVICE_NAME_LABEL;
use crate::network::CLUSTER_DOMAIN;

const TTL: u32 = 5;

/// What a name resolves to: addresses, or nothing known (NXDOMAIN).
pub fn resolve(store: &Store, name: &str) -> Option<Vec<Ipv4Addr>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let local = name.strip_suffix(&format!(".{CLUSTER_DOMAIN}"))?;
    let labels: Vec<&str> = local.split('.').collect();
    match labels.as_slice() {
        [service, namespace, "svc"] => {
            let service = store.get(Resource::named("services"), namespace, service).ok()?;
            match service.pointer("/spec/clusterIP").and_then(Value::as_str) {
                Some("None") | None => Some(headless_addresses(store, namespace, &service)),
                Some(ip) => ip.parse().ok().map(|ip| vec![ip]),
            }
        }
        [dashed, _namespace, "pod"] => dashed.replace('-', ".").parse().ok().map(|ip| vec![ip]),
        _ => None,
    }
}

fn headless_addresses(store: &Store, namespace: &str, service: &Value) -> Vec<Ipv4Addr> {
    let name = service
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (slices, _) = store.list(Resource::named("endpointslices"), Some(namespace));
    let label = format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1"));
    let mut addresses: Vec<Ipv4Addr> = slices
        .iter()
        .filter(|s| s.pointer(&label).and_then(Value::as_str) == Some(name))
        .flat_map(|s| {
            s.get("endpoints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|e| e.pointer("/conditions/ready") == Some(&Value::Bool(true)))
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().and_then(|a| a.parse().ok()))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Builds the answer to one DNS query message.
pub fn answer(store: &Store, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    if request.metadata.op_code != OpCode::Query || request.queries.len() != 1 {
        response.metadata.response_code = ResponseCode::NotImp;
        return response.to_vec().ok();
    }
    let question = &request.queries[0];
    response.queries = request.queries.clone();
    match resolve(store, &question.name().to_ascii()) {
        None => response.metadata.response_code = ResponseCode::NXDomain,
        Some(addresses) => {
            if question.query_type() == RecordType::A {
                for address in addresses {
                    response.add_answer(Record::from_rdata(question.name().clone(), TTL, RData::A(A(address))));
                }
            }
        }
    }
    response.to_vec().ok()
}

/// Serves DNS over UDP and TCP on `addr` until the task is dropped.
pub async fn serve(store: Arc<Store>, addr: SocketAddr) -> std::io::Result<()> {
    let udp = UdpSocket::bind(addr).await?;
    let tcp = TcpListener::bind(addr).await?;
    let tcp_store = store.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            let store = tcp_store.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(length) = stream.read_u16().await else {
                        return;
                    };
                    let mut query = vec![0; length as usize];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let Some(reply) = answer(&store, &query) else {
                        return;
                    };
                    let Ok(length) = u16::try_from(reply.len()) else {
                        return;
                    };
                    if stream.write_u16(length).await.is_err() || stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((length, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            if let Some(reply) = answer(&store, &buf[..length]) {
                let _ = udp.send_to(&reply, peer).await;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cluster_names_resolve_and_others_do_not() {
        let store = Store::default();
        store
            .create(
                Resource::named("services"),
                json!({"metadata": {"name": "web", "namespace": "demo"}, "spec": {"clusterIP": "198.19.0.20"}}),
            )
            .unwrap();
        let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            resolve(&store, "web.demo.svc.cluster.local."),
            Some(vec![ip("198.19.0.20")])
        );
        assert_eq!(
            resolve(&store, "WEB.demo.svc.cluster.local"),
            Some(vec![ip("198.19.0.20")])
        );
        assert_eq!(
            resolve(&store, "198-18-1-7.demo.pod.cluster.local"),
            Some(vec![ip("198.18.1.7")])
        );
        assert_eq!(resolve(&store, "web.other.svc.cluster.local"), None);
        assert_eq!(resolve(&store, "example.com"), None);

        let mut query = Message::query();
        query.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("web.demo.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let reply = Message::from_vec(&answer(&store, &query.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    }
}
