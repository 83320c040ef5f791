//! Giving memory back after a burst of connections. The system allocator
//! keeps what a burst freed for later use, so a proxy that once held
//! thousands of connections would keep their memory for good. When the open
//! connections fall well below their recent peak, the freed pages are
//! returned to the kernel.

use std::time::Duration;

use crate::drain::Drain;

/// Bursts smaller than this are not worth a trim.
const BURST: usize = 256;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches the open connections until the task is dropped.
pub async fn return_after_bursts(drain: Drain) {
    let mut peak = 0;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let open = drain.open_connections();
        peak = peak.max(open);
        if should_trim(peak, open) {
            peak = open;
            // The trim walks the heap: off the thread that serves traffic.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

fn should_trim(peak: usize, open: usize) -> bool {
    peak >= BURST && open <= peak / 4
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
        assert!(!should_trim(100, 0), "too small to matter");
        assert!(!should_trim(10_000, 5_000), "still busy");
        assert!(should_trim(10_000, 100));
    }
}
