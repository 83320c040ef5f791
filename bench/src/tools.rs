//! Small measuring tools run inside lab pods: the connection rate through
//! a path, and how long a proxy takes from start to ready.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn parse_duration(text: &str) -> Result<Duration, String> {
    strait_contract::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// host:port of an echo server.
    #[arg(long)]
    to: String,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Connections opened at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// New connections per second: each connects, echoes one byte, and closes
/// with a reset.
///
/// An orderly close leaves the closing socket in TIME_WAIT for 60 s, and
/// every hop of a meshed path closes from its client side (the application's
/// socket and the outbound proxy's in the client pod, the inbound proxy's in
/// the server pod): after about 28,000 connections (Linux's ephemeral port
/// range) `connect` finds no free port and the rate measured is how fast
/// TIME_WAIT ports come free, direct path included (7,900/s for 3 s,
/// 670-880/s for 10 s). A reset leaves no TIME_WAIT, and the proxies pass it
/// on as a reset, so no hop keeps one either.
pub async fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    // Resolved once, as a client would: a lookup per connection would
    // measure the lab's DNS server on the paths named by Service, not the
    // proxies, and not the direct path, which is given an address.
    let to = tokio::net::lookup_host(&args.to)
        .await
        .with_context(|| format!("resolving {}", args.to))?
        .next()
        .with_context(|| format!("{} has no address", args.to))?;
    let deadline = Instant::now() + args.duration;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            tokio::spawn(async move {
                let (mut done, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let round_trip = async {
                        let mut stream = TcpStream::connect(to).await?;
                        stream.set_nodelay(true)?;
                        stream.write_all(b"x").await?;
                        let mut byte = [0u8; 1];
                        stream.read_exact(&mut byte).await?;
                        stream.set_zero_linger()?;
                        std::io::Result::Ok(())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), round_trip).await {
                        Ok(Ok(())) => done += 1,
                        _ => failed += 1,
                    }
                }
                (done, failed)
            })
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for worker in workers {
        let (d, f) = worker.await?;
        done += d;
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"connections": done, "failed": failed, "seconds": seconds, "per_second": done as f64 / seconds})
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StartupArgs {
    /// How many starts to time.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Run the proxy of the image unpacked here (`chroot` into it, as the
    /// proxy's user) instead of `strait-proxy` from PATH.
    #[arg(long)]
    root: Option<std::path::PathBuf>,
}

/// Starts `strait-proxy` (no identity, so no certificate to wait for) on
/// spare ports `runs` times and times each from spawn to `/ready`.
pub async fn startup(args: StartupArgs) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let mut command = match &args.root {
            Some(root) => {
                let mut command = tokio::process::Command::new("/usr/sbin/chroot");
                command
                    .arg(format!(
                        "--userspec={uid}:{uid}",
                        uid = strait_contract::names::PROXY_UID
                    ))
                    .arg(root)
                    .arg("/usr/local/bin/strait-proxy")
                    .env_clear();
                command
            }
            None => tokio::process::Command::new("strait-proxy"),
        };
        let mut proxy = command
            .env("STRAIT_OUTBOUND_ADDRS", "127.0.0.1:14140")
            .env("STRAIT_INBOUND_ADDRS", "127.0.0.1:14143")
            .env("STRAIT_ADMIN_ADDR", "127.0.0.1:14191")
            .env("STRAIT_LOG_LEVEL", "warn")
            .env_remove("STRAIT_IDENTITY_ADDR")
            .kill_on_drop(true)
            .spawn()
            .context("run strait-proxy")?;
        let ready = loop {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("strait-proxy was not ready within 10s");
            }
            if let Ok(mut stream) = TcpStream::connect("127.0.0.1:14191").await {
                stream
                    .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await?;
                if answer.starts_with(b"HTTP/1.1 200") {
                    break started.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        times.push(ready.as_secs_f64() * 1000.0);
        proxy.kill().await?;
        let _ = proxy.wait().await;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"runs": times.len(), "p50_ms": times[times.len() / 2], "min_ms": times[0], "max_ms": times[times.len() - 1]})
    );
    Ok(())
}
