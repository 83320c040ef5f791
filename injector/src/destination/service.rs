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
use strait_api::destination::v1::{GetDestination, Update};
use strait_contract::SpiffeId;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::index::Index;
use super::view::{View, updates};
use crate::tls::{Stop, stopped};

/// Who is on the other end of a connection: the SPIFFE ID of its verified
/// client certificate, `None` when it has none or not exactly one.
#[derive(Clone, Debug)]
pub struct Caller(pub Option<SpiffeId>);

/// Messages a subscriber may have written but not yet sent: a slow reader
/// holds up only its own stream, and what it misses meanwhile arrives as
/// one diff from the state it last got.
const BUFFERED: usize = 4;

pub struct DestinationService {
    index: Arc<Index>,
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
            trust_domain: trust_domain.to_string(),
            stop,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let Some(Caller(Some(id))) = request.extensions().get::<Caller>() else {
            return Err(Status::unauthenticated(
                "a client certificate with a SPIFFE ID of the mesh is required",
            ));
        };
        if id.trust_domain != self.trust_domain {
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
        let address: SocketAddr = text.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "address {text:?} is not IP:port (198.18.0.10:80, [fd00::a]:80)"
            ))
        })?;
        let mut views = self.index.follow(address);
        let (sender, receiver) = mpsc::channel(BUFFERED);
        tracing::debug!(%caller, %address, "destination followed");
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = follow(&mut views, &sender) => {},
                () = stopped(stop) => {},
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Sends a subscriber the view's first state and then what changes, until
/// it goes away.
async fn follow(views: &mut watch::Receiver<Arc<View>>, sender: &mpsc::Sender<Result<Update, Status>>) {
    let mut sent: Option<Arc<View>> = None;
    loop {
        let now = views.borrow_and_update().clone();
        let messages = match &sent {
            None => vec![now.snapshot()],
            Some(sent) => updates(sent, &now),
        };
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
        request
            .extensions_mut()
            .insert(Caller(caller.map(|id| id.parse().expect("a SPIFFE ID"))));
        request
    }

    fn service() -> DestinationService {
        let index = Arc::new(Index::default());
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
            }
        }
        assert!(messages <= BUFFERED + 2, "{messages} messages for 1,000 changes");
    }
}
