//! Simulated proxies for the `destination` scenario (runs in a pod): each
//! opens its own mutually authenticated connection to the destination
//! service, as a proxy does, and follows two destinations on it: one
//! Service of its own (`--addresses`, in turn) and the Service all of them
//! follow (`--hot`). It prints JSON lines:
//!
//! - `{"storm": {...}}` once every subscription has its first snapshot (or
//!   `--within` ran out): how long that took from opening them all at once;
//! - `{"endpoint": A, "received_unix_ns": [...]}` each time a new endpoint
//!   of the hot Service has reached every simulated proxy (one time each);
//! - `{"done": {...}}` after `--changes` such endpoints, with how many
//!   messages the own-Service subscriptions got meanwhile (none is right:
//!   a change reaches only the subscribers of its Service).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use strait_api::client::Target;
use strait_api::destination::v1::destination_client::DestinationClient;
use strait_api::destination::v1::{GetDestination, update};
use tokio::sync::mpsc;
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// host:port of the destination service.
    #[arg(long)]
    to: String,
    /// The mesh's trust anchors (PEM): the service is verified against them.
    #[arg(long)]
    anchors: PathBuf,
    /// The issuer (certificate, PEM) that signs the simulated proxies'
    /// certificate…
    #[arg(long)]
    issuer_cert: PathBuf,
    /// …and its key (PKCS#8 PEM, as the control plane writes it).
    #[arg(long)]
    issuer_key: PathBuf,
    /// The SPIFFE ID the simulated proxies present.
    #[arg(long)]
    client_id: String,
    /// How many simulated proxies (connections).
    #[arg(long)]
    proxies: usize,
    /// A file of Service addresses (ClusterIP:port), one per line: proxy i
    /// follows line i mod their number.
    #[arg(long)]
    addresses: PathBuf,
    /// The Service address every proxy follows.
    #[arg(long)]
    hot: String,
    /// How many new endpoints of the hot Service to wait for.
    #[arg(long)]
    changes: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    within: u64,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// What the subscriptions tell the main task.
enum Event {
    /// A subscription's first message arrived, this long after the storm began.
    First(Duration),
    /// A subscription could not be opened, or broke.
    Failed(String),
    /// Proxy `proxy` learnt of the hot Service's endpoint `address`.
    Hot { proxy: usize, address: String, at: u128 },
}

