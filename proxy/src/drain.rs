//! Graceful shutdown: one signal tells every listener to stop accepting, and
//! a tracker waits, up to a grace period, for the connections still open.
//! Before it, the proxy may announce that it is stopping (readiness turns
//! false) while it still serves an application that has not stopped yet.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The proxy's shutdown, shared by its listeners, connection tasks and
/// admin server; clones share one state. It also counts the traffic that
/// passed (connections finished, requests received), which
/// [`crate::memory`] watches for bursts.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Fired once the proxy is stopping: readiness turns false.
    stopping: CancellationToken,
    /// Fired once listeners are to stop accepting.
    signal: CancellationToken,
    /// Every connection task, so shutdown can wait for them to finish.
    connections: TaskTracker,
    /// How many connections have finished since the start.
    finished: Arc<AtomicU64>,
    /// How many HTTP requests the servers have received since the start.
    requests: Requests,
}

/// The count of HTTP requests received, shared by the connections' servers
/// (see [`Drain::requests`]); clones share one count.
#[derive(Clone, Debug, Default)]
pub struct Requests(Arc<AtomicU64>);

impl Requests {
    /// Counts one request received.
    pub fn received(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drain {
    /// A drain not yet announced or started, tracking no connections.
    pub fn new() -> Self {
        Drain::default()
    }

    /// Announces the stop: readiness turns false, but the proxy still
    /// accepts connections until the drain starts.
    pub fn announce(&self) {
        self.stopping.cancel();
    }

    /// Starts the drain: listeners stop accepting, readiness turns false.
    pub fn start(&self) {
        self.stopping.cancel();
        self.signal.cancel();
    }

    /// Whether the proxy is stopping (the drain announced or started).
    pub fn is_draining(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Resolves when the drain starts.
    pub fn started(&self) -> WaitForCancellationFuture<'_> {
        self.signal.cancelled()
    }

    /// Runs a connection handler that shutdown will wait for.
    pub fn spawn<F>(&self, handler: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let finished = self.finished.clone();
        // A combinator, not an async block: awaiting the moved-in handler
        // would keep it twice in the task (rust-lang/rust#62958).
        self.connections.spawn(handler.map(move |()| {
            finished.fetch_add(1, Ordering::Relaxed);
        }));
    }

    /// How many connections have finished since the start.
    pub fn finished_connections(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The count a connection's server adds each request it receives to.
    pub fn requests(&self) -> Requests {
        self.requests.clone()
    }

    /// How many HTTP requests have been received since the start.
    pub fn received_requests(&self) -> u64 {
        self.requests.0.load(Ordering::Relaxed)
    }

    /// Waits for open connections to finish, at most `grace`; returns how
    /// many were still open when the grace period ran out.
    pub async fn finish(&self, grace: Duration) -> usize {
        self.connections.close();
        match tokio::time::timeout(grace, self.connections.wait()).await {
            Ok(()) => 0,
            Err(_) => self.connections.len(),
        }
    }
}
