//! Giving memory back after a burst of connections. The system allocator
//! keeps what a burst freed for later use, so a proxy that once served
//! thousands of connections would keep their memory for good. Once many
//! connections have come and gone and the burst is over, the freed pages are
//! returned to the kernel.

use std::time::Duration;

use crate::drain::Drain;

/// Fewer finished connections than this are not worth a trim.
const BURST: u64 = 1024;
/// A second with fewer connections finishing than this is quiet.
const QUIET: u64 = 64;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches the connections until the task is dropped.
pub async fn return_after_bursts(drain: Drain) {
    let mut since = Since::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
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
}

impl Since {
    /// A trim is due once a burst of connections has come and gone: many
    /// finished since the last trim, and hardly any in the last second.
    fn should_trim(&mut self, finished: u64) -> bool {
        let lately = finished - self.checked;
        self.checked = finished;
        let due = finished - self.trimmed >= BURST && lately < QUIET;
        if due {
            self.trimmed = finished;
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
        assert!(!since.should_trim(500), "too few to matter");
        assert!(!since.should_trim(5_000), "still busy");
        assert!(!since.should_trim(9_000), "still busy");
        assert!(since.should_trim(9_010), "quiet after the burst");
        assert!(!since.should_trim(9_020), "nothing new to give back");
        assert!(!since.should_trim(10_100), "a second burst, still going");
        assert!(since.should_trim(10_110), "and over");
    }
}
