//! Discovery from the control plane's destination service
//! (`strait.destination.v1`, gRPC over mutual TLS): one stream per original
//! destination in use, holding its Service port and endpoints, each
//! endpoint with whether it is meshed and as whom. The proxy makes no
//! Kubernetes API requests.
//!
//! A stream that breaks (a replica going away, the service restarting)
//! keeps its last state and is opened again after a jittered back-off, on
//! a new connection, so to whichever replica the Service's address leads.
//! A destination unused for [`IDLE`] is forgotten and its stream closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use strait_api::client::{Target, TargetError};
use strait_api::destination::v1::destination_client::DestinationClient;
use strait_api::destination::v1::{self as api, GetDestination, update};
use strait_contract::SpiffeId;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

use super::{Destination, Endpoint, EndpointSet, ServicePort, ServiceRef, TargetRef};
use crate::metrics::DiscoveryMetrics;
use crate::retry::Policy;
use crate::routes::Table;
use crate::throttle::LogThrottle;
use crate::tls::MeshTls;

/// How long a connection waits for a destination's first snapshot before it
/// is passed through as addressed.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(3);
/// The largest update accepted: a snapshot of about 100,000 endpoints
/// (tonic's default, 4 MiB, would refuse a Service of some 30,000 and leave
/// the proxy reconnecting forever without its endpoints).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// A destination no connection has asked about for this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(300);
/// Back-off between attempts to open a stream again.
const RETRY: Policy = Policy::Backoff {
    first: Duration::from_millis(200),
    max: Duration::from_secs(10),
};

/// What the proxy knows of one destination.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Known {
    /// The Service port the address is, if it is one.
    pub service: Option<api::ServicePort>,
    /// By address.
    pub endpoints: HashMap<SocketAddr, api::Endpoint>,
    /// The routes that apply to this proxy's requests, in precedence order.
    pub routes: Vec<api::RouteRule>,
}

impl Known {
    /// Applies one message of the stream.
    ///
    /// # Errors
    /// A message without a kind, or an address that is not IP:port (the
    /// state is left as it was).
    pub fn apply(&mut self, message: api::Update) -> Result<(), String> {
        let parse = |address: &str| {
            address
                .parse::<SocketAddr>()
                .map_err(|_| format!("the destination service sent the address {address:?}"))
        };
        match message
            .kind
            .ok_or("the destination service sent an update without a kind")?
        {
            update::Kind::Snapshot(snapshot) => {
                let mut endpoints = HashMap::new();
                for endpoint in snapshot.endpoints {
                    endpoints.insert(parse(&endpoint.address)?, endpoint);
                }
                // A snapshot replaces the endpoints; the routes come in
                // their own messages.
                self.service = snapshot.service;
                self.endpoints = endpoints;
            }
            update::Kind::Add(add) => {
                let parsed: Vec<(SocketAddr, api::Endpoint)> = add
                    .endpoints
                    .into_iter()
                    .map(|e| Ok((parse(&e.address)?, e)))
                    .collect::<Result<_, String>>()?;
                self.endpoints.extend(parsed);
            }
            update::Kind::Remove(remove) => {
                let parsed: Vec<SocketAddr> = remove.addresses.iter().map(|a| parse(a)).collect::<Result<_, _>>()?;
                for address in parsed {
                    self.endpoints.remove(&address);
                }
            }
            update::Kind::Routes(routes) => self.routes = routes.rules,
        }
        Ok(())
    }

