//! Giving memory back after a burst of connections. The system allocator
//! keeps what a burst freed for later use, so a proxy that once served
//! thousands of connections would keep their memory for good. Once many
//! connections have come and gone and the burst is over, the freed pages are
//! returned to the kernel.

use std::time::Duration;

use crate::drain::Drain;

/// Fewer finished connections than this are not worth a trim (a walk of
/// the heap, off the serving thread). A thousand mTLS connections held
/// and closed leave about 15 MB of freed heap (bench, held-connections), so
/// a quarter of that already leaves megabytes to give back.
const BURST: u64 = 256;
/// A second with fewer connections finishing than this is quiet.
const QUIET: u64 = 64;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches the connections until the task is dropped.
pub async fn return_after_bursts(drain: Drain) {
    let mut since = Since::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    // After a stall, one tick rather than a burst of catch-up ticks that
    // would read as quiet seconds in the middle of a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if since.should_trim(drain.finished_connections()) {
            // The trim walks the heap: off the thread that serves traffic.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Finished connections, counted since the start.
#[derive(Default)]
struct Since {
    /// At the last trim.
    trimmed: u64,
    /// At the last check.
    checked: u64,
    /// The last trim came in a quiet second that still had connections
    /// finishing: a lull inside a burst looks like its end, and what the
    /// rest of the burst frees would be kept. The first idle second after
    /// such a trim gives it back.
    settle: bool,
    /// A busy second (`QUIET` or more finishing) came since the last trim:
    /// only then is there a burst to give back. A steady trickle below
    /// that is never one, however many it adds up to.
    busy: bool,
}

impl Since {
    /// A trim is due once a burst of connections has come and gone: a busy
    /// second and many finished since the last trim, and hardly any in the
    /// last second; or, after a trim in a second that was quiet but not
    /// idle, at the first idle second if any finished since. At most two
    /// trims a burst, and none for a steady trickle.
    fn should_trim(&mut self, finished: u64) -> bool {
        let lately = finished - self.checked;
        self.checked = finished;
        let since_trim = finished - self.trimmed;
        self.busy |= lately >= QUIET;
        let burst_over = self.busy && since_trim >= BURST && lately < QUIET;
        let settled = self.settle && lately == 0 && since_trim > 0;
        let due = burst_over || settled;
        if due {
            self.trimmed = finished;
            self.settle = lately > 0;
            self.busy = false;
        }
        due
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

    #[test]
    fn a_trim_follows_a_burst_once_it_has_passed() {
        let mut since = Since::default();
        assert!(!since.should_trim(200), "too few to matter");
        assert!(!since.should_trim(5_000), "still busy");
        assert!(!since.should_trim(9_000), "still busy");
        assert!(since.should_trim(9_010), "quiet after the burst");
        assert!(!since.should_trim(9_020), "nothing new to give back");
        assert!(!since.should_trim(10_100), "a second burst, still going");
        assert!(since.should_trim(10_110), "and over");
    }

    #[test]
    fn a_thousand_connections_that_came_and_went_are_a_burst() {
        let mut since = Since::default();
        assert!(!since.should_trim(1_000), "still busy");
        assert!(since.should_trim(1_000), "and over: their memory is given back");
    }

    #[test]
    fn a_steady_trickle_is_never_a_burst() {
        let mut since = Since::default();
        for second in 1..=600 {
            assert!(!since.should_trim(second * 60), "second {second}");
        }
    }

    #[test]
    fn a_lull_inside_a_burst_is_followed_by_a_trim_once_the_burst_has_ended() {
        let mut since = Since::default();
        assert!(!since.should_trim(6_000), "busy");
        assert!(since.should_trim(6_030), "a lull looks like the end");
        assert!(!since.should_trim(6_500), "the burst goes on");
        assert!(!since.should_trim(6_600), "still going");
        assert!(since.should_trim(6_600), "the rest of it is given back once idle");
        assert!(!since.should_trim(6_600), "and nothing more after that");
        assert!(!since.should_trim(6_610), "a trickle is not worth a trim");
        assert!(!since.should_trim(6_610), "nor an idle second after it");
    }
}
