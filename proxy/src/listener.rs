//! The accept loop shared by the inbound and outbound listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_contract::Chain;

use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::drain::Drain;
use crate::throttle::LogThrottle;

/// How many connections the listeners of one direction serve at once. A
/// connection beyond the limit is closed as soon as it is accepted (the
/// client sees the close at once instead of waiting in the backlog) and
/// counted.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    refused: Counter,
}

impl ConnectionLimit {
    /// A limit of `max` connections open at once; `refused` counts the
    /// connections closed for being over it.
    pub fn new(max: usize, refused: Counter) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused,
        }
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

static OVER_LIMIT: LogThrottle = LogThrottle::new(1);

/// Accepts connections until the drain starts, running `handle` for each as
/// a tracked task while the limit allows. Accept errors (such as running out
/// of file descriptors) are logged and retried after a pause rather than
/// ending the listener.
pub async fn serve<H, F>(listener: TcpListener, drain: Drain, limit: ConnectionLimit, handle: H)
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = drain.started() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match limit.admit() {
                Some(permit) => {
                    // The permit goes with the connection (a combinator, as
                    // in `Drain::spawn`).
                    drain.spawn(handle(stream, peer).map(move |()| drop(permit)));
                }
                None => {
                    limit.refused.inc();
                    if let Some(suppressed) = OVER_LIMIT.allow() {
                        tracing::warn!(
                            ?local,
                            client = %peer,
                            max = limit.max,
                            suppressed,
                            "closing a new connection: the listener is at its connection limit (STRAIT_MAX_CONNECTIONS)"
                        );
                    }
                    drop(stream);
                }
            },
            Err(error) => {
                tracing::warn!(?local, error = %Chain(&error), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(?local, "listener closed");
}
