//! The `strait.destination.v1.Destination` gRPC service over an [`Index`].
//!
//! The transport (mutual TLS, `serve.rs`) puts the caller's verified SPIFFE
//! ID into each request's extensions as a [`Caller`]; a request without one
//! is UNAUTHENTICATED, one from outside the mesh's trust domain
//! PERMISSION_DENIED.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use strait_api::destination::v1::destination_server::Destination;
use strait_api::destination::v1::{GetDestination, RouteRule, Routes, Update, update};
use strait_contract::SpiffeId;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::index::Index;
use super::view::{View, updates};
use crate::tls::{Stop, stopped};

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The SPIFFE ID of its verified client certificate, `None` when it
    /// names no workload SPIFFE ID.
    pub id: Option<SpiffeId>,
    /// Its address, for the log line of a refusal.
    pub peer: Option<SocketAddr>,
}

/// Messages a subscriber may have written but not yet sent: a slow reader
/// holds up only its own stream, and what it misses meanwhile arrives as
/// one diff from the state it last got.
const BUFFERED: usize = 4;

/// The most streams one replica serves at once, over all its connections
/// (each connection is also held to `serve::MAX_STREAMS_PER_PROXY`). A
/// stream costs about 29 KiB here (bench `destination`), so 10,000 stay
/// well within the chart's memory limit; beyond it a proxy is told
/// RESOURCE_EXHAUSTED and tries again, perhaps on another replica
/// (`injector.replicas` sets how many serve).
pub const MAX_STREAMS: usize = 10_000;

/// The longest part of a caller's address said back in an error.
const ADDRESS_IN_ERRORS: usize = 64;

pub struct DestinationService {
    index: Arc<Index>,
    /// One permit per open stream.
    streams: Arc<Semaphore>,
    trust_domain: String,
    /// Once it turns true every stream ends, so a replica stopping lets its
    /// proxies move to another at once (a graceful shutdown would otherwise
    /// wait for streams that never end).
    stop: Stop,
}

