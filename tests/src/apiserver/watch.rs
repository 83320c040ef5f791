//! Watch streams: one JSON event per line, as `?watch=true` returns them.
//!
//! A watch resumes after a resourceVersion from the store's change log, or,
//! without one, starts with the current objects as ADDED events. Label and
//! field selectors apply to the object before and after each change, so an
//! object that stops matching arrives as DELETED and one that starts matching
//! as ADDED. Bookmarks carry the resourceVersion the watch has reached.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::resource::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Event, EventType, Store};

const BOOKMARK_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct WatchRequest {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Resume after this version; `None` starts with the current objects.
    pub since: Option<u64>,
    pub timeout: Duration,
    pub bookmarks: bool,
}

impl WatchRequest {
    fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// What this watcher sees of a change, if anything.
    fn translate<'e>(&self, event: &'e Event) -> Option<(EventType, &'e Value)> {
        if event.resource != self.resource || self.namespace.as_deref().is_some_and(|ns| ns != event.namespace()) {
            return None;
        }
        let now = self.selects(&event.object);
        let kind = match event.kind {
            EventType::Modified => match (event.old.as_ref().is_some_and(|old| self.selects(old)), now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            },
            kind => now.then_some(kind)?,
        };
        Some((kind, &event.object))
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Starts a watch; its lines arrive on the returned channel until the
/// timeout, `stop`, a slow reader falling too far behind, or the client
/// going away.
pub fn start(store: Arc<Store>, request: WatchRequest, stop: CancellationToken) -> mpsc::Receiver<Bytes> {
    let (lines, receiver) = mpsc::channel(256);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {},
            _ = tokio::time::sleep(request.timeout) => {},
            _ = run(&store, &request, &lines) => {},
        }
    });
    receiver
}

async fn run(store: &Store, request: &WatchRequest, lines: &mpsc::Sender<Bytes>) -> Option<()> {
    let since = match request.since {
        Some(since) => since,
        None => {
            let (objects, rv) = store.list(request.resource, request.namespace.as_deref());
            for object in objects.iter().filter(|o| request.selects(o)) {
                lines.send(line("ADDED", object)).await.ok()?;
            }
            rv
        }
    };
    let (backlog, mut receiver) = match store.watch_from(since) {
        Ok(started) => started,
        Err(error) => {
            lines.send(line("ERROR", &error.status())).await.ok()?;
            return None;
        }
    };
    let mut reached = since;
    for event in backlog {
        deliver(request, &event, lines).await?;
        reached = event.rv;
    }
    let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
    bookmark.tick().await;
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Ok(event) if event.rv > reached => {
                    deliver(request, &event, lines).await?;
                    reached = event.rv;
                }
                Ok(_) => {}
                // Too far behind: end the watch; the client resumes from its
                // last version, or re-lists if that is gone.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = bookmark.tick(), if request.bookmarks => {
                let object = json!({
                    "kind": request.resource.kind,
                    "apiVersion": request.resource.api_version(),
                    "metadata": {"resourceVersion": reached.to_string()},
                });
                lines.send(line("BOOKMARK", &object)).await.ok()?;
            }
            _ = lines.closed() => return None,
        }
    }
}

async fn deliver(request: &WatchRequest, event: &Event, lines: &mpsc::Sender<Bytes>) -> Option<()> {
    if let Some((kind, object)) = request.translate(event) {
        lines.send(line(kind.as_str(), object)).await.ok()?;
    }
    Some(())
}
