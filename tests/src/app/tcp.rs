//! Raw TCP servers and clients.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngCore;
use serde_json::json;

use crate::parse_duration;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Ports to listen on (repeatable).
    #[arg(long = "port", default_value = "7000", action = clap::ArgAction::Append)]
    ports: Vec<u16>,
}

pub async fn echo(args: EchoArgs) -> anyhow::Result<()> {
    let mut servers = tokio::task::JoinSet::new();
    for port in args.ports {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("listen on {port}"))?;
        println!("echo listening on {port}");
        servers.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    let _ = writer.shutdown().await;
                });
            }
        });
    }
    servers.join_next().await;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// host:port
    #[arg(long)]
    to: String,
    /// How many random bytes to send.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: usize,
}

/// Sends `bytes` random bytes while reading the echo, half-closes, reads to
/// the end, and compares checksums of what went out and what came back.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let stream = TcpStream::connect(&args.to)
        .await
        .with_context(|| format!("connect to {}", args.to))?;
    let (mut reader, mut writer) = stream.into_split();
    let total = args.bytes;
    let sender = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            rand::rng().fill_bytes(&mut chunk[..n]);
            hash.update(&chunk[..n]);
            writer.write_all(&chunk[..n]).await?;
            left -= n;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(hex(&hash.finalize()))
    });
    let mut hash = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    let sent_hash = sender.await??;
    let received_hash = hex(&hash.finalize());
    let same = sent_hash == received_hash && received == total;
    println!(
        "{}",
        json!({"sent": total, "received": received, "sha256_sent": sent_hash, "sha256_received": received_hash, "match": same, "seconds": started.elapsed().as_secs_f64()})
    );
    if !same {
        bail!("the echo differs from what was sent");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// host:port of an echo server.
    #[arg(long)]
    to: String,
    /// Round trips to make on the one connection.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Pause between round trips.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

/// A long-lived connection: one echo round trip every `interval`, each
/// checked, then a clean close. Fails on the first lost or changed byte.
pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(&args.to)
        .await
        .with_context(|| format!("connect to {}", args.to))?;
    let (mut sent, mut echoed) = (vec![0u8; args.size], vec![0u8; args.size]);
    for message in 0..args.messages {
        if message > 0 {
            tokio::time::sleep(args.interval).await;
        }
        rand::rng().fill_bytes(&mut sent);
        stream
            .write_all(&sent)
            .await
            .with_context(|| format!("send message {message}"))?;
        stream
            .read_exact(&mut echoed)
            .await
            .with_context(|| format!("read the echo of message {message}"))?;
        if sent != echoed {
            bail!("the echo of message {message} differs from what was sent");
        }
    }
    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.context("read to the close")?;
    println!(
        "{}",
        json!({"messages": args.messages, "ok": true, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ManyArgs {
    #[arg(long)]
    to: String,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    #[arg(long, default_value_t = 1024)]
    bytes: usize,
    /// Keep every connection open until all are established, so they are
    /// truly concurrent.
    #[arg(long)]
    hold: bool,
}

/// `host:port`'s first address, looked up once for all the connections a
/// kind makes: the connections are what is measured, not thousands of
/// lookups at once (a burst of UDP queries can lose an answer).
pub async fn resolve(to: &str) -> anyhow::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(to)
        .await
        .with_context(|| format!("look up {to}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{to} has no address"))
}

pub async fn many(args: ManyArgs) -> anyhow::Result<()> {
    let to = resolve(&args.to).await?;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(if args.hold { args.connections } else { 1 }));
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            let (bytes, barrier, hold) = (args.bytes, barrier.clone(), args.hold);
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(to).await?;
                if hold {
                    barrier.wait().await;
                }
                let payload: Vec<u8> = (0..bytes).map(|b| (b + i) as u8).collect();
                stream.write_all(&payload).await?;
                stream.shutdown().await?;
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await?;
                Ok::<bool, std::io::Error>(back == payload)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        match task.await {
            Ok(Ok(true)) => ok += 1,
            _ => failed += 1,
        }
    }
    println!(
        "{}",
        json!({"connections": args.connections, "ok": ok, "failed": failed})
    );
    if failed > 0 {
        bail!("{failed} of {} connections failed", args.connections);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[arg(long)]
    to: String,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
}

/// How a connection attempt ends, and how long that took.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut error = None;
    let mut failed = |e: std::io::Error, outcome: &'static str| {
        error = Some(e.to_string());
        outcome
    };
    let outcome = match tokio::time::timeout(args.timeout, TcpStream::connect(&args.to)).await {
        Err(_) => "timeout",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        // A reset that beats the connect's completion is reported by it.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Ok(Err(e)) => failed(e, "error"),
        Ok(Ok(mut stream)) => {
            let mut buf = [0u8; 1];
            match tokio::time::timeout(args.timeout, stream.read(&mut buf)).await {
                Err(_) => "open",
                Ok(Ok(0)) => "closed",
                Ok(Ok(_)) => "data",
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
                Ok(Err(e)) => failed(e, "error"),
            }
        }
    };
    println!(
        "{}",
        json!({"outcome": outcome, "error": error, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    url: String,
}

/// A plain HTTP/1.1 GET with no dependencies beyond the socket.
pub async fn http_get(args: GetArgs) -> anyhow::Result<()> {
    let rest = args.url.strip_prefix("http://").context("only http:// URLs")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connect to {authority}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("{status}");
    }
    print!("{body}");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GreeterArgs {
    #[arg(long = "port", default_value = "3306", action = clap::ArgAction::Append)]
    ports: Vec<u16>,
}

/// A server that speaks first, as MySQL and SMTP do: a greeting on
/// connect, then an echo.
pub async fn greeter(args: GreeterArgs) -> anyhow::Result<()> {
    let mut servers = tokio::task::JoinSet::new();
    for port in args.ports {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("listen on {port}"))?;
        println!("greeter listening on {port}");
        servers.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if stream.write_all(b"220 lab greeter ready\r\n").await.is_err() {
                        return;
                    }
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    let _ = writer.shutdown().await;
                });
            }
        });
    }
    servers.join_next().await;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GreetingArgs {
    #[arg(long)]
    to: String,
}

/// Connects without sending anything and waits for the server's greeting.
pub async fn greeting(args: GreetingArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(&args.to)
        .await
        .with_context(|| format!("connect to {}", args.to))?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .context("no greeting within 10s")??;
    let greeting = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    println!(
        "{}",
        json!({"greeting": greeting, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct RawArgs {
    #[arg(long)]
    to: String,
    /// What to send, with \r and \n escapes.
    #[arg(long)]
    send: String,
}

/// Sends raw bytes, half-closes, and prints what came back before the close.
pub async fn raw(args: RawArgs) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(&args.to)
        .await
        .with_context(|| format!("connect to {}", args.to))?;
    let payload = args.send.replace("\\r", "\r").replace("\\n", "\n");
    stream.write_all(payload.as_bytes()).await?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let closed = matches!(read, Ok(Ok(_)));
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_string();
    println!("{}", json!({"status_line": status, "closed": closed, "response": text}));
    Ok(())
}
