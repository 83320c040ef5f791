//! Giving memory back after a burst of traffic. The system allocator
//! keeps what a burst freed for later use, so a proxy that once served
//! thousands of connections, or thousands of calls at once on one
//! long-lived HTTP/2 connection (gRPC's usual shape), would keep their
//! memory for good. Once a burst is over, the freed pages are returned to
//! the kernel.

use std::time::Duration;

use crate::drain::Drain;

/// What makes a burst of one kind of traffic.
#[derive(Clone, Copy, Debug)]
struct Burst {
    /// Fewer than this since the last trim are not worth a trim (a walk of
    /// the heap, off the serving thread).
    worth: u64,
    /// A second with fewer than this is quiet, if it is also under a
    /// [`QUIET_SHARE`] of the busiest second since the last trim.
    quiet: u64,
}

/// A second is quiet only under this share (1/4) of the busiest second
/// since the last trim: a steady load whose count per second wanders
/// around `Burst::quiet` is not a burst that keeps ending.
const QUIET_SHARE: u64 = 4;

/// Connections finished. A thousand mTLS connections held and closed leave
/// about 15 MB of freed heap (bench, held-connections), so a quarter of
/// that already leaves megabytes to give back.
const CONNECTIONS: Burst = Burst { worth: 256, quiet: 64 };

/// HTTP requests received. Calls leave memory behind when many were in
/// flight at once: 10,000 calls/s on one connection, with a p99 of about
/// 10 ms, held up to 10 MB more than idle (bench, latency), which the next
/// scenario still found held. 1,000 calls/s leave little.
const REQUESTS: Burst = Burst {
    worth: 16_384,
    quiet: 1_024,
};

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches the traffic until the task is dropped.
pub async fn return_after_bursts(drain: Drain) {
    let mut traffic = Traffic::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    // After a stall, one tick rather than a burst of catch-up ticks that
    // would read as quiet seconds in the middle of a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if traffic.should_trim(drain.finished_connections(), drain.received_requests()) {
            // The trim walks the heap: off the thread that serves traffic.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Both kinds of traffic: a trim is due once either has had a burst, and
/// it counts for both (one trim gives back what both left).
#[derive(Debug)]
struct Traffic {
    connections: Since,
    requests: Since,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            connections: Since::new(CONNECTIONS),
            requests: Since::new(REQUESTS),
        }
    }
}

impl Traffic {
    /// Given the counts since the start, once a second.
    fn should_trim(&mut self, connections: u64, requests: u64) -> bool {
        // Both observe every second, whatever the other says.
        let due = self.connections.observe(connections) | self.requests.observe(requests);
        if due {
            self.connections.trimmed();
            self.requests.trimmed();
        }
        due
    }
}

/// One kind of traffic, counted since the start.
#[derive(Debug)]
struct Since {
    burst: Burst,
    /// At the last trim.
    trimmed: u64,
    /// At the last check.
    checked: u64,
    /// In the second before the last check.
    lately: u64,
    /// In the busiest second since the last trim. A busy second
    /// (`burst.quiet` or more) since the last trim is what makes a burst to
    /// give back ([`Since::busy`]): a steady trickle below that never is
    /// one, however much it adds up to.
    busiest: u64,
    /// The last trim came in a quiet second that still had traffic: a lull
    /// inside a burst looks like its end, and what the rest of the burst
    /// frees would be kept. The first idle second after such a trim gives
    /// it back.
    settle: bool,
}

impl Since {
    fn new(burst: Burst) -> Self {
        Since {
            burst,
            trimmed: 0,
            checked: 0,
            lately: 0,
            busiest: 0,
            settle: false,
        }
    }

    /// A busy second came since the last trim.
    fn busy(&self) -> bool {
        self.busiest >= self.burst.quiet
    }

    /// Whether a trim is due, given the count since the start: a burst has
    /// come and gone (a busy second and `burst.worth` since the last trim,
    /// and a quiet last second); or, after this kind's burst ended in a
    /// second that was quiet but not idle, the first idle second with any
    /// since. At most two trims a burst, and none for a steady load.
    fn observe(&mut self, count: u64) -> bool {
        self.lately = count - self.checked;
        self.checked = count;
        self.busiest = self.busiest.max(self.lately);
        let since_trim = count - self.trimmed;
        let quiet = self.lately < self.burst.quiet && self.lately * QUIET_SHARE <= self.busiest;
        let burst_over = self.busy() && since_trim >= self.burst.worth && quiet;
        let settled = self.settle && self.lately == 0 && since_trim > 0;
        burst_over || settled
    }

    /// A trim came at the last check. Only a kind that had a burst waits
    /// to settle: traffic of a kind that had none (a trickle beside the
    /// other's burst) would otherwise set off a trim at its next idle
    /// second, and so on, one kind's settling trim arming the other's.
    fn trimmed(&mut self) {
        self.trimmed = self.checked;
        self.settle = self.busy() && self.lately > 0;
        self.busiest = 0;
    }
}

