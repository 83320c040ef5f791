//! Logging at a bounded rate. A client that sends garbage on thousands of
//! connections must not turn the proxy's log into the thing that fills the
//! disk: each call site logs a few lines per second, and the next line it
//! logs says how many were left out in between.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// One call site's log rate limit: at most `per_second` lines in each
/// one-second window, counting the lines left out.
#[derive(Debug)]
pub struct LogThrottle {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle allowing `per_second` lines a second; `const`, so a call site
    /// can keep it in a `static`.
    pub const fn new(per_second: u32) -> Self {
        LogThrottle {
            per_second,
            state: Mutex::new(Window {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(left out since the last line)` when this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= WINDOW)
        {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged >= self.per_second {
            window.suppressed += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_rate_and_the_next_line_counts_what_was_left_out() {
        let throttle = LogThrottle::new(3);
        let start = Instant::now();
        let allowed: Vec<_> = (0..10).map(|_| throttle.allow_at(start)).collect();
        assert_eq!(&allowed[..4], &[Some(0), Some(0), Some(0), None]);
        assert_eq!(allowed.iter().flatten().count(), 3);
        assert_eq!(throttle.allow_at(start + WINDOW), Some(7));
        assert_eq!(throttle.allow_at(start + WINDOW), Some(0));
    }
}
