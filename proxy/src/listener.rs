//! The accept loop shared by the inbound and outbound listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::drain::Drain;

/// Accepts connections until the drain starts, running `handle` for each as
/// a tracked task. Accept errors (such as running out of file descriptors)
/// are logged and retried after a pause rather than ending the listener.
pub async fn serve<H, F>(listener: TcpListener, drain: Drain, handle: H)
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
            Ok((stream, peer)) => drain.spawn(handle(stream, peer)),
            Err(error) => {
                tracing::warn!(?local, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(?local, "listener closed");
}
