//! `strait-lab port-forward`: makes a server in the lab's node namespace
//! reachable from the host, as `kubectl port-forward` does. It listens on the
//! host's loopback, then joins the node namespace, where every connection it
//! makes goes. `strait-lab prometheus` starts one for Prometheus's UI and API;
//! `down` ends it with the rest of the lab.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use nix::sched::CloneFlags;
use tokio::net::{TcpListener, TcpStream};

use crate::paths::LabPaths;

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Where to listen on the host (port 0 picks a free one).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where to connect, in the lab's node namespace.
    #[arg(long)]
    pub to: SocketAddr,
    /// Where to write the address actually listened on.
    #[arg(long)]
    pub address_file: PathBuf,
}

/// Runs the forwarder; it must start single-threaded, since joining a
/// namespace only moves the calling thread (threads started later follow it).
pub fn forward_main(args: ForwardArgs, paths: &LabPaths) -> ExitCode {
    match forward(args, paths) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("strait-lab port-forward: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn forward(args: ForwardArgs, paths: &LabPaths) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| format!("listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let netns = format!("/run/netns/{}", paths.node_netns());
    let node = std::fs::File::open(&netns).with_context(|| format!("open {netns}: is the lab running?"))?;
    nix::sched::setns(&node, CloneFlags::CLONE_NEWNET).with_context(|| format!("join {netns}"))?;
    // Whoever waits for the file must never read it half written.
    crate::kubelet::volumes::write_atomically(&args.address_file, listener.local_addr()?.to_string().as_bytes())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let to = args.to;
            tokio::spawn(async move {
                match TcpStream::connect(to).await {
                    Ok(mut server) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    Err(error) => tracing::debug!(%to, %error, "cannot forward a connection"),
                }
            });
        }
    })
}
