//! Protocol upgrades over HTTP/1 (WebSocket and the like): once the server
//! answers 101, both connections are handed over and relayed as raw bytes.

use std::time::Duration;
use strait_contract::Chain;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::relay::{ByteCounters, relay};

/// Relays the upgraded connections until either side ends. The client's
/// bytes are counted where its connection is (`Counted`, which the upgraded
/// connection still reads and writes through), so the relay counts none.
pub fn relay_upgraded(downstream: OnUpgrade, upstream: OnUpgrade, idle_timeout: Duration) {
    tokio::spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(error = %Chain(&error), "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut server) = (TokioIo::new(downstream), TokioIo::new(upstream));
        if let Err(error) = relay(&mut client, &mut server, idle_timeout, ByteCounters::default()).await {
            tracing::debug!(error = %Chain(&error), "upgraded connection ended");
        }
    });
}
