//! The inbound listener: connections arriving at the pod, redirected here by
//! iptables, go on to the application at their original destination.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::drain::Drain;
use crate::listener;
use crate::tcp::Forwarder;
use crate::transport;

pub async fn serve(listener: TcpListener, forwarder: Forwarder, drain: Drain) {
    listener::serve(listener, drain, move |stream, peer| {
        let forwarder = forwarder.clone();
        async move { handle(stream, peer, forwarder).await }
    })
    .await;
}

async fn handle(stream: TcpStream, peer: SocketAddr, forwarder: Forwarder) {
    transport::tune(&stream);
    match transport::redirected_dst(&stream) {
        Ok(target) => forwarder.forward(stream, peer, target).await,
        Err(error) => tracing::warn!(client = %peer, %error, "closing inbound connection"),
    }
}
