use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

use super::*;

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn bytes_pass_both_ways_and_half_close_propagates() {
    let (mut client, mut proxy_client_side) = duplex(1024);
    let (mut proxy_server_side, mut server) = duplex(1024);
    let counters = ByteCounters::default();
    let relay_task = {
        let counters = counters.clone();
        tokio::spawn(async move { relay(&mut proxy_client_side, &mut proxy_server_side, LONG, counters).await })
    };

    let request: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = request.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        reply
    });
    // The server sees the client's half-close as end of stream, then answers.
    let mut received = Vec::new();
    server.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, request);
    server.write_all(b"done").await.unwrap();
    server.shutdown().await.unwrap();

    assert_eq!(writer.await.unwrap(), b"done");
    let moved = relay_task.await.unwrap().unwrap();
    assert_eq!(
        moved,
        Transferred {
            client_to_server: 100_000,
            server_to_client: 4
        }
    );
    assert_eq!(counters.client_to_server.get(), 100_000);
    assert_eq!(counters.server_to_client.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_timeout() {
    let (_client, mut a) = duplex(64);
    let (mut b, _server) = duplex(64);
    let started = tokio::time::Instant::now();
    let result = relay(&mut a, &mut b, Duration::from_secs(30), ByteCounters::default()).await;
    assert!(matches!(result, Err(RelayError::Idle(_))), "{result:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn traffic_in_either_direction_keeps_the_connection_alive() {
    let (mut client, mut a) = duplex(64);
    let (mut b, mut server) = duplex(64);
    let relay_task =
        tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(30), ByteCounters::default()).await });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        server.write_all(b"tick").await.unwrap();
        let mut buf = [0; 4];
        client.read_exact(&mut buf).await.unwrap();
    }
    assert!(
        !relay_task.is_finished(),
        "the relay timed out while the server was talking"
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(matches!(relay_task.await.unwrap(), Err(RelayError::Idle(_))));
}

#[tokio::test]
async fn a_slow_reader_pushes_back_instead_of_being_buffered_for() {
    let (mut client, mut a) = duplex(4096);
    let (mut b, _server_never_reads) = duplex(4096);
    tokio::spawn(async move { relay(&mut a, &mut b, LONG, ByteCounters::default()).await });
    let chunk = vec![7u8; 1024];
    let mut written = 0usize;
    let deadline = tokio::time::sleep(Duration::from_millis(300));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = client.write_all(&chunk) => { result.unwrap(); written += chunk.len(); }
            _ = &mut deadline => break,
        }
        assert!(written < 10 * 1024 * 1024, "the relay kept accepting bytes nobody read");
    }
    // Two 4 KiB pipes plus at most one bulk buffer in the relay.
    assert!(written <= 4096 + 4096 + BULK_BUFFER, "buffered {written} bytes");
}

#[tokio::test]
async fn a_server_reset_is_reported_as_an_upstream_error() {
    let (mut client, mut a) = duplex(64);
    let (mut b, server) = duplex(64);
    let relay_task = tokio::spawn(async move { relay(&mut a, &mut b, LONG, ByteCounters::default()).await });
    drop(server);
    client.write_all(b"hello").await.unwrap();
    let result = relay_task.await.unwrap();
    assert!(matches!(result, Err(RelayError::Upstream(_))), "{result:?}");
}
