//! `strait-bench load`: our load generator for gRPC over HTTP/2, run inside a
//! lab pod. Closed loop keeps a fixed number of calls in flight; open loop
//! starts calls at a fixed rate whatever the server does, and measures each
//! call from when it was due, not from when it could be sent, so a stalled
//! server shows in the latencies instead of hiding in a slower send rate
//! (coordinated omission). Latencies go into an HDR histogram.

mod grpc;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;

use grpc::Channel;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// host:port of a gRPC server (the lab's `lab-app grpc-server`).
    #[arg(long)]
    pub to: String,
    /// HTTP/2 connections, calls spread over them in turn.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Closed loop: calls kept in flight. Open loop: the most allowed in
    /// flight before a due call is counted as dropped.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Open loop at this many calls per second (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Calls made before measuring, to open connections and warm caches.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Request payload bytes.
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    strait_contract::parse_duration(text).map_err(|e| e.to_string())
}

/// What the run saw; printed as one JSON line.
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
    dropped: u64,
    by_pod: BTreeMap<String, u64>,
    /// When each pod answered first and last (Unix milliseconds), to time
    /// endpoint changes against the EndpointSlice.
    seen: BTreeMap<String, (u128, u128)>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Tally {
            // 1 µs to 60 s, three significant digits.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ok: 0,
            errors: 0,
            dropped: 0,
            by_pod: BTreeMap::new(),
            seen: BTreeMap::new(),
            first_error: None,
        })
    }

    fn record(&mut self, outcome: Result<String, String>, micros: u64) {
        match outcome {
            Ok(pod) => {
                self.ok += 1;
                let _ = self.latency.record(micros.max(1));
                let now = unix_millis();
                self.seen.entry(pod.clone()).or_insert((now, now)).1 = now;
                *self.by_pod.entry(pod).or_default() += 1;
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

pub fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::connect(&args.to)
                .await
                .with_context(|| format!("connect to {}", args.to))?,
        );
    }
    let channels = Arc::new(channels);
    let payload = bytes::Bytes::from(vec![7u8; args.payload]);
    for i in 0..args.warmup {
        let _ = channels[i % channels.len()].unary(payload.clone()).await;
    }
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let started = Instant::now();
    match args.rate.filter(|r| *r > 0.0) {
        Some(rate) => open_loop(&args, rate, channels, payload, tally.clone()).await,
        None => closed_loop(&args, channels, payload, tally.clone()).await,
    }
    let seconds = started.elapsed().as_secs_f64();
    let tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let quantile = |q: f64| tally.latency.value_at_quantile(q);
    println!(
        "{}",
        json!({
            "ok": tally.ok,
            "errors": tally.errors,
            "dropped": tally.dropped,
            "seconds": seconds,
            "rps": tally.ok as f64 / seconds,
            "latency_us": {
                "p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99),
                "p999": quantile(0.999), "max": tally.latency.max(), "mean": tally.latency.mean(),
            },
            "by_pod": tally.by_pod,
            "seen_ms": tally.seen,
            "first_error": tally.first_error,
        })
    );
    Ok(())
}

/// `concurrency` workers, each calling again as soon as its call returns.
async fn closed_loop(args: &LoadArgs, channels: Arc<Vec<Channel>>, payload: bytes::Bytes, tally: Arc<Mutex<Tally>>) {
    let deadline = Instant::now() + args.duration;
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|worker| {
            let (channels, payload, tally) = (channels.clone(), payload.clone(), tally.clone());
            tokio::spawn(async move {
                let channel = &channels[worker % channels.len()];
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = channel.unary(payload.clone()).await;
                    let micros = sent.elapsed().as_micros() as u64;
                    tally
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(outcome, micros);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// Calls due every `1/rate` s; each one's latency counts from when it was due.
/// A thread of its own keeps the schedule: the runtime's timer ticks in
/// milliseconds, coarser than the gaps at these rates, while a sleeping
/// thread wakes within tens of microseconds.
async fn open_loop(
    args: &LoadArgs,
    rate: f64,
    channels: Arc<Vec<Channel>>,
    payload: bytes::Bytes,
    tally: Arc<Mutex<Tally>>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (args.duration.as_secs_f64() * rate) as u64;
    let in_flight = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let runtime = tokio::runtime::Handle::current();
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now();
        let mut calls = Vec::with_capacity(total as usize);
        for next in 0..total {
            let due = start + interval.mul_f64(next as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                tally.lock().unwrap_or_else(PoisonError::into_inner).dropped += 1;
                continue;
            };
            let channel = channels[next as usize % channels.len()].clone();
            let (payload, tally) = (payload.clone(), tally.clone());
            calls.push(runtime.spawn(async move {
                let outcome = channel.unary(payload).await;
                let micros = due.elapsed().as_micros() as u64;
                tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(outcome, micros);
                drop(permit);
            }));
        }
        calls
    });
    let calls = tokio::task::spawn_blocking(move || scheduler.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    for call in calls {
        let _ = call.await;
    }
}
