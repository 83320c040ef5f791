//! The application beside the proxy, as the pod's network namespace shows
//! it: a port it listens on, or a connection it has open through the proxy.
//!
//! A proxy that is a regular container (a cluster without native sidecars)
//! gets SIGTERM together with the application, which may still serve its
//! last requests and make calls while it shuts down. Such a proxy keeps
//! serving until the application shows neither for a quiet moment.

use std::collections::HashSet;
use std::time::Duration;
use strait_contract::Chain;

use tokio::time::Instant;

use crate::listener::ConnectionLimit;
use crate::throttle::LogThrottle;

/// How often the application is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long it must show nothing before it counts as stopped: an
/// application between two calls still gets to make the second.
const QUIET: Duration = Duration::from_secs(1);
/// The kernel's tables of the namespace's TCP sockets.
const TCP_TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// The `st` column of a listening socket.
const LISTEN: &str = "0A";

static UNREADABLE: LogThrottle = LogThrottle::new(1);

/// The application as seen from the pod's network namespace: its listening
/// sockets in `/proc/net/tcp{,6}` and its open outbound connections.
pub struct Application {
    /// The proxy's own listening ports, which are not the application's.
    own_ports: HashSet<u16>,
    /// The application's connections out through the proxy.
    outbound: ConnectionLimit,
}

impl Application {
    /// The application beside a proxy that listens on `own_ports` (which are
    /// therefore not the application's); `outbound` counts the application's
    /// connections out through the proxy.
    pub fn new(own_ports: impl IntoIterator<Item = u16>, outbound: ConnectionLimit) -> Self {
        Application {
            own_ports: own_ports.into_iter().collect(),
            outbound,
        }
    }

    /// Resolves once the application has stopped: once it has shown
    /// nothing for `QUIET`. An application that shows nothing at first may
    /// be about to make its last calls, so that wait applies too.
    pub async fn stopped(&self) {
        let mut quiet_since = None;
        loop {
            tokio::time::sleep(POLL).await;
            let now = Instant::now();
            if self.running() {
                quiet_since = None;
            } else if now - *quiet_since.get_or_insert(now) >= QUIET {
                return;
            }
        }
    }

    /// Whether the application listens on a port or has a connection open.
    fn running(&self) -> bool {
        self.outbound.open() > 0 || self.listens()
    }

    /// Whether something other than the proxy listens on a port in this
    /// network namespace.
    fn listens(&self) -> bool {
        TCP_TABLES.iter().any(|table| match std::fs::read_to_string(table) {
            Ok(text) => listening(&text).any(|port| !self.own_ports.contains(&port)),
            // No IPv6 in the namespace: no table.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                if let Some(suppressed) = UNREADABLE.allow() {
                    tracing::warn!(table, error = %Chain(&error), suppressed, "cannot read the socket table");
                }
                false
            }
        })
    }
}

/// The local ports of the listening sockets in a `/proc/net/tcp` table:
/// after a header line, `sl local_address rem_address st ...`, with the
/// address as hex `IP:PORT`.
fn listening(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != LISTEN {
            return None;
        }
        let (_, port) = local.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:102C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  2102        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:C351 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0200A8C6:C351 0300A8C6:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn listening_sockets_are_read_from_the_kernel_table() {
        let ports: Vec<u16> = listening(TABLE).collect();
        assert_eq!(ports, [4140, 50001], "an established connection is not listening");
        assert_eq!(listening("header only\n").count(), 0);
        assert_eq!(listening("header\n garbage\n 0: nonsense\n").count(), 0);
    }

    /// An application in this test's namespace: every port counts as the
    /// proxy's, since other tests listen alongside.
    fn application() -> (Application, ConnectionLimit) {
        let outbound = ConnectionLimit::new(10, Counter::default());
        (Application::new(1..=u16::MAX, outbound.clone()), outbound)
    }

    #[tokio::test(start_paused = true)]
    async fn an_application_that_shows_nothing_has_stopped_after_a_quiet_second() {
        let (app, _) = application();
        let started = tokio::time::Instant::now();
        app.stopped().await;
        let waited = started.elapsed();
        assert!(waited >= QUIET && waited <= QUIET + POLL, "{waited:?} (paused clock)");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_connection_keeps_the_application_running_until_a_quiet_second_after_it() {
        let (app, outbound) = application();
        let connection = outbound.admit().unwrap();
        let started = tokio::time::Instant::now();
        let closed = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(connection);
        };
        tokio::join!(app.stopped(), closed);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) + QUIET && waited <= Duration::from_secs(3) + QUIET + 2 * POLL,
            "stopped {waited:?} after the start (paused clock)"
        );
    }
}