    /// The endpoint set the balancer uses, sorted by address. A meshed
    /// endpoint whose identity cannot be read is left out (and said so):
    /// traffic to a meshed pod is mutual TLS or nothing.
    pub fn endpoint_set(&self) -> EndpointSet {
        let mut endpoints: Vec<Endpoint> = self
            .endpoints
            .iter()
            .filter_map(|(addr, e)| {
                let identity = match peer_identity(e) {
                    Ok(identity) => identity,
                    Err(()) => {
                        if let Some(suppressed) = UNREADABLE_IDENTITIES.allow() {
                            tracing::warn!(endpoint = %addr, identity = %e.identity, suppressed, "leaving out a meshed endpoint whose SPIFFE ID cannot be read");
                        }
                        return None;
                    }
                };
                Some(Endpoint {
                    addr: *addr,
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    target: (!e.pod_name.is_empty()).then(|| TargetRef {
                        namespace: e.pod_namespace.clone(),
                        name: e.pod_name.clone(),
                    }),
                    identity,
                })
            })
            .collect();
        endpoints.sort_by_key(|e| e.addr);
        EndpointSet { endpoints }
    }
}

/// The identity to require of an endpoint: its SPIFFE ID when it is meshed.
/// `Err` when it is meshed with an identity that is not a SPIFFE ID.
fn peer_identity(endpoint: &api::Endpoint) -> Result<Option<SpiffeId>, ()> {
    if !endpoint.meshed || endpoint.identity.is_empty() {
        return Ok(None);
    }
    endpoint.identity.parse().map(Some).map_err(|_| ())
}

static UNREADABLE_IDENTITIES: LogThrottle = LogThrottle::new(5);

/// How long a connection to the destination service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the connection, so a replica that vanished without
/// closing it is noticed and its streams opened elsewhere.
const KEEPALIVE: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting channel to the destination service at `addr`
/// (`host:port`) over mutual TLS: the server is verified by the host name
/// against the mesh's trust anchors, this proxy presents its own
/// certificate; both as they are at each new connection, so rotations need
/// no restart. A broken connection is made again on the next call.
///
/// # Errors
/// [`TargetError`] when `addr` is not `host:port`.
pub fn channel(addr: &str, mesh: Arc<MeshTls>) -> Result<Channel, TargetError> {
    let target = Target::parse(addr)?;
    let endpoint = target
        .endpoint()?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let config = move || mesh.control_plane_client().map_err(std::io::Error::other);
    Ok(endpoint.connect_with_connector_lazy(target.connector(config)))
}

struct Followed {
    known: watch::Sender<Arc<Known>>,
    endpoints: watch::Sender<Arc<EndpointSet>>,
    routes: watch::Sender<Arc<Table>>,
    /// Whether a first snapshot has arrived.
    synced: watch::Receiver<bool>,
    used: Instant,
    /// Dropped with the entry: its stream's task then ends.
    _forgotten: oneshot::Sender<()>,
}

/// Discovery from the destination service: one stream per original
/// destination in use, shared by every connection to it.
pub struct DestinationDiscovery {
    client: DestinationClient<Channel>,
    followed: Mutex<HashMap<SocketAddr, Followed>>,
    metrics: DiscoveryMetrics,
}