impl DestinationService {
    pub fn new(index: Arc<Index>, trust_domain: &str, stop: Stop) -> Self {
        DestinationService {
            index,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            trust_domain: trust_domain.to_string(),
            stop,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let caller = request.extensions().get::<Caller>();
        let Some(id) = caller.and_then(|c| c.id.as_ref()) else {
            tracing::info!(client = ?caller.and_then(|c| c.peer), "destination service: a client without a workload SPIFFE ID refused");
            return Err(Status::unauthenticated(
                "a client certificate naming a workload SPIFFE ID (spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT) is required",
            ));
        };
        if id.trust_domain != self.trust_domain {
            tracing::info!(client = ?caller.and_then(|c| c.peer), %id, trust_domain = %self.trust_domain, "destination service: a client of another trust domain refused");
            return Err(Status::permission_denied(format!(
                "{id} is not of the trust domain {}",
                self.trust_domain
            )));
        }
        Ok(id.clone())
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = Updates;

    async fn get(&self, request: Request<GetDestination>) -> Result<Response<Updates>, Status> {
        let caller = self.authorize(&request)?;
        let text = &request.get_ref().address;
        let address: SocketAddr = text
            .parse()
            .ok()
            .filter(|a: &SocketAddr| a.port() != 0)
            .ok_or_else(|| {
                let shown: String = text.chars().take(ADDRESS_IN_ERRORS).collect();
                let more = if shown.len() < text.len() { "..." } else { "" };
                Status::invalid_argument(format!(
                    "address {shown:?}{more} is not IP:port with a port 1..65535 (198.18.0.10:80, [fd00::a]:80)"
                ))
            })?;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(%caller, limit = MAX_STREAMS, "destination service: at its most streams; refusing one");
            Status::resource_exhausted(format!(
                "this destination service replica serves its most streams ({MAX_STREAMS}); try again later"
            ))
        })?;
        let mut views = self.index.follow(address);
        let mut routes = self.index.follow_routes(address, &caller.namespace);
        let (sender, receiver) = mpsc::channel(BUFFERED);
        tracing::debug!(%caller, %address, "destination followed");
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = follow(&mut views, &mut routes, &sender) => {},
                () = stopped(stop) => {},
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Sends a subscriber the view's first state and then what changes, until
/// it goes away; for a Service port, the routes that apply to it after the
/// first snapshot and whenever they change.
async fn follow(
    views: &mut watch::Receiver<Arc<View>>,
    routes: &mut watch::Receiver<Arc<Vec<RouteRule>>>,
    sender: &mpsc::Sender<Result<Update, Status>>,
) {
    let mut sent: Option<Arc<View>> = None;
    let mut sent_routes: Option<Arc<Vec<RouteRule>>> = None;
    loop {
        let now = views.borrow_and_update().clone();
        let mut messages = match &sent {
            None => vec![now.snapshot()],
            Some(sent) => updates(sent, &now),
        };
        let table = routes.borrow_and_update().clone();
        if now.service.is_some() && sent_routes.as_ref() != Some(&table) {
            messages.push(Update {
                kind: Some(update::Kind::Routes(Routes {
                    rules: table.as_ref().clone(),
                })),
            });
            sent_routes = Some(table);
        }
        for message in messages {
            // Waits while the stream is full: the subscriber falls behind by
            // one state at most, never by a queue.
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
        }
        sent = Some(now);
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            changed = routes.changed() => if changed.is_err() { return },
            () = sender.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;
    use strait_api::destination::v1::update;

    use super::*;

    fn request(address: &str, caller: Option<&str>) -> Request<GetDestination> {
        let mut request = Request::new(GetDestination {
            address: address.to_string(),
        });
        request.extensions_mut().insert(Caller {
            id: caller.map(|id| id.parse().expect("a SPIFFE ID")),
            peer: None,
        });
        request
    }

    fn service() -> DestinationService {
        let index = Arc::new(Index::new("cluster.local"));
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "mesh"},
            "spec": {"clusterIP": "198.19.0.5", "ports": [{"port": 80}]},
        }))
        .expect("a Service");
        index.apply_service(&svc);
        DestinationService::new(index, "cluster.local", watch::channel(false).1)
    }

    fn slice(ips: &[String]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "mesh", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice")
    }

    const PROXY: &str = "spiffe://cluster.local/ns/mesh/sa/default";

    #[tokio::test]
    async fn callers_outside_the_mesh_and_bad_addresses_are_refused() {
        let service = service();
        let code = |result: Result<Response<Updates>, Status>| result.err().map(|s| s.code());
        assert_eq!(
            code(service.get(request("198.19.0.5:80", None)).await),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(
                service
                    .get(request("198.19.0.5:80", Some("spiffe://other.domain/ns/a/sa/b")))
                    .await
            ),
            Some(tonic::Code::PermissionDenied)
        );
        let refused = service
            .get(request("web.mesh:80", Some(PROXY)))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("\"web.mesh:80\""), "{}", refused.message());
        assert_eq!(
            code(service.get(request("198.19.0.5:0", Some(PROXY))).await),
            Some(tonic::Code::InvalidArgument),
            "port 0 is no port"
        );
        // An address of any length is said back in a bounded message, which
        // fits the client's header limit.
        let long = "1".repeat(100_000);
        let refused = service.get(request(&long, Some(PROXY))).await.err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().len() < 200, "{}", refused.message());
    }

    #[tokio::test]
    async fn a_replica_at_its_most_streams_refuses_more_until_one_ends() {
        let mut service = service();
        service.streams = Arc::new(Semaphore::new(2));
        let first = service
            .get(request("198.19.0.5:80", Some(PROXY)))
            .await
            .expect("served");
        let _second = service
            .get(request("198.19.0.5:80", Some(PROXY)))
            .await
            .expect("served");
        let refused = service
            .get(request("198.19.0.5:80", Some(PROXY)))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{}", refused.message());
        drop(first);
        // The stream's task lets its permit go once it sees its reader gone.
        let mut served = None;
        for _ in 0..100 {
            if let Ok(stream) = service.get(request("198.19.0.5:80", Some(PROXY))).await {
                served = Some(stream);
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(served.is_some(), "a permit came back when a stream ended");
    }

    #[tokio::test]
    async fn a_snapshot_then_diffs_and_a_slow_subscriber_gets_the_latest_state_not_a_queue() {
        let service = service();
        let mut stream = service
            .get(request("198.19.0.5:80", Some(PROXY)))
            .await
            .expect("served")
            .into_inner();
        let first = stream.next().await.expect("a message").expect("ok");
        let Some(update::Kind::Snapshot(snapshot)) = first.kind else {
            panic!("a snapshot first: {first:?}")
        };
        assert_eq!(snapshot.service.expect("a Service port").name, "web");
        assert!(snapshot.endpoints.is_empty());

        // A thousand changes while the subscriber reads nothing.
        let mut ips: Vec<String> = Vec::new();
        for i in 0..1000 {
            ips.push(format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250));
            service.index.apply_slice(&slice(&ips));
        }
        tokio::task::yield_now().await;
        // What it then reads ends at the latest state, in few messages.
        let mut held = std::collections::BTreeSet::new();
        let mut messages = 0;
        while held.len() < 1000 {
            let message = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("the latest state arrives")
                .expect("a message")
                .expect("ok");
            messages += 1;
            match message.kind.expect("a kind") {
                update::Kind::Snapshot(s) => held = s.endpoints.into_iter().map(|e| e.address).collect(),
                update::Kind::Add(a) => held.extend(a.endpoints.into_iter().map(|e| e.address)),
                update::Kind::Remove(r) => r.addresses.iter().for_each(|a| {
                    held.remove(a);
                }),
                // The (empty) routes follow the first snapshot once.
                update::Kind::Routes(_) => messages -= 1,
            }
        }
        assert!(messages <= BUFFERED + 2, "{messages} messages for 1,000 changes");
    }
}
