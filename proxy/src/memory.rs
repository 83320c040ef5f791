//! Giving memory back after a burst of connections. The system allocator
//! keeps what a burst freed for later use, so a proxy that once served
//! thousands of connections would keep their memory for good. Once many
//! connections have come and gone and the open ones have fallen well below
//! their peak, the freed pages are returned to the kernel.

use std::time::Duration;

use crate::drain::Drain;

/// Fewer finished connections than this are not worth a trim.
const BURST: u64 = 1024;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches the connections until the task is dropped.
pub async fn return_after_bursts(drain: Drain) {
    let mut since = Since::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let (open, finished) = (drain.open_connections(), drain.finished_connections());
        if since.should_trim(open, finished) {
            since = Since { peak: open, finished };
            // The trim walks the heap: off the thread that serves traffic.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// The connections since the last trim.
#[derive(Default)]
struct Since {
    /// The most open at once.
    peak: usize,
    /// The finished count at the last trim.
    finished: u64,
}

impl Since {
    fn should_trim(&mut self, open: usize, finished: u64) -> bool {
        self.peak = self.peak.max(open);
        finished - self.finished >= BURST && open <= self.peak / 2
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
    fn only_a_burst_that_has_passed_is_trimmed_after() {
        let mut since = Since::default();
        assert!(!since.should_trim(100, 100), "too few to matter");
        assert!(!since.should_trim(8_000, 5_000), "still busy");
        assert!(since.should_trim(100, 10_000));
        let mut churn = Since::default();
        assert!(churn.should_trim(0, 2_000), "many came and went, even a few at a time");
    }
}
