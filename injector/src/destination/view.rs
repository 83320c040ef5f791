//! A destination as proxies see it, and the messages that take a
//! subscriber from the state it last got to the state now.
//!
//! A subscriber holds one `Arc<View>`: the last state it was sent. When it
//! wakes, it sends `updates(sent, now)`, however many changes happened in
//! between, so nothing is ever queued for it beyond the state itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use strait_api::destination::v1::{Add, Endpoint, Remove, ServicePort, Snapshot, Update, update};

/// What is known of one original destination.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The Service port the address is, if it is one.
    pub service: Option<ServicePort>,
    /// Its endpoints (for a pod IP: that pod), by address.
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
}

impl View {
    /// The whole view as one message.
    pub fn snapshot(&self) -> Update {
        Update {
            kind: Some(update::Kind::Snapshot(Snapshot {
                service: self.service.clone(),
                endpoints: self.endpoints.values().cloned().collect(),
            })),
        }
    }
}

/// The messages that take a subscriber holding `sent` to `now`: none when
/// they are equal; one snapshot when the Service port changed, or when the
/// changes would not be smaller than the snapshot; otherwise an `add` of
/// new and changed endpoints and a `remove` of the addresses gone (each only
/// when not empty).
pub fn updates(sent: &View, now: &View) -> Vec<Update> {
    if sent == now {
        return Vec::new();
    }
    if sent.service != now.service {
        return vec![now.snapshot()];
    }
    let added: Vec<Endpoint> = now
        .endpoints
        .iter()
        .filter(|(addr, endpoint)| sent.endpoints.get(addr) != Some(endpoint))
        .map(|(_, endpoint)| endpoint.clone())
        .collect();
    let removed: Vec<String> = sent
        .endpoints
        .keys()
        .filter(|addr| !now.endpoints.contains_key(addr))
        .map(ToString::to_string)
        .collect();
    if added.len() + removed.len() >= now.endpoints.len().max(1) {
        return vec![now.snapshot()];
    }
    let mut messages = Vec::new();
    if !added.is_empty() {
        messages.push(Update {
            kind: Some(update::Kind::Add(Add { endpoints: added })),
        });
    }
    if !removed.is_empty() {
        messages.push(Update {
            kind: Some(update::Kind::Remove(Remove { addresses: removed })),
        });
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str, ready: bool) -> (SocketAddr, Endpoint) {
        let parsed: SocketAddr = addr.parse().expect("an address");
        (
            parsed,
            Endpoint {
                address: addr.to_string(),
                ready,
                serving: ready,
                ..Endpoint::default()
            },
        )
    }

    fn view(port: u32, endpoints: &[(&str, bool)]) -> View {
        View {
            service: Some(ServicePort {
                namespace: "mesh".into(),
                name: "grpc".into(),
                port,
                ..ServicePort::default()
            }),
            endpoints: endpoints.iter().map(|(a, r)| endpoint(a, *r)).collect(),
        }
    }

    fn kinds(messages: &[Update]) -> Vec<&'static str> {
        messages
            .iter()
            .map(|m| match m.kind {
                Some(update::Kind::Snapshot(_)) => "snapshot",
                Some(update::Kind::Add(_)) => "add",
                Some(update::Kind::Remove(_)) => "remove",
                Some(update::Kind::Routes(_)) => "routes",
                None => "none",
            })
            .collect()
    }

    #[test]
    fn only_what_changed_is_sent() {
        let ten: Vec<(String, bool)> = (1..=10).map(|i| (format!("198.18.1.{i}:50051"), true)).collect();
        let ten: Vec<(&str, bool)> = ten.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let before = view(50051, &ten);
        assert!(updates(&before, &before).is_empty(), "nothing changed, nothing sent");

        let mut after = before.clone();
        after.endpoints.insert(
            endpoint("198.18.1.11:50051", true).0,
            endpoint("198.18.1.11:50051", true).1,
        );
        let (addr, readiness) = endpoint("198.18.1.3:50051", false);
        after.endpoints.insert(addr, readiness);
        after.endpoints.remove(&"198.18.1.7:50051".parse().expect("an address"));
        let messages = updates(&before, &after);
        assert_eq!(kinds(&messages), ["add", "remove"]);
        let Some(update::Kind::Add(add)) = &messages[0].kind else {
            unreachable!()
        };
        let added: Vec<(&str, bool)> = add.endpoints.iter().map(|e| (e.address.as_str(), e.ready)).collect();
        assert_eq!(
            added,
            [("198.18.1.3:50051", false), ("198.18.1.11:50051", true)],
            "in address order"
        );
        let Some(update::Kind::Remove(remove)) = &messages[1].kind else {
            unreachable!()
        };
        assert_eq!(remove.addresses, ["198.18.1.7:50051"]);
    }

    #[test]
    fn a_new_service_port_or_a_change_as_large_as_the_set_is_a_snapshot() {
        let before = view(80, &[("198.18.1.1:8080", true), ("198.18.1.2:8080", true)]);
        let renumbered = view(81, &[("198.18.1.1:8080", true), ("198.18.1.2:8080", true)]);
        assert_eq!(kinds(&updates(&before, &renumbered)), ["snapshot"]);
        let replaced = view(80, &[("198.18.1.3:8080", true), ("198.18.1.4:8080", true)]);
        assert_eq!(kinds(&updates(&before, &replaced)), ["snapshot"]);
        let emptied = view(80, &[]);
        assert_eq!(kinds(&updates(&before, &emptied)), ["snapshot"]);
        assert_eq!(kinds(&updates(&View::default(), &before)), ["snapshot"]);
    }

    #[test]
    fn applying_the_updates_to_the_old_state_gives_the_new_one() {
        let before = view(
            80,
            &[
                ("198.18.1.1:80", true),
                ("198.18.1.2:80", true),
                ("198.18.1.3:80", true),
            ],
        );
        let after = view(
            80,
            &[
                ("198.18.1.1:80", true),
                ("198.18.1.2:80", false),
                ("198.18.1.3:80", true),
                ("198.18.1.4:80", true),
            ],
        );
        let mut held = before.clone();
        for message in updates(&before, &after) {
            match message.kind.expect("a kind") {
                update::Kind::Snapshot(_) | update::Kind::Routes(_) => unreachable!("a small change is a diff"),
                update::Kind::Add(add) => {
                    for e in add.endpoints {
                        held.endpoints.insert(e.address.parse().expect("an address"), e);
                    }
                }
                update::Kind::Remove(remove) => {
                    for a in remove.addresses {
                        held.endpoints.remove(&a.parse().expect("an address"));
                    }
                }
            }
        }
        assert_eq!(held, after);
    }
}