impl DestinationDiscovery {
    /// Discovery over `channel` (a lazily connecting channel to the
    /// destination service, over mutual TLS).
    pub fn new(channel: Channel, metrics: DiscoveryMetrics) -> Arc<Self> {
        let discovery = Arc::new(DestinationDiscovery {
            client: DestinationClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
            followed: Mutex::new(HashMap::new()),
            metrics,
        });
        tokio::spawn(forget_idle(Arc::downgrade(&discovery)));
        discovery
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Followed>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The destination's state, following it from the first call.
    fn follow(self: &Arc<Self>, address: SocketAddr) -> (Receivers, watch::Receiver<bool>) {
        let mut followed = self.lock();
        if let Some(existing) = followed.get_mut(&address) {
            existing.used = Instant::now();
            let published = Published {
                known: existing.known.subscribe(),
                endpoints: existing.endpoints.subscribe(),
                routes: existing.routes.subscribe(),
            };
            return (published, existing.synced.clone());
        }
        let (known, known_rx) = watch::channel(Arc::new(Known::default()));
        let (endpoints, endpoints_rx) = watch::channel(Arc::new(EndpointSet::default()));
        let (routes, routes_rx) = watch::channel(Arc::new(Table::default()));
        let (synced_tx, synced) = watch::channel(false);
        let (forgotten_tx, forgotten) = oneshot::channel();
        followed.insert(
            address,
            Followed {
                known: known.clone(),
                endpoints: endpoints.clone(),
                routes: routes.clone(),
                synced: synced.clone(),
                used: Instant::now(),
                _forgotten: forgotten_tx,
            },
        );
        let senders = Published {
            known,
            endpoints,
            routes,
        };
        tokio::spawn(stream(
            self.client.clone(),
            address,
            senders,
            synced_tx,
            forgotten,
            self.metrics.clone(),
        ));
        let receivers = Published {
            known: known_rx,
            endpoints: endpoints_rx,
            routes: routes_rx,
        };
        (receivers, synced)
    }
}

/// What a destination's stream publishes: its whole state, the endpoint
/// set made of it, and its routes compiled.
struct Published<K, E, R> {
    known: K,
    endpoints: E,
    routes: R,
}

type Senders = Published<watch::Sender<Arc<Known>>, watch::Sender<Arc<EndpointSet>>, watch::Sender<Arc<Table>>>;
type Receivers = Published<watch::Receiver<Arc<Known>>, watch::Receiver<Arc<EndpointSet>>, watch::Receiver<Arc<Table>>>;

/// Keeps one destination's stream open until the destination is forgotten
/// (`forgotten` resolves when its entry, holding the sender, is dropped).
/// Its receivers coming and going do not end it: a connection reads the
/// state once and lets go.
async fn stream(
    client: DestinationClient<Channel>,
    address: SocketAddr,
    published: Senders,
    synced: watch::Sender<bool>,
    mut forgotten: oneshot::Receiver<()>,
    metrics: DiscoveryMetrics,
) {
    let mut delays = RETRY.delays();
    loop {
        let mut client = client.clone();
        let request = GetDestination {
            address: address.to_string(),
        };
        let opened = tokio::select! {
            opened = client.get(request) => opened,
            _ = &mut forgotten => return,
        };
        match opened {
            Ok(response) => {
                let mut updates = response.into_inner();
                let mut state = Known::clone(&published.known.borrow());
                loop {
                    let next = tokio::select! {
                        next = updates.next() => next,
                        _ = &mut forgotten => return,
                    };
                    let problem = match next {
                        Some(Ok(message)) => match state.apply(message) {
                            Ok(()) => {
                                metrics.watch_ok("destinations");
                                delays = RETRY.delays();
                                publish(&published, &state);
                                let _ = synced.send(true);
                                continue;
                            }
                            Err(problem) => problem,
                        },
                        Some(Err(status)) => format!("{}: {}", status.code(), status.message()),
                        None => "the destination service ended the stream".to_string(),
                    };
                    tracing::warn!(%address, %problem, "destination stream broken; keeping the last known endpoints and reconnecting");
                    metrics.watch_failed("destinations");
                    break;
                }
            }
            Err(status) => {
                tracing::warn!(%address, code = %status.code(), message = status.message(), "cannot follow the destination; keeping the last known endpoints and retrying");
                metrics.watch_failed("destinations");
            }
        }
        let delay = delays.next().unwrap_or(RETRY.max_delay());
        tokio::select! {
            () = tokio::time::sleep(delay) => {},
            _ = &mut forgotten => return,
        }
    }
}

fn publish(published: &Senders, state: &Known) {
    let Published {
        known,
        endpoints,
        routes,
    } = published;
    if known.borrow().routes != state.routes {
        let table = Table::compile_after(&routes.borrow(), &state.routes);
        routes.send_replace(Arc::new(table));
    }
    known.send_if_modified(|current| {
        let changed = **current != *state;
        if changed {
            *current = Arc::new(state.clone());
        }
        changed
    });
    let set = state.endpoint_set();
    endpoints.send_if_modified(|current| {
        let changed = **current != set;
        if changed {
            *current = Arc::new(set.clone());
        }
        changed
    });
}

/// Forgets destinations unused for [`IDLE`] whose endpoints nobody holds:
/// dropping their senders ends their streams.
async fn forget_idle(discovery: Weak<DestinationDiscovery>) {
    let mut tick = tokio::time::interval(IDLE / 4);
    loop {
        tick.tick().await;
        let Some(discovery) = discovery.upgrade() else { return };
        discovery.lock().retain(|_, f| {
            f.used.elapsed() < IDLE || f.endpoints.receiver_count() > 0 || f.routes.receiver_count() > 0
        });
    }
}

impl super::Resolve for Arc<DestinationDiscovery> {
    fn resolve(&self, orig_dst: SocketAddr) -> BoxFuture<'_, Destination> {
        Box::pin(async move {
            let (
                Published {
                    known,
                    endpoints,
                    routes,
                },
                mut synced,
            ) = self.follow(orig_dst);
            if !*synced.borrow() {
                let _ = tokio::time::timeout(FIRST_SYNC_WAIT, synced.wait_for(|s| *s)).await;
            }
            let known = known.borrow().clone();
            match &known.service {
                Some(port) => Destination::Service(ServicePort {
                    service: ServiceRef {
                        namespace: port.namespace.clone(),
                        name: port.name.clone(),
                    },
                    port: u16::try_from(port.port).unwrap_or_default(),
                    app_protocol: (!port.app_protocol.is_empty()).then(|| port.app_protocol.clone()),
                    opaque: port.opaque,
                    endpoints,
                    routes,
                }),
                None => Destination::Passthrough {
                    peer: known
                        .endpoints
                        .get(&orig_dst)
                        .and_then(|e| peer_identity(e).ok())
                        .flatten(),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, identity: Option<&str>) -> api::Endpoint {
        api::Endpoint {
            address: address.into(),
            ready: true,
            serving: true,
            meshed: identity.is_some(),
            identity: identity.unwrap_or_default().into(),
            pod_namespace: "mesh".into(),
            pod_name: format!("pod-{address}"),
            ..api::Endpoint::default()
        }
    }

    fn message(kind: update::Kind) -> api::Update {
        api::Update { kind: Some(kind) }
    }

    #[test]
    fn snapshots_replace_and_diffs_add_and_remove() {
        let mut known = Known::default();
        known
            .apply(message(update::Kind::Snapshot(api::Snapshot {
                service: None,
                endpoints: vec![
                    endpoint("198.18.1.1:80", Some("spiffe://cluster.local/ns/mesh/sa/web")),
                    endpoint("198.18.1.2:80", None),
                ],
            })))
            .expect("applied");
        known
            .apply(message(update::Kind::Add(api::Add {
                endpoints: vec![endpoint("198.18.1.3:80", None)],
            })))
            .expect("applied");
        known
            .apply(message(update::Kind::Remove(api::Remove {
                addresses: vec!["198.18.1.2:80".into()],
            })))
            .expect("applied");
        let set = known.endpoint_set();
        let summary: Vec<(String, Option<String>)> = set
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.identity.as_ref().map(ToString::to_string)))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "198.18.1.1:80".to_string(),
                    Some("spiffe://cluster.local/ns/mesh/sa/web".to_string())
                ),
                ("198.18.1.3:80".to_string(), None)
            ]
        );
    }

    #[test]
    fn a_meshed_endpoint_whose_identity_cannot_be_read_is_left_out_not_reached_in_plaintext() {
        let mut known = Known::default();
        let mut garbled = endpoint("198.18.1.5:80", Some("garbage"));
        garbled.meshed = true;
        let mut opted_out = endpoint("198.18.1.6:80", None);
        opted_out.meshed = true;
        known
            .apply(message(update::Kind::Snapshot(api::Snapshot {
                service: None,
                endpoints: vec![garbled, opted_out, endpoint("198.18.1.7:80", None)],
            })))
            .expect("applied");
        let addresses: Vec<String> = known
            .endpoint_set()
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(addresses, ["198.18.1.6:80", "198.18.1.7:80"]);
    }

    #[test]
    fn a_bad_message_is_refused_and_changes_nothing() {
        let mut known = Known::default();
        known
            .apply(message(update::Kind::Add(api::Add {
                endpoints: vec![endpoint("198.18.1.1:80", None)],
            })))
            .expect("applied");
        let before = known.clone();
        let refused = known
            .apply(message(update::Kind::Add(api::Add {
                endpoints: vec![endpoint("198.18.1.2:80", None), endpoint("web.mesh:80", None)],
            })))
            .expect_err("refused");
        assert!(refused.contains("\"web.mesh:80\""), "{refused}");
        assert_eq!(known, before);
        assert!(known.apply(api::Update { kind: None }).is_err());
    }

    /// A destination service in this process that answers every `Get` with
    /// what the test sends on the returned channel.
    async fn scripted_server() -> (Channel, tokio::sync::mpsc::Sender<api::Update>) {
        use strait_api::destination::v1::destination_server::{Destination as Served, DestinationServer};
        type Updates = futures::stream::BoxStream<'static, Result<api::Update, tonic::Status>>;
        struct Scripted(Mutex<Option<tokio::sync::mpsc::Receiver<api::Update>>>);
        #[tonic::async_trait]
        impl Served for Scripted {
            type GetStream = Updates;
            async fn get(&self, _: tonic::Request<GetDestination>) -> Result<tonic::Response<Updates>, tonic::Status> {
                let receiver = self
                    .0
                    .lock()
                    .expect("unpoisoned")
                    .take()
                    .ok_or_else(|| tonic::Status::unavailable("one stream only"))?;
                let updates = futures::stream::unfold(receiver, |mut r| async move { Some((Ok(r.recv().await?), r)) });
                Ok(tonic::Response::new(Box::pin(updates)))
            }
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("bound").port();
        let incoming =
            futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DestinationServer::new(Scripted(Mutex::new(Some(receiver)))))
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("a URI")
            .connect_lazy();
        (channel, sender)
    }

    #[tokio::test]
    async fn the_stream_outlives_the_connection_that_asked_and_later_changes_arrive() {
        let (channel, server) = scripted_server().await;
        let discovery = DestinationDiscovery::new(channel, DiscoveryMetrics::default());
        let service = api::ServicePort {
            namespace: "mesh".into(),
            name: "grpc".into(),
            port: 50051,
            ..api::ServicePort::default()
        };
        server
            .send(message(update::Kind::Snapshot(api::Snapshot {
                service: Some(service),
                endpoints: vec![endpoint("198.18.1.1:50051", None)],
            })))
            .await
            .expect("sent");
        let orig_dst: SocketAddr = "198.19.0.5:50051".parse().expect("an address");
        let Destination::Service(port) = super::super::Resolve::resolve(&discovery, orig_dst).await else {
            panic!("a Service port")
        };
        let mut endpoints = port.endpoints;
        assert_eq!(endpoints.borrow_and_update().endpoints.len(), 1);
        // The connection has its answer and lets go of all but the
        // endpoints, as a balancer does; a scale-up comes later.
        server
            .send(message(update::Kind::Add(api::Add {
                endpoints: vec![endpoint("198.18.1.2:50051", None)],
            })))
            .await
            .expect("sent");
        tokio::time::timeout(Duration::from_secs(10), endpoints.changed())
            .await
            .expect("the added endpoint arrives")
            .expect("the destination is still followed");
        assert_eq!(endpoints.borrow().endpoints.len(), 2);
    }
}
