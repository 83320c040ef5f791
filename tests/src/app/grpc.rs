//! gRPC server and client (tonic), for balancing, streaming and status tests.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::parse_duration;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};

pub mod proto {
    tonic::include_proto!("strait.lab");
}

use proto::lab_client::LabClient;
use proto::lab_server::{Lab, LabServer};
use proto::{Reply, Request as LabRequest, StreamRequest};

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Time each unary call takes (slow pods have more).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    delay: Duration,
    /// CPU each unary call burns, in microseconds.
    #[arg(long, default_value_t = 0)]
    work_micros: u64,
    /// Fails this percentage of unary calls, at random, with UNAVAILABLE.
    #[arg(long, default_value_t = 0)]
    fail_percent: u32,
    /// Fails every unary call with UNAVAILABLE while this file exists
    /// (`{pod}` in the path stands for the pod's name).
    #[arg(long)]
    fail_while: Option<String>,
}

struct Service {
    pod: String,
    delay: Duration,
    work: Duration,
    fail_percent: u32,
    fail_while: Option<std::path::PathBuf>,
}

impl Service {
    /// One unary call, for Unary and Admin alike.
    async fn call(&self, request: LabRequest) -> Result<Response<Reply>, Status> {
        if request.fail_code != 0 {
            return Err(Status::new(Code::from(request.fail_code), request.fail_message));
        }
        if self.fail_while.as_ref().is_some_and(|f| f.exists()) {
            return Err(Status::unavailable(format!("{} is failing on purpose", self.pod)));
        }
        if self.fail_percent > 0 && rand::random_range(0..100) < self.fail_percent {
            return Err(Status::unavailable(format!("{} failed this call on purpose", self.pod)));
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if !self.work.is_zero() {
            burn(self.work);
        }
        Ok(Response::new(Reply {
            pod: self.pod.clone(),
            received_bytes: request.payload.len() as u64,
            payload: request.payload,
            sequence: 0,
        }))
    }
}

/// Burns CPU for `work`, as a real handler's computation would.
fn burn(work: Duration) {
    let until = Instant::now() + work;
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..1000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<Reply, Status>> + Send>>;

#[tonic::async_trait]
impl Lab for Service {
    async fn unary(&self, request: Request<LabRequest>) -> Result<Response<Reply>, Status> {
        self.call(request.into_inner()).await
    }

    async fn admin(&self, request: Request<LabRequest>) -> Result<Response<Reply>, Status> {
        self.call(request.into_inner()).await
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, request: Request<StreamRequest>) -> Result<Response<ReplyStream>, Status> {
        let StreamRequest { count, size } = request.into_inner();
        let pod = self.pod.clone();
        let stream = futures::stream::iter(0..u64::from(count)).map(move |sequence| {
            Ok(Reply {
                pod: pod.clone(),
                payload: vec![(sequence % 251) as u8; size as usize],
                sequence,
                received_bytes: 0,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(&self, request: Request<Streaming<LabRequest>>) -> Result<Response<Reply>, Status> {
        let mut stream = request.into_inner();
        let mut received = 0u64;
        while let Some(message) = stream.next().await {
            received += message?.payload.len() as u64;
        }
        Ok(Response::new(Reply {
            pod: self.pod.clone(),
            payload: Vec::new(),
            sequence: 0,
            received_bytes: received,
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(&self, request: Request<Streaming<LabRequest>>) -> Result<Response<ReplyStream>, Status> {
        let pod = self.pod.clone();
        let stream = request.into_inner().enumerate().map(move |(sequence, message)| {
            let message = message?;
            Ok(Reply {
                pod: pod.clone(),
                received_bytes: message.payload.len() as u64,
                payload: message.payload,
                sequence: sequence as u64,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// gRPC's largest messages in the tests are 16 MiB.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let service = Service {
        pod: hostname(),
        delay: args.delay,
        work: Duration::from_micros(args.work_micros),
        fail_percent: args.fail_percent,
        fail_while: args.fail_while.map(|path| path.replace("{pod}", &hostname()).into()),
    };
    println!("grpc listening on {}", args.port);
    let lab = LabServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // Like a production gRPC server, SIGTERM is a graceful stop: no new
    // connections or calls, the ones in flight finish.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Server::builder()
        .add_service(lab)
        .serve_with_shutdown(([0, 0, 0, 0], args.port).into(), async move {
            terminate.recv().await;
        })
        .await
        .context("gRPC server")
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// host:port of the server.
    #[arg(long)]
    to: String,
    /// unary, server-stream, client-stream or bidi.
    #[arg(long, default_value = "unary")]
    mode: String,
    /// Calls to make (unary), or messages (streams).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Calls in flight at once, all on the one connection.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Keep calling until this much time has passed (instead of --calls).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Calls per second across all workers, or messages per second on a
    /// stream (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Ask the server to fail each call with this status code.
    #[arg(long, default_value_t = 0)]
    fail_code: i32,
    #[arg(long, default_value = "")]
    fail_message: String,
    /// Give each call this deadline (sent as grpc-timeout).
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Also print a JSON line with the answers by pod after every N calls.
    #[arg(long)]
    report_every: Option<usize>,
    /// The unary method to call: Unary or Admin.
    #[arg(long, default_value = "Unary")]
    method: String,
    /// Metadata to send with each call, as NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((name.to_ascii_lowercase(), value.to_string()))
}

/// What the client saw, printed as one JSON line.
#[derive(Default)]
struct Tally {
    ok: usize,
    by_pod: BTreeMap<String, usize>,
    by_status: BTreeMap<String, usize>,
    messages: Vec<String>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn record(&mut self, result: Result<String, Status>, latency: Duration) {
        self.latencies.push(latency);
        match result {
            Ok(pod) => {
                self.ok += 1;
                *self.by_pod.entry(pod).or_default() += 1;
                *self.by_status.entry("OK".into()).or_default() += 1;
            }
            Err(status) => {
                *self.by_status.entry(format!("{:?}", status.code())).or_default() += 1;
                if self.messages.len() < 5 {
                    self.messages.push(status.message().to_string());
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.by_pod {
            *self.by_pod.entry(k).or_default() += v;
        }
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        self.messages.extend(other.messages);
        self.latencies.extend(other.latencies);
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.sort();
        let index = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

async fn connect(to: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{to}"))?.connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.with_context(|| format!("connect to {to}"))
}

fn client_of(channel: Channel) -> LabClient<Channel> {
    LabClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

pub async fn client(args: ClientArgs) -> anyhow::Result<()> {
    // One channel is one HTTP/2 connection: every call shares it.
    let channel = connect(&args.to).await?;
    let started = Instant::now();
    let mut tally = match args.mode.as_str() {
        "unary" => unary_calls(&args, channel).await,
        "server-stream" => {
            let mut tally = Tally::default();
            let begun = Instant::now();
            let result = server_stream(client_of(channel), args.calls as u32, args.payload as u32).await;
            tally.record(result, begun.elapsed());
            tally
        }
        "client-stream" | "bidi" => {
            let mut tally = Tally::default();
            let begun = Instant::now();
            let pace = args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
            let result = stream_upload(client_of(channel), &args.mode, args.calls, args.payload, pace).await;
            tally.record(result, begun.elapsed());
            tally
        }
        other => bail!("unknown mode {other:?}: use unary, server-stream, client-stream or bidi"),
    };
    let seconds = started.elapsed().as_secs_f64();
    let total: usize = tally.by_status.values().sum();
    println!(
        "{}",
        json!({
            "calls": total,
            "ok": tally.ok,
            "by_pod": tally.by_pod,
            "by_status": tally.by_status,
            "messages": tally.messages,
            "seconds": seconds,
            "p50_ms": tally.percentile(0.5),
            "p99_ms": tally.percentile(0.99),
        })
    );
    Ok(())
}

/// Answers by pod in consecutive windows of calls, printed as they fill.
struct Windows {
    size: usize,
    state: std::sync::Mutex<(usize, usize, BTreeMap<String, usize>)>,
    started: Instant,
}

impl Windows {
    fn record(&self, pod: Option<&str>) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (window, count, by_pod) = &mut *state;
        *by_pod.entry(pod.unwrap_or("error").to_string()).or_default() += 1;
        *count += 1;
        if *count == self.size {
            println!(
                "{}",
                json!({"window": *window, "by_pod": by_pod, "elapsed": self.started.elapsed().as_secs_f64()})
            );
            *window += 1;
            *count = 0;
            by_pod.clear();
        }
    }
}

async fn unary_calls(args: &ClientArgs, channel: Channel) -> Tally {
    let windows = std::sync::Arc::new(args.report_every.map(|size| Windows {
        size,
        state: std::sync::Mutex::new((0, 0, BTreeMap::new())),
        started: Instant::now(),
    }));
    let deadline = args.duration.map(|d| Instant::now() + d);
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(if deadline.is_some() {
        usize::MAX
    } else {
        args.calls
    }));
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let mut client = client_of(channel.clone());
            let budget = budget.clone();
            let request = LabRequest {
                payload: vec![7; args.payload],
                fail_code: args.fail_code,
                fail_message: args.fail_message.clone(),
            };
            let call_deadline = args.deadline;
            let windows = windows.clone();
            let admin = args.method.eq_ignore_ascii_case("admin");
            let headers = args.headers.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut next = Instant::now();
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let taken = budget.fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |b| b.checked_sub(1),
                    );
                    if taken.is_err() {
                        break;
                    }
                    if let Some(interval) = interval {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                    }
                    let mut call = Request::new(request.clone());
                    if let Some(timeout) = call_deadline {
                        call.set_timeout(timeout);
                    }
                    for (name, value) in &headers {
                        if let (Ok(name), Ok(value)) =
                            (tonic::metadata::MetadataKey::from_bytes(name.as_bytes()), value.parse())
                        {
                            call.metadata_mut().insert(name, value);
                        }
                    }
                    let begun = Instant::now();
                    let answer = async {
                        if admin {
                            client.admin(call).await
                        } else {
                            client.unary(call).await
                        }
                    };
                    // A call that never answers must not hang the client.
                    let result = match tokio::time::timeout(Duration::from_secs(30), answer).await {
                        Ok(result) => result.map(|r| r.into_inner().pod),
                        Err(_) => Err(Status::deadline_exceeded("no answer within 30s")),
                    };
                    if let Some(windows) = windows.as_ref() {
                        windows.record(result.as_ref().ok().map(String::as_str));
                    }
                    tally.record(result, begun.elapsed());
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        if let Ok(part) = worker.await {
            tally.merge(part);
        }
    }
    tally
}

/// Receives `count` messages and checks their order and size.
async fn server_stream(mut client: LabClient<Channel>, count: u32, size: u32) -> Result<String, Status> {
    let mut stream = client.server_stream(StreamRequest { count, size }).await?.into_inner();
    let (mut received, mut pod) = (0u64, String::new());
    while let Some(reply) = stream.message().await? {
        if reply.sequence != received || reply.payload.len() != size as usize {
            return Err(Status::data_loss(format!(
                "message {received} arrived as {} with {} bytes",
                reply.sequence,
                reply.payload.len()
            )));
        }
        received += 1;
        pod = reply.pod;
    }
    if received != u64::from(count) {
        return Err(Status::data_loss(format!("{received} of {count} messages arrived")));
    }
    Ok(pod)
}

/// Sends `count` messages of `size` bytes, `pace` apart if given, on one
/// stream; for bidi, checks each echo.
async fn stream_upload(
    mut client: LabClient<Channel>,
    mode: &str,
    count: usize,
    size: usize,
    pace: Option<Duration>,
) -> Result<String, Status> {
    let outgoing = futures::stream::iter(0..count).then(move |i| async move {
        if let (Some(pace), true) = (pace, i > 0) {
            tokio::time::sleep(pace).await;
        }
        LabRequest {
            payload: vec![(i % 251) as u8; size],
            fail_code: 0,
            fail_message: String::new(),
        }
    });
    if mode == "client-stream" {
        let reply = client.client_stream(outgoing).await?.into_inner();
        if reply.received_bytes != (count * size) as u64 {
            return Err(Status::data_loss(format!(
                "server received {} of {} bytes",
                reply.received_bytes,
                count * size
            )));
        }
        return Ok(reply.pod);
    }
    let mut replies = client.bidi(outgoing).await?.into_inner();
    let (mut received, mut pod) = (0usize, String::new());
    while let Some(reply) = replies.message().await? {
        if reply.payload.len() != size || reply.payload.first().is_some_and(|b| *b != (received % 251) as u8) {
            return Err(Status::data_loss(format!("echo {received} differs")));
        }
        received += 1;
        pod = reply.pod;
    }
    if received != count {
        return Err(Status::data_loss(format!("{received} of {count} echoes arrived")));
    }
    Ok(pod)
}
