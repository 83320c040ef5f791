use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::discovery::{Endpoint as DiscoveredEndpoint, ServicePort, TargetRef};
use crate::metrics::Metrics;

/// An HTTP/1 and HTTP/2 server that gives every request `answer`.
async fn serve<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A server that answers with its name after `delay`.
async fn server(name: &'static str, delay: Duration) -> SocketAddr {
    serve(move |_request| async move {
        tokio::time::sleep(delay).await;
        Response::new(Full::new(Bytes::from(name)))
    })
    .await
}

fn balancer(addrs: &[(SocketAddr, &str)]) -> (Balancer, watch::Sender<Arc<EndpointSet>>) {
    let (balancer, updates, _registry) = observed_balancer(addrs);
    (balancer, updates)
}

/// A balancer over `addrs` and the registry of its metrics.
fn observed_balancer(
    addrs: &[(SocketAddr, &str)],
) -> (
    Balancer,
    watch::Sender<Arc<EndpointSet>>,
    prometheus_client::registry::Registry,
) {
    let endpoints = addrs
        .iter()
        .map(|(addr, pod)| DiscoveredEndpoint {
            addr: *addr,
            ready: true,
            serving: true,
            terminating: false,
            target: Some(TargetRef {
                namespace: "demo".into(),
                name: pod.to_string(),
            }),
            identity: None,
        })
        .collect();
    let (sender, receiver) = watch::channel(Arc::new(EndpointSet { endpoints }));
    let target = ServicePort {
        service: ServiceRef {
            namespace: "demo".into(),
            name: "web".into(),
        },
        port: 80,
        app_protocol: None,
        opaque: false,
        endpoints: receiver,
        routes: watch::channel(Arc::new(crate::routes::Table::default())).1,
    };
    let mut registry = crate::metrics::registry();
    let metrics = Metrics::register(&mut registry, true);
    let context = BalancerContext {
        connector: Connector {
            connect_timeout: Duration::from_secs(1),
            mesh: None,
            max_header_bytes: 65536,
        },
        http_metrics: metrics.http,
        discovery_metrics: metrics.discovery,
        wait: Duration::from_millis(200),
    };
    let balancer = Balancer::new(&target, context);
    (balancer, sender, registry)
}

