//! Who loads the API server: per user, the requests made, the lists and
//! watches among them, the watches open now, the requests refused (403:
//! by RBAC or by Pod Security; unauthenticated ones count as
//! `system:anonymous`), and the bytes of response bodies sent (watch streams
//! included, counted as their events go out). `strait-lab apiserver stats`
//! prints them, so tests and the bench can tell which component loads the
//! API server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;

use super::Body;

/// One user's tally since the lab started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserStats {
    pub requests: u64,
    pub lists: u64,
    pub watches: u64,
    pub open_watches: u64,
    pub forbidden: u64,
    pub bytes_sent: u64,
}

#[derive(Default)]
pub struct ApiStats {
    users: Mutex<BTreeMap<String, UserStats>>,
}

/// Closes a watch in the tally when its response body is dropped (the
/// client went away, the watch timed out, or the server stopped).
struct OpenWatch {
    stats: Arc<ApiStats>,
    user: String,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.stats
            .with(&self.user, |s| s.open_watches = s.open_watches.saturating_sub(1));
    }
}

impl ApiStats {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, UserStats>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with(&self, user: &str, change: impl FnOnce(&mut UserStats)) {
        change(self.lock().entry(user.to_string()).or_default());
    }

    /// Every user's tally, keyed by user name.
    pub fn snapshot(&self) -> BTreeMap<String, UserStats> {
        self.lock().clone()
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.snapshot()).unwrap_or_default()
    }

    /// Counts one request of `user` (`verb` as authorization names it, if
    /// it was a resource request) and the bytes its response sends.
    pub fn count(self: &Arc<Self>, user: &str, verb: Option<&str>, response: Response<Body>) -> Response<Body> {
        let succeeded = response.status().is_success();
        let watch = succeeded && verb == Some("watch");
        self.with(user, |s| {
            s.requests += 1;
            s.lists += u64::from(verb == Some("list"));
            s.watches += u64::from(verb == Some("watch"));
            s.open_watches += u64::from(watch);
            s.forbidden += u64::from(response.status() == StatusCode::FORBIDDEN);
        });
        let open = watch.then(|| OpenWatch {
            stats: self.clone(),
            user: user.to_string(),
        });
        let (stats, user) = (self.clone(), user.to_string());
        response.map(move |body| {
            body.map_frame(move |frame| {
                let _open = &open;
                if let Some(data) = frame.data_ref() {
                    stats.with(&user, |s| s.bytes_sent += data.len() as u64);
                }
                frame
            })
            .boxed_unsync()
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn response(status: StatusCode, text: &'static str) -> Response<Body> {
        let mut response = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response
    }

    #[tokio::test]
    async fn bytes_lists_and_open_watches_are_counted_per_user() {
        let stats = Arc::new(ApiStats::default());
        let list = stats.count("alice", Some("list"), response(StatusCode::OK, "12345"));
        list.into_body().collect().await.unwrap();
        let watch = stats.count("alice", Some("watch"), response(StatusCode::OK, "abc"));
        stats.count("bob", Some("get"), response(StatusCode::FORBIDDEN, "no"));
        assert_eq!(stats.snapshot()["alice"].open_watches, 1);
        watch.into_body().collect().await.unwrap();
        let alice = &stats.snapshot()["alice"];
        assert_eq!(
            (
                alice.requests,
                alice.lists,
                alice.watches,
                alice.open_watches,
                alice.bytes_sent
            ),
            (2, 1, 1, 0, 8)
        );
        assert_eq!(stats.snapshot()["bob"].forbidden, 1);
    }
}
