//! lab-app: the applications the lab's tests and demo run in pods. Servers
//! and clients for raw TCP, HTTP/1, WebSocket and gRPC (with tonic), each
//! printing what it measured as JSON so tests can check it.

mod abuse;
mod destination;
mod grpc;
mod http;
mod identity;
mod mesh;
mod tcp;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "lab-app")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Echo every byte back; end of input is answered with end of output.
    TcpEcho(tcp::EchoArgs),
    /// Send random bytes to an echo server and check they come back intact.
    TcpSend(tcp::SendArgs),
    /// One connection kept open: echo round trips at an interval.
    TcpChat(tcp::ChatArgs),
    /// Many concurrent echo round trips.
    TcpMany(tcp::ManyArgs),
    /// Connect and report how the connection ends: refused, reset, closed, timeout or open.
    TcpProbe(tcp::ProbeArgs),
    /// GET a plain-HTTP URL and print the body.
    HttpGet(tcp::GetArgs),
    /// A server that speaks first (like MySQL or SMTP), then echoes.
    TcpGreeter(tcp::GreeterArgs),
    /// Connect silently and wait for the server's greeting.
    TcpGreeting(tcp::GreetingArgs),
    /// Send raw bytes and print the answer.
    TcpRaw(tcp::RawArgs),
    /// Ask the identity service for a certificate and report the answer.
    IdentityRequest(identity::RequestArgs),
    /// Probe a peer proxy's mesh port with a client certificate of one's choosing.
    MeshHandshake(mesh::HandshakeArgs),
    /// Ask the destination service about an address, with a client certificate of one's choosing or none.
    DestinationGet(destination::GetArgs),
    /// A gRPC server (tonic) whose replies name its pod.
    GrpcServer(grpc::ServerArgs),
    /// gRPC calls over one connection, counted by the pod that answered.
    GrpcClient(grpc::ClientArgs),
    /// An HTTP/1.1 server: pod name, echo, status codes, WebSocket echo.
    HttpServer(http::ServerArgs),
    /// HTTP/1.1 requests over one keep-alive connection, counted by pod.
    HttpClient(http::ClientArgs),
    /// WebSocket messages echoed and checked.
    WsClient(http::WsArgs),
    /// Misbehave on purpose (garbage, bad frames, slowloris, ...) and report the answer.
    Abuse(abuse::AbuseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lab-app: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::TcpEcho(args) => tcp::echo(args).await,
            Command::TcpSend(args) => tcp::send(args).await,
            Command::TcpChat(args) => tcp::chat(args).await,
            Command::TcpMany(args) => tcp::many(args).await,
            Command::TcpProbe(args) => tcp::probe(args).await,
            Command::HttpGet(args) => tcp::http_get(args).await,
            Command::TcpGreeter(args) => tcp::greeter(args).await,
            Command::TcpGreeting(args) => tcp::greeting(args).await,
            Command::TcpRaw(args) => tcp::raw(args).await,
            Command::IdentityRequest(args) => identity::request(args).await,
            Command::MeshHandshake(args) => mesh::handshake(args).await,
            Command::DestinationGet(args) => destination::get(args).await,
            Command::GrpcServer(args) => grpc::server(args).await,
            Command::GrpcClient(args) => grpc::client(args).await,
            Command::HttpServer(args) => http::server(args).await,
            Command::HttpClient(args) => http::client(args).await,
            Command::WsClient(args) => http::ws_client(args).await,
            Command::Abuse(args) => abuse::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lab-app: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A duration flag such as `500ms` or `2s`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    strait_contract::parse_duration(text).map_err(|e| e.to_string())
}