async fn call(balancer: &Balancer, version: http::Version) -> Result<String, DispatchError> {
    let request = Request::builder()
        .uri("http://web.demo:80/")
        .version(version)
        .body(Body::boxed(Empty::<Bytes>::new().map_err(|never| match never {})))
        .unwrap();
    let (_, tracked) = balancer.dispatch(request, None).await?;
    let body = tracked.response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

async fn shares(balancer: &Balancer, calls: usize, version: http::Version) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..calls {
        *counts.entry(call(balancer, version).await.unwrap()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn sequential_requests_to_equal_endpoints_spread_evenly() {
    let servers = [
        (server("a", Duration::ZERO).await, "a"),
        (server("b", Duration::ZERO).await, "b"),
        (server("c", Duration::ZERO).await, "c"),
    ];
    let (balancer, _updates) = balancer(&servers);
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let counts = shares(&balancer, 3000, version).await;
        for (pod, count) in &counts {
            assert!(
                (850..=1150).contains(count),
                "{version:?}: {pod} got {count} of 3000: {counts:?}"
            );
        }
    }
}

/// A server whose first `slow` answers take `warmup` each, like a freshly
/// started server filling its caches and thread pools, and later ones none.
async fn warming_server(name: &'static str, slow: usize, warmup: Duration) -> SocketAddr {
    let answered = Arc::new(AtomicUsize::new(0));
    serve(move |_request| {
        let answered = answered.clone();
        async move {
            if answered.fetch_add(1, Ordering::Relaxed) < slow {
                tokio::time::sleep(warmup).await;
            }
            Response::new(Full::new(Bytes::from(name)))
        }
    })
    .await
}

#[tokio::test]
async fn equal_endpoints_share_evenly_after_a_slow_start() {
    // One fresh server warms up slower than the others: its first answers
    // must not cost it its share for seconds.
    for (slow, warmup) in [(3, 8), (6, 5)] {
        let servers = [
            (warming_server("a", slow, Duration::from_millis(warmup)).await, "a"),
            (warming_server("b", 1, Duration::from_millis(1)).await, "b"),
            (warming_server("c", 1, Duration::from_millis(1)).await, "c"),
        ];
        let (balancer, _updates) = balancer(&servers);
        let counts = shares(&balancer, 3000, http::Version::HTTP_2).await;
        for (pod, count) in &counts {
            assert!(
                (850..=1150).contains(count),
                "{slow} answers of {warmup} ms first: {pod} got {count} of 3000: {counts:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_slow_endpoint_gets_less() {
    let servers = [
        (server("fast1", Duration::from_millis(1)).await, "fast1"),
        (server("fast2", Duration::from_millis(1)).await, "fast2"),
        (server("slow", Duration::from_millis(10)).await, "slow"),
    ];
    let (balancer, _updates) = balancer(&servers);
    let counts = shares(&balancer, 1000, http::Version::HTTP_2).await;
    // Probes and the decay of its estimate give it a few calls, far below
    // an even share of 333. On a loaded machine the fast ones' timings
    // jitter and the slow one gets more probes (24 and 45 seen in CI while
    // lab tests ran beside it), so the bound is under a third of an even
    // share: a balancer blind to latency fails it.
    assert!(counts.get("slow").copied().unwrap_or(0) <= 100, "{counts:?}");
}

#[tokio::test]
async fn no_endpoint_is_a_bounded_wait_then_unavailable() {
    let (balancer, _updates) = balancer(&[]);
    let started = Instant::now();
    let error = call(&balancer, http::Version::HTTP_2).await.unwrap_err();
    assert!(matches!(error, DispatchError::NoEndpoints { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_refusing_endpoint_is_skipped_and_the_request_retried() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let servers = [(closed, "gone"), (server("up", Duration::ZERO).await, "up")];
    let (balancer, _updates, registry) = observed_balancer(&servers);
    for _ in 0..20 {
        assert_eq!(call(&balancer, http::Version::HTTP_11).await.unwrap(), "up");
    }
    assert!(turned_away_count(&registry, "gone", "connect_failed") > 0);
}

/// `strait_requests_turned_away_total` for one pod and reason.
fn turned_away_count(registry: &prometheus_client::registry::Registry, pod: &str, reason: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|line| line.starts_with("strait_requests_turned_away_total{"))
        .filter(|line| line.contains(&format!("dst_pod=\"{pod}\"")))
        .filter(|line| line.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A server that echoes the request body.
async fn echo() -> SocketAddr {
    serve(|request: Request<Incoming>| async move {
        Response::new(Full::new(request.into_body().collect().await.unwrap().to_bytes()))
    })
    .await
}

/// Sends requests whose body's second half comes a little after the first
/// until `refusing` has turned one away (counted in `turned_away`), and
/// checks that each got the echo's answer, its body whole, and that the
/// refusal was counted with `reason`.
async fn every_request_reaches_the_echo(
    refusing: SocketAddr,
    turned_away: &AtomicUsize,
    version: http::Version,
    reason: &str,
) {
    let (balancer, _updates, registry) = observed_balancer(&[(refusing, "refusing"), (echo().await, "echo")]);
    for _ in 0..50 {
        let body = replay::two_part_body(b"hel", b"lo", tokio::time::sleep(Duration::from_millis(20)));
        let request = Request::post("http://web.demo:80/")
            .version(version)
            .body(body)
            .unwrap();
        let (backend, tracked) = balancer.dispatch(request, None).await.unwrap();
        assert_eq!(tracked.response.status(), StatusCode::OK, "{version:?}");
        let body = tracked.response.into_body().collect().await.unwrap().to_bytes();
        let from = backend.endpoint.addr;
        assert_eq!(&body[..], b"hello", "{version:?}: answered by {from}");
        if turned_away.load(Ordering::Relaxed) > 0 {
            assert!(turned_away_count(&registry, "refusing", reason) > 0, "{version:?}");
            return;
        }
    }
    panic!("{version:?}: the refusing endpoint was never tried");
}

#[tokio::test]
async fn a_request_its_application_never_saw_goes_to_another_endpoint_body_and_all() {
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        // A proxy in front of an application that is shutting down: it
        // answers at once, before the request body has all arrived.
        let turned_away = Arc::new(AtomicUsize::new(0));
        let counted = turned_away.clone();
        let draining = serve(move |_request| {
            counted.fetch_add(1, Ordering::Relaxed);
            async {
                let mut answer = Response::new(Full::new(Bytes::new()));
                *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                replay::mark_unprocessed(&mut answer);
                answer
            }
        })
        .await;
        every_request_reaches_the_echo(draining, &turned_away, version, "application_gone").await;
    }
}

/// An HTTP/2 server that resets every stream with REFUSED_STREAM.
async fn refusing_streams(turned_away: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let turned_away = turned_away.clone();
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(stream).await.unwrap();
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    turned_away.fetch_add(1, Ordering::Relaxed);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    addr
}

/// An HTTP/2 server, in raw frames, that answers the first request's
/// HEADERS with a GOAWAY whose last stream ID (0) leaves it out.
async fn going_away(turned_away: Arc<AtomicUsize>) -> SocketAddr {
    going_away_after(turned_away, 0).await
}

/// An HTTP/2 server, in raw frames, that answers the first request's
/// HEADERS with a GOAWAY (NO_ERROR) whose last stream ID is `last`; if that
/// keeps the request's stream (1), it then closes the connection without
/// answering.
async fn going_away_after(turned_away: Arc<AtomicUsize>, last: u8) -> SocketAddr {
    const PREFACE: usize = 24;
    const HEADERS: u8 = 1;
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let goaway = [0u8, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, last, 0, 0, 0, 0];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let turned_away = turned_away.clone();
            tokio::spawn(async move {
                stream.write_all(&settings).await.unwrap();
                let mut received = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(read @ 1..) = stream.read(&mut buffer).await else {
                        return;
                    };
                    received.extend_from_slice(&buffer[..read]);
                    // Walk the frames after the preface, looking for HEADERS.
                    let mut at = PREFACE;
                    let mut seen = false;
                    while at + 9 <= received.len() {
                        let length = usize::from(received[at]) << 16
                            | usize::from(received[at + 1]) << 8
                            | usize::from(received[at + 2]);
                        seen |= received[at + 3] == HEADERS;
                        at += 9 + length;
                    }
                    if seen {
                        break;
                    }
                }
                turned_away.fetch_add(1, Ordering::Relaxed);
                stream.write_all(&goaway).await.unwrap();
                if last > 0 {
                    // The request was kept, and may have been processed.
                    return;
                }
                // Read on until the client lets go.
                while matches!(stream.read(&mut buffer).await, Ok(1..)) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stream_refused_by_reset_or_goaway_goes_to_another_endpoint_body_and_all() {
    let turned_away = Arc::new(AtomicUsize::new(0));
    let refusing = refusing_streams(turned_away.clone()).await;
    every_request_reaches_the_echo(refusing, &turned_away, http::Version::HTTP_2, "stream_refused").await;

    let turned_away = Arc::new(AtomicUsize::new(0));
    let refusing = going_away(turned_away.clone()).await;
    every_request_reaches_the_echo(refusing, &turned_away, http::Version::HTTP_2, "stream_refused").await;
}

#[tokio::test]
async fn a_stream_its_only_endpoint_refused_is_reported_unprocessed() {
    // An inbound proxy in front of an application that shuts down: the
    // application's HTTP/2 server turns the stream away, and the inbound
    // proxy has no other endpoint. The client's proxy may send the request
    // elsewhere only if it hears that the application never saw it.
    for refusing in [refusing_streams(Arc::default()).await, going_away(Arc::default()).await] {
        let (balancer, _updates) = balancer(&[(refusing, "refusing")]);
        let error = call(&balancer, http::Version::HTTP_2).await.unwrap_err();
        assert!(matches!(error, DispatchError::Upstream { .. }), "{error}");
        assert!(error.is_unprocessed(), "{}", Chain(&error));
        // An HTTP client of the inbound proxy hears the same: try again.
        let status = crate::http::errors::ProxyError::from(error).status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // A stream the GOAWAY kept, on a connection that then closed without
    // an answer, may have been processed.
    let (closing, _updates) = balancer(&[(going_away_after(Arc::default(), 1).await, "closing")]);
    let error = call(&closing, http::Version::HTTP_2).await.unwrap_err();
    assert!(!error.is_unprocessed(), "{}", Chain(&error));
    let status = crate::http::errors::ProxyError::from(error).status();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // A stream the server reset for another reason may have been processed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(stream).await.unwrap();
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            });
        }
    });
    let (balancer, _updates) = balancer(&[(failing, "failing")]);
    let error = call(&balancer, http::Version::HTTP_2).await.unwrap_err();
    assert!(!error.is_unprocessed(), "{}", Chain(&error));
}

/// An HTTP/2 server that lets a client have `streams` streams open on a
/// connection, and answers only once `together` requests are in progress
/// at the same time.
async fn answering_together(streams: u32, together: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(together));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| {
                    let barrier = barrier.clone();
                    async move {
                        barrier.wait().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("together"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .max_concurrent_streams(streams)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_servers_stream_limit_opens_more_connections_instead_of_queueing() {
    for (streams, calls) in [(2, 6), (4, 9)] {
        let addr = answering_together(streams, calls).await;
        let (balancer, _updates) = balancer(&[(addr, "limited")]);
        let all = futures::future::join_all((0..calls).map(|_| call(&balancer, http::Version::HTTP_2)));
        let answers = tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .unwrap_or_else(|_| panic!("{calls} calls never ran at once: they queued behind a limit of {streams}"));
        assert!(
            answers.iter().all(|a| a.as_deref().ok() == Some("together")),
            "{answers:?}"
        );
        let view = balancer.view();
        let connections = view["endpoints"][0]["h2_connection_streams"].as_array().unwrap().len();
        assert_eq!(connections, calls.div_ceil(streams as usize), "{view}");
    }
}

/// An HTTP/1 server that answers the first request on each connection and
/// closes the connection when the second arrives, without answering: what a
/// server whose keep-alive timer fires just then does.
async fn closing_on_the_second() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buffer = [0u8; 4096];
                for request in 0.. {
                    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                        let Ok(read @ 1..) = stream.read(&mut buffer).await else {
                            return;
                        };
                        received.extend_from_slice(&buffer[..read]);
                    }
                    received.clear();
                    if request > 0 {
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn idempotent_requests_on_an_idle_connection_the_server_closed_are_sent_again() {
    let (balancer, _updates) = balancer(&[(closing_on_the_second().await, "stale")]);
    for method in [http::Method::GET, http::Method::PUT, http::Method::DELETE] {
        for _ in 0..3 {
            // Time for the last connection to go back to the pool.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let request = Request::builder()
                .method(method.clone())
                .uri("http://web.demo:80/")
                .body(Body::boxed(Empty::<Bytes>::new().map_err(|never| match never {})))
                .unwrap();
            let (_, tracked) = balancer.dispatch(request, None).await.unwrap();
            let body = tracked.response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok", "{method}");
        }
    }
    // A POST may have been acted on: it is never sent twice.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let post = Request::post("http://web.demo:80/")
        .body(Body::boxed(Full::new(Bytes::from("x")).map_err(|never| match never {})))
        .unwrap();
    let error = balancer.dispatch(post, None).await.map(|_| ()).unwrap_err();
    assert!(matches!(error, DispatchError::Upstream { .. }), "{error}");
}

/// A proxy whose application is still starting: it answers its first
/// `refusals` requests as never processed (the application refused the
/// connection), then `name`.
async fn starting_application(name: &'static str, refusals: usize) -> SocketAddr {
    let seen = Arc::new(AtomicUsize::new(0));
    serve(move |_request| {
        let seen = seen.clone();
        async move {
            if seen.fetch_add(1, Ordering::Relaxed) < refusals {
                let mut answer = Response::new(Full::new(Bytes::new()));
                *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                replay::mark_unprocessed(&mut answer);
                answer
            } else {
                Response::new(Full::new(Bytes::from(name)))
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_call_while_every_application_is_still_starting_waits_for_one() {
    let servers = [
        (starting_application("a", 2).await, "a"),
        (starting_application("b", 2).await, "b"),
        (starting_application("c", 2).await, "c"),
    ];
    let (mut balancer, _updates) = balancer(&servers);
    balancer.wait = Duration::from_secs(5);
    let answer = call(&balancer, http::Version::HTTP_2).await.unwrap();
    assert!(["a", "b", "c"].contains(&answer.as_str()), "{answer}");
}

/// Every call's future holds the dispatch future and copies it as it
/// starts, once per layer above it: it holds the request once and no
/// connect (boxed, as few calls connect). Before, 3,280 bytes, with three
/// layers of `async fn` each holding the whole future below.
#[tokio::test]
async fn a_dispatch_future_holds_no_connect_and_no_copy_of_the_request() {
    let (balancer, _updates) = balancer(&[("127.0.0.1:9".parse().unwrap(), "a")]);
    let target = Target::Balanced(Arc::new(balancer));
    let request = Request::builder()
        .uri("http://web.demo:80/")
        .body(Body::boxed(Empty::<Bytes>::new().map_err(|never| match never {})))
        .unwrap();
    let dispatch = target.dispatch(request);
    let size = std::mem::size_of_val(&dispatch);
    assert!(size <= 2560, "the dispatch future is {size} bytes");
}
