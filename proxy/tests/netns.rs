//! The proxy binary in a throwaway network namespace with real iptables
//! redirects: original destinations (IPv4 and IPv6), connect failures and
//! graceful shutdown. Needs root; skips loudly elsewhere, never under STRAIT_CI.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
        if !is_root {
            assert!(
                std::env::var_os("STRAIT_CI").is_none(),
                "STRAIT_CI is set but the tests do not run as root"
            );
            eprintln!("SKIPPED: {tag} needs root (network namespaces and iptables)");
            return None;
        }
        let name = format!("strait-proxy-test-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        let ns = Netns(name);
        ns.sh(
            "ip link set lo up
             ip link add v0 type veth peer name v1
             ip addr add 198.18.200.1/24 dev v0 && ip addr add 198.18.200.2/24 dev v1
             ip -6 addr add fd00:200::1/64 dev v0 nodad && ip -6 addr add fd00:200::2/64 dev v1 nodad
             ip link set v0 up && ip link set v1 up
             for t in iptables ip6tables; do
               $t -t nat -A OUTPUT -p tcp -m owner ! --uid-owner 2102 -m tcp --dport 7000:7010 -j REDIRECT --to-ports 4140
             done",
        );
        Some(ns)
    }

    fn sh(&self, script: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-ec", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the proxy as uid 2102, as the sidecar runs.
    fn proxy(&self, env: &[(&str, &str)]) -> Child {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "setpriv",
                "--reuid=2102",
                "--regid=2102",
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_strait-proxy"))
            .env("STRAIT_ADMIN_ADDR", "127.0.0.1:4191")
            .env("STRAIT_INBOUND_ADDRS", "127.0.0.1:4143")
            .env("STRAIT_LOG_LEVEL", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs `body` on a runtime whose sockets live in this namespace.
    fn run<F: Future<Output = ()>>(&self, body: impl FnOnce() -> F + Send) {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(body());
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if get("/ready").await.is_some_and(|body| body.starts_with("HTTP/1.0 200")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("proxy not ready within 10s");
}

/// A minimal HTTP/1.0 GET against the admin port; the response as text.
async fn get(path: &str) -> Option<String> {
    let mut stream = TcpStream::connect("127.0.0.1:4191").await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The value of the one sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

async fn round_trip(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    back
}

#[test]
fn original_destinations_are_recovered_for_ipv4_and_ipv6() {
    let Some(ns) = Netns::new("origdst") else {
        return;
    };
    let _proxy = Killed(ns.proxy(&[]));
    ns.run(|| async {
        wait_ready().await;
        for addr in ["198.18.200.2:7000", "[fd00:200::2]:7001"] {
            let addr: SocketAddr = addr.parse().unwrap();
            echo_server(addr).await;
            let payload = format!("hello {addr}").into_bytes();
            assert_eq!(round_trip(addr, &payload).await, payload, "through the proxy to {addr}");
        }
        let metrics = get("/metrics").await.unwrap();
        assert_eq!(
            sample(&metrics, "strait_tcp_open_total{direction=\"outbound\""),
            Some(2.0),
            "{metrics}"
        );
    });
}

#[test]
fn a_refused_upstream_closes_the_client_promptly() {
    let Some(ns) = Netns::new("refused") else {
        return;
    };
    let _proxy = Killed(ns.proxy(&[]));
    ns.run(|| async {
        wait_ready().await;
        let started = Instant::now();
        let mut stream = TcpStream::connect("198.18.200.2:7005")
            .await
            .expect("the redirect accepts");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "expected close or reset within 1s, got {read:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        let metrics = get("/metrics").await.unwrap();
        let errors = "strait_tcp_connect_errors_total{direction=\"outbound\",reason=\"refused\"}";
        assert_eq!(sample(&metrics, errors), Some(1.0), "{metrics}");
        assert_eq!(
            sample(&metrics, "strait_tcp_open_connections{direction=\"outbound\""),
            Some(0.0),
            "{metrics}"
        );
    });
}

#[test]
fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let Some(ns) = Netns::new("drain") else {
        return;
    };
    let mut proxy = Killed(ns.proxy(&[("STRAIT_SHUTDOWN_GRACE", "20s")]));
    let pid = proxy.0.id();
    ns.run(|| async {
        wait_ready().await;
        let addr: SocketAddr = "198.18.200.2:7002".parse().unwrap();
        echo_server(addr).await;
        let mut open = TcpStream::connect(addr).await.unwrap();
        open.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        open.read_exact(&mut buf).await.unwrap();

        // `ip netns exec` execs, so the child's pid is the proxy's.
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while get("/ready").await.is_some_and(|r| r.starts_with("HTTP/1.0 200")) {
            assert!(Instant::now() < deadline, "still ready after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Readiness drops first; the listeners close right after. From then
        // on a new connection is refused, while the open one still works.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "new connections still accepted 5s into draining"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        open.write_all(b"after!").await.unwrap();
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!");
        open.shutdown().await.unwrap();
        let mut rest = Vec::new();
        open.read_to_end(&mut rest).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            assert!(status.success(), "proxy exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit once its last connection closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
