//! HTTP/1.1 server and client, and a WebSocket echo, for the HTTP tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// `GET /` names the pod; `POST /echo` streams the body back; `/status/N`
/// answers N; `/sleep/N` answers after N milliseconds; `/headers` returns
/// the request headers as JSON; `/ws` is a WebSocket echo.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", args.port))
        .await
        .with_context(|| format!("listen on {}", args.port))?;
    println!("http listening on {}", args.port);
    let pod = hostname();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pod = pod.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, pod.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn respond(mut request: Request<Incoming>, pod: String) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let mut response = if path == "/ws" {
        websocket(&mut request)
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut response = Response::new(full(format!("status {code}\n")));
        *response.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        response
    } else if let Some(millis) = path.strip_prefix("/sleep/").and_then(|n| n.parse::<u64>().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(millis.min(60_000))).await;
        Response::new(full(format!("slept {millis} ms\n")))
    } else if path == "/headers" {
        let headers: BTreeMap<String, String> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        Response::new(full(json!(headers).to_string()))
    } else if path == "/echo" {
        // The body streams back as it arrives (chunked).
        let body = request.into_body();
        let stream = futures::stream::unfold(body, |mut body| async move {
            match body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => Some((Ok::<_, hyper::Error>(Frame::data(data)), body)),
                    Err(_) => Some((Ok(Frame::data(Bytes::new())), body)),
                },
                Err(error) => Some((Err(error), body)),
            }
        });
        Response::new(StreamBody::new(stream).boxed_unsync())
    } else {
        Response::new(full(pod.clone()))
    };
    response.headers_mut().insert(
        "x-pod",
        header::HeaderValue::from_str(&pod).unwrap_or(header::HeaderValue::from_static("")),
    );
    Ok(response)
}

/// Accepts a WebSocket upgrade and echoes every message.
fn websocket(request: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        let mut response = Response::new(full("expected a WebSocket upgrade\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// host:port of the server.
    #[arg(long)]
    to: String,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// POST this many bytes to the path (an echo is checked).
    #[arg(long)]
    post_bytes: Option<usize>,
    /// Send the POST body chunked, in pieces.
    #[arg(long)]
    chunked: bool,
    /// Ask for 100-continue before sending the body.
    #[arg(long)]
    expect_continue: bool,
    /// Also print a JSON line with the answers by pod after every N requests.
    #[arg(long)]
    report_every: Option<usize>,
    /// Requests per second (default: one after another, as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Give every request its own random path (under --path) and a random
    /// header, as a crawler or an attacker would.
    #[arg(long)]
    random_paths: bool,
}

/// Requests over ONE keep-alive connection; counts answers by pod.
pub async fn client(args: ClientArgs) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&args.to)
        .await
        .with_context(|| format!("connect to {}", args.to))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    let (mut by_pod, mut by_status) = (BTreeMap::<String, usize>::new(), BTreeMap::<u16, usize>::new());
    let mut echo_mismatches = 0;
    let mut window = BTreeMap::<String, usize>::new();
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| std::time::Duration::from_secs_f64(1.0 / r));
    let mut next = Instant::now();
    for i in 0..args.requests {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
        }
        sender.ready().await.context("the connection closed")?;
        let payload: Option<Vec<u8>> = args.post_bytes.map(|n| (0..n).map(|b| ((b + i) % 251) as u8).collect());
        let mut builder = if args.random_paths {
            let nonce: u64 = rand::random();
            Request::builder()
                .uri(format!("{}/{nonce:016x}", args.path.trim_end_matches('/')))
                .header(format!("x-random-{:x}", nonce % 4096), format!("{nonce}"))
        } else {
            Request::builder().uri(&args.path)
        }
        .header(header::HOST, &args.to);
        let body = match &payload {
            None => full(Bytes::new()),
            Some(bytes) if args.chunked => {
                let pieces: Vec<Result<Frame<Bytes>, hyper::Error>> = bytes
                    .chunks(4096)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                StreamBody::new(futures::stream::iter(pieces)).boxed_unsync()
            }
            Some(bytes) => full(bytes.clone()),
        };
        if payload.is_some() {
            builder = builder.method("POST");
        }
        if args.expect_continue {
            builder = builder.header(header::EXPECT, "100-continue");
        }
        let response = sender.send_request(builder.body(body)?).await?;
        let status = response.status().as_u16();
        let pod = response
            .headers()
            .get("x-pod")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.into_body().collect().await?.to_bytes();
        if payload.as_ref().is_some_and(|p| p.as_slice() != body.as_ref()) {
            echo_mismatches += 1;
        }
        *by_pod.entry(pod.clone()).or_default() += 1;
        *by_status.entry(status).or_default() += 1;
        if let Some(every) = args.report_every {
            *window.entry(pod).or_default() += 1;
            if (i + 1) % every == 0 {
                println!(
                    "{}",
                    json!({"window": i / every, "by_pod": window, "elapsed": started.elapsed().as_secs_f64()})
                );
                window.clear();
            }
        }
    }
    drop(sender);
    let _ = connection.await;
    println!(
        "{}",
        json!({"requests": args.requests, "by_pod": by_pod, "by_status": by_status, "echo_mismatches": echo_mismatches, "seconds": started.elapsed().as_secs_f64()})
    );
    if echo_mismatches > 0 {
        bail!("{echo_mismatches} echoes differ from what was sent");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct WsArgs {
    /// host:port of the server.
    #[arg(long)]
    to: String,
    #[arg(long, default_value_t = 100)]
    messages: usize,
}

/// Sends text and binary messages over a WebSocket and checks each echo.
pub async fn ws_client(args: WsArgs) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&args.to)
        .await
        .with_context(|| format!("connect to {}", args.to))?;
    let url = format!("ws://{}/ws", args.to);
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("WebSocket handshake")?;
    let mut echoed = 0;
    for i in 0..args.messages {
        let message = if i % 2 == 0 {
            Message::text(format!("message {i}"))
        } else {
            Message::binary(vec![(i % 251) as u8; 1000 + i])
        };
        socket.send(message.clone()).await?;
        match socket.next().await {
            Some(Ok(reply)) if reply == message => echoed += 1,
            other => bail!("message {i} came back as {other:?}"),
        }
    }
    socket.close(None).await?;
    println!(
        "{}",
        json!({"messages": args.messages, "echoed": echoed, "status": response.status().as_u16()})
    );
    Ok(())
}
