//! Clients that misbehave on purpose, for the hardening tests: each sends
//! one kind of bad input and prints, as JSON, how the other end answered.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::RngCore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ANSWER_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// 64 KiB of random bytes, then end of input.
    Garbage,
    /// The HTTP/2 preface, then a SETTINGS frame of an impossible length.
    BadH2Frame,
    /// A gRPC call whose metadata is over the proxy's header limit.
    HugeGrpcMetadata,
    /// The first half of a TLS ClientHello, then silence.
    TruncatedHello,
    /// A TLS ClientHello whose server name is 16 KiB long.
    HugeSni,
    /// An HTTP/1 request line, then a header trickled one byte a second.
    Slowloris,
    /// Connections opened and dropped, some after a few bytes.
    Abandon,
    /// Connections opened, one echo round trip each, then held open.
    Hold,
}

#[derive(Debug, clap::Args)]
pub struct AbuseArgs {
    /// host:port
    #[arg(long)]
    to: String,
    #[arg(long, value_enum)]
    kind: Kind,
    /// Connections, for `abandon` and `hold`.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// How many at once, for `abandon`.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// How long `slowloris` trickles at most, and `hold` holds.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    seconds: Duration,
}

pub async fn run(args: AbuseArgs) -> anyhow::Result<()> {
    let report = match args.kind {
        Kind::Garbage => {
            let mut bytes = vec![0u8; 64 * 1024];
            rand::rng().fill_bytes(&mut bytes);
            send_and_watch(&args.to, &bytes, true).await?
        }
        Kind::BadH2Frame => {
            let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            // SETTINGS (type 4) with a 7-byte payload: a FRAME_SIZE_ERROR.
            bytes.extend_from_slice(&[0, 0, 7, 4, 0, 0, 0, 0, 0]);
            bytes.extend_from_slice(&[0; 7]);
            let mut report = send_and_watch(&args.to, &bytes, false).await?;
            report["goaway"] = json!(has_goaway(report["reply"].as_str().unwrap_or_default()));
            report
        }
        Kind::HugeGrpcMetadata => huge_grpc_metadata(&args.to).await?,
        Kind::TruncatedHello => {
            let hello = client_hello("web.demo.serviceaccount.identity.cluster.local");
            send_and_watch(&args.to, &hello[..hello.len() / 2], false).await?
        }
        Kind::HugeSni => send_and_watch(&args.to, &client_hello(&"a".repeat(16 * 1024)), false).await?,
        Kind::Slowloris => slowloris(&args.to, args.seconds).await?,
        Kind::Abandon => abandon(&args.to, args.connections, args.concurrency).await?,
        Kind::Hold => return hold(&args.to, args.connections, args.seconds).await,
    };
    println!("{report}");
    Ok(())
}