pub async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    let tls = Arc::new(client_config(&args)?);
    let target = Target::parse(&args.to)?;
    let addresses: Vec<String> = std::fs::read_to_string(&args.addresses)
        .with_context(|| format!("read {}", args.addresses.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!addresses.is_empty(), "{} lists no address", args.addresses.display());

    let own_messages = Arc::new(AtomicU64::new(0));
    let (events, mut received) = mpsc::unbounded_channel();
    let started = Instant::now();
    for proxy in 0..args.proxies {
        let channel = channel(&target, tls.clone())?;
        let own = addresses[proxy % addresses.len()].clone();
        tokio::spawn(follow(
            channel.clone(),
            own,
            None,
            own_messages.clone(),
            events.clone(),
            started,
        ));
        tokio::spawn(follow(
            channel,
            args.hot.clone(),
            Some(proxy),
            own_messages.clone(),
            events.clone(),
            started,
        ));
    }
    drop(events);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.within);
    let subscriptions = 2 * args.proxies;

    // The storm: every subscription's first snapshot.
    let (mut firsts, mut failures) = (Vec::with_capacity(subscriptions), Vec::new());
    let mut early: Vec<Event> = Vec::new();
    while firsts.len() + failures.len() < subscriptions {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(Event::First(after))) => firsts.push(after.as_secs_f64() * 1000.0),
            Ok(Some(Event::Failed(problem))) => failures.push(problem),
            Ok(Some(hot)) => early.push(hot),
            Ok(None) | Err(_) => break,
        }
    }
    firsts.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        firsts
            .get(((firsts.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
    };
    println!(
        "{}",
        json!({"storm": {
            "proxies": args.proxies,
            "subscriptions": subscriptions,
            "with_first_snapshot": firsts.len(),
            "all_ms": firsts.last(),
            "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99),
            "failed": failures.len(),
            "first_failure": failures.first(),
        }})
    );
    own_messages.store(0, Ordering::SeqCst);
    println!("{}", json!({"ready": true}));

    // The changes: each new endpoint of the hot Service, once per proxy.
    let mut seen: HashMap<String, HashMap<usize, u128>> = HashMap::new();
    let mut complete: HashSet<String> = HashSet::new();
    let mut initial: HashSet<String> = HashSet::new();
    let record = |event: Event, seen: &mut HashMap<String, HashMap<usize, u128>>| {
        if let Event::Hot { proxy, address, at } = event {
            seen.entry(address).or_default().entry(proxy).or_insert(at);
        }
    };
    for event in early {
        record(event, &mut seen);
    }
    // What every proxy already had from its snapshot is not a change.
    initial.extend(seen.keys().cloned());
    seen.clear();
    let mut broken = 0usize;
    while complete.len() < args.changes {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(Event::Failed(_))) => broken += 1,
            Ok(Some(event)) => {
                record(event, &mut seen);
                for (address, by_proxy) in &seen {
                    if by_proxy.len() == args.proxies && !initial.contains(address) && complete.insert(address.clone())
                    {
                        let times: Vec<u128> = by_proxy.values().copied().collect();
                        println!("{}", json!({"endpoint": address, "received_unix_ns": times}));
                    }
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    println!(
        "{}",
        json!({"done": {
            "changes_seen_by_all": complete.len(),
            "own_service_messages": own_messages.load(Ordering::SeqCst),
            "broken_subscriptions": broken,
        }})
    );
    Ok(())
}

/// Follows `address` on `channel` until the process ends. `hot` names the
/// proxy when this is the hot Service, whose endpoints are reported; the
/// others count their messages after the first.
async fn follow(
    channel: Channel,
    address: String,
    hot: Option<usize>,
    own_messages: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<Event>,
    started: Instant,
) {
    let mut client = DestinationClient::new(channel);
    let mut updates = match client
        .get(GetDestination {
            address: address.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = events.send(Event::Failed(format!(
                "{address}: {}: {}",
                status.code(),
                status.message()
            )));
            return;
        }
    };
    let mut first = true;
    while let Some(message) = updates.next().await {
        let Ok(message) = message else { break };
        if std::mem::take(&mut first) {
            let _ = events.send(Event::First(started.elapsed()));
        } else if hot.is_none() {
            own_messages.fetch_add(1, Ordering::Relaxed);
        }
        let Some(proxy) = hot else { continue };
        let at = unix_ns();
        let endpoints = match message.kind {
            Some(update::Kind::Snapshot(snapshot)) => snapshot.endpoints,
            Some(update::Kind::Add(add)) => add.endpoints,
            _ => Vec::new(),
        };
        for endpoint in endpoints {
            let _ = events.send(Event::Hot {
                proxy,
                address: endpoint.address,
                at,
            });
        }
    }
    let _ = events.send(Event::Failed(format!("{address}: the stream ended")));
}

/// A leaf for `--client-id` from the issuer, and the anchors to verify the
/// service with; ALPN h2.
fn client_config(args: &SubscribeArgs) -> anyhow::Result<rustls::ClientConfig> {
    let read = |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()));
    let issuer_pem = read(&args.issuer_cert)?;
    let issuer = Issuer::from_ca_cert_pem(&issuer_pem, KeyPair::from_pem(&read(&args.issuer_key)?)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(args.client_id.as_str().try_into()?)];
    let leaf = params.signed_by(&key, &issuer)?;
    let mut chain = vec![leaf.der().clone()];
    chain.extend(CertificateDer::pem_slice_iter(issuer_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?);
    let mut roots = rustls::RootCertStore::empty();
    for anchor in CertificateDer::pem_slice_iter(read(&args.anchors)?.as_bytes()) {
        roots.add(anchor?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One lazily made connection to the service over mutual TLS.
fn channel(target: &Target, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Channel> {
    Ok(target
        .endpoint()?
        .connect_timeout(Duration::from_secs(30))
        .connect_with_connector_lazy(target.connector(move || Ok(tls.clone()))))
}

/// A thousand connections need more descriptors than the usual soft limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