#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it takes glibc's own locks
    // and only releases pages that are free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections only, as before requests were counted.
    fn connections(traffic: &mut Traffic, finished: u64) -> bool {
        traffic.should_trim(finished, 0)
    }

    #[test]
    fn a_trim_follows_a_burst_once_it_has_passed() {
        let mut t = Traffic::default();
        assert!(!connections(&mut t, 200), "too few to matter");
        assert!(!connections(&mut t, 5_000), "still busy");
        assert!(!connections(&mut t, 9_000), "still busy");
        assert!(connections(&mut t, 9_010), "quiet after the burst");
        assert!(!connections(&mut t, 9_020), "nothing new to give back");
        assert!(!connections(&mut t, 10_100), "a second burst, still going");
        assert!(connections(&mut t, 10_110), "and over");
    }

    #[test]
    fn a_thousand_connections_that_came_and_went_are_a_burst() {
        let mut t = Traffic::default();
        assert!(!connections(&mut t, 1_000), "still busy");
        assert!(connections(&mut t, 1_000), "and over: their memory is given back");
    }

    #[test]
    fn a_steady_trickle_is_never_a_burst() {
        let mut t = Traffic::default();
        for second in 1..=600 {
            assert!(!t.should_trim(second * 60, second * 1_000), "second {second}");
        }
    }

    #[test]
    fn a_lull_inside_a_burst_is_followed_by_a_trim_once_the_burst_has_ended() {
        let mut t = Traffic::default();
        assert!(!connections(&mut t, 6_000), "busy");
        assert!(connections(&mut t, 6_030), "a lull looks like the end");
        assert!(!connections(&mut t, 6_500), "the burst goes on");
        assert!(!connections(&mut t, 6_600), "still going");
        assert!(connections(&mut t, 6_600), "the rest of it is given back once idle");
        assert!(!connections(&mut t, 6_600), "and nothing more after that");
        assert!(!connections(&mut t, 6_610), "a trickle is not worth a trim");
        assert!(!connections(&mut t, 6_610), "nor an idle second after it");
    }

    /// gRPC's shape: one long-lived connection, no connection finishes, and
    /// the burst is in its calls (bench, latency: 10,000 calls/s for 8 s).
    #[test]
    fn a_burst_of_calls_on_one_connection_is_given_back() {
        let mut t = Traffic::default();
        let mut requests = 0;
        for second in 1..=8 {
            requests += 10_000;
            assert!(!t.should_trim(0, requests), "busy, second {second}");
        }
        assert!(t.should_trim(0, requests), "over: given back");
        assert!(!t.should_trim(0, requests), "nothing new to give back");
    }

    #[test]
    fn a_second_of_calls_below_a_burst_is_not_worth_a_trim() {
        let mut t = Traffic::default();
        assert!(!t.should_trim(0, 8_000), "8,000 calls in a busy second");
        assert!(!t.should_trim(0, 8_000), "quiet, but too few to matter");
    }

    #[test]
    fn one_trim_gives_back_what_both_kinds_left() {
        let mut t = Traffic::default();
        assert!(!t.should_trim(1_000, 20_000), "both busy");
        assert!(t.should_trim(1_000, 20_000), "both over: one trim");
        assert!(!t.should_trim(1_000, 20_000), "not a second one for the calls");
    }

    /// After one burst, a trickle of both kinds, taking turns: each trim
    /// must not arm the other kind's settling trim.
    #[test]
    fn a_trickle_of_both_kinds_after_a_burst_is_not_a_chain_of_trims() {
        let mut t = Traffic::default();
        assert!(!t.should_trim(1_000, 0), "a burst of connections");
        let (mut connections, mut requests, mut trims) = (1_000, 0, 0);
        for second in 1..=600 {
            if second % 2 == 0 {
                requests += 1;
            } else {
                connections += 1;
            }
            trims += u32::from(t.should_trim(connections, requests));
        }
        assert!(trims <= 2, "{trims} trims for one burst");
    }

    /// A steady load whose count wanders around the quiet threshold, as
    /// real traffic does, is not a burst that keeps ending.
    #[test]
    fn a_steady_load_that_wanders_around_the_threshold_is_never_a_burst() {
        let mut t = Traffic::default();
        let (mut connections, mut requests) = (0, 0);
        for second in 1..=600 {
            let (c, r) = if second % 3 == 0 { (70, 1_100) } else { (58, 950) };
            connections += c;
            requests += r;
            assert!(!t.should_trim(connections, requests), "second {second}");
        }
    }

    /// A burst still ends when its load drops to a trickle, not to nothing.
    #[test]
    fn a_burst_that_falls_to_a_trickle_is_over() {
        let mut t = Traffic::default();
        assert!(!t.should_trim(0, 20_000), "busy");
        assert!(t.should_trim(0, 20_100), "a trickle after it: over");
    }
}