/// Sends `bytes` (then end of input, if `half_close`) and reads what comes
/// back until the other end closes or stops answering.
async fn send_and_watch(to: &str, bytes: &[u8], half_close: bool) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(to)
        .await
        .with_context(|| format!("connect to {to}"))?;
    let sent = stream.write_all(bytes).await.is_ok();
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut reply)).await;
    let (closed, reset) = match read {
        Ok(Ok(_)) => (true, false),
        Ok(Err(_)) => (true, true),
        Err(_) => (false, false),
    };
    Ok(json!({
        "sent": sent,
        "closed": closed,
        "reset": reset,
        "reply_bytes": reply.len(),
        "reply": hex(&reply[..reply.len().min(4096)]),
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a server's HTTP/2 bytes (hex) hold a GOAWAY frame.
fn has_goaway(reply_hex: &str) -> bool {
    let bytes: Vec<u8> = (0..reply_hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&reply_hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
        if bytes[at + 3] == 7 {
            return true;
        }
        at += 9 + length;
    }
    false
}

/// A TLS 1.3 ClientHello for `server_name` offering the mesh protocol,
/// written out by hand so its fields can be out of bounds.
fn client_hello(server_name: &str) -> Vec<u8> {
    fn with_len16(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    let mut extensions = Vec::new();
    let mut extension = |kind: u16, body: Vec<u8>| {
        extensions.extend_from_slice(&kind.to_be_bytes());
        extensions.extend(with_len16(&body));
    };
    let mut name = vec![0u8];
    name.extend(with_len16(server_name.as_bytes()));
    extension(0, with_len16(&name));
    let alpn = b"strait.io/mesh/1";
    let mut protocols = vec![alpn.len() as u8];
    protocols.extend_from_slice(alpn);
    extension(16, with_len16(&protocols));
    extension(43, vec![2, 3, 4]); // supported_versions: TLS 1.3
    extension(10, with_len16(&[0, 29])); // supported_groups: x25519
    extension(13, with_len16(&[4, 3, 8, 7])); // signature_algorithms
    let mut share = vec![0, 29, 0, 32];
    share.extend_from_slice(&[7; 32]);
    extension(51, with_len16(&share)); // key_share
    let mut hello = vec![3, 3];
    hello.extend_from_slice(&[1; 32]); // random
    hello.push(0); // session id
    hello.extend(with_len16(&[0x13, 0x01])); // TLS_AES_128_GCM_SHA256
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend(with_len16(&extensions));
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    // Records of at most 16 KiB each, as TLS allows.
    let mut records = Vec::new();
    for chunk in handshake.chunks(16 * 1024) {
        records.extend_from_slice(&[22, 3, 1]);
        records.extend(with_len16(chunk));
    }
    records
}

/// A gRPC call with 100 KiB of metadata.
async fn huge_grpc_metadata(to: &str) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(to)
        .await
        .with_context(|| format!("connect to {to}"))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{to}/lab.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-big", "m".repeat(100 * 1024))
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))?;
    let response = sender.send_request(request).await.context("the call")?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.context("the reply")?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    let header = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(json!({
        "status": status,
        "grpc_status": header("grpc-status"),
        "grpc_message": header("grpc-message"),
        "proxy_error": header("strait-proxy-error"),
    }))
}

/// Sends a request line, then one header byte a second, until the other
/// end closes or `limit` has passed.
async fn slowloris(to: &str, limit: Duration) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(to)
        .await
        .with_context(|| format!("connect to {to}"))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ").await?;
    let started = Instant::now();
    let mut trickled = 0;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        if started.elapsed() >= limit {
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {
                if stream.write_all(b"x").await.is_err() {
                    break true;
                }
                trickled += 1;
            }
        }
    };
    let text = String::from_utf8_lossy(&reply);
    Ok(json!({
        "closed": closed,
        "trickled_bytes": trickled,
        "status_line": text.lines().next().unwrap_or_default(),
    }))
}

/// Opens `total` connections, `concurrency` at a time, and drops each: a
/// third at once, a third after half a request line, a third after a
/// whole request whose answer is never read.
async fn abandon(to: &str, total: usize, concurrency: usize) -> anyhow::Result<Value> {
    let to = crate::tcp::resolve(to).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let (mut opened, mut failed) = (0usize, 0usize);
    for i in 0..total {
        if tasks.len() >= concurrency {
            match tasks.join_next().await {
                Some(Ok(true)) => opened += 1,
                _ => failed += 1,
            }
        }
        tasks.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(to).await else {
                return false;
            };
            match i % 3 {
                0 => {}
                1 => {
                    let _ = stream.write_all(b"GET /aband").await;
                }
                _ => {
                    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
                }
            }
            true
        });
    }
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(true) => opened += 1,
            _ => failed += 1,
        }
    }
    Ok(json!({"opened": opened, "failed": failed}))
}

/// Opens `total` connections to an echo server, does one round trip on
/// each, prints a line once all are open, and holds them for `seconds`.
async fn hold(to: &str, total: usize, seconds: Duration) -> anyhow::Result<()> {
    let to = crate::tcp::resolve(to).await?;
    let mut held = Vec::with_capacity(total);
    for _ in 0..total {
        let mut stream = TcpStream::connect(to)
            .await
            .with_context(|| format!("connect to {to}"))?;
        stream.write_all(b"hello\n").await?;
        let mut echo = [0u8; 6];
        tokio::time::timeout(ANSWER_WAIT, stream.read_exact(&mut echo))
            .await
            .context("no echo")??;
        held.push(stream);
    }
    println!("{}", json!({"held": held.len()}));
    tokio::time::sleep(seconds).await;
    Ok(())
}
