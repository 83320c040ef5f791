//! How every place in the proxy that tries again does so: one [`Policy`].
//!
//! - [`Policy::Immediate`]: a bounded number of attempts, one right after
//!   another, for a request or connection that may go elsewhere at once
//!   (another endpoint of a Service, or a fresh connection).
//! - [`Policy::Backoff`]: endless attempts with delays between them, for
//!   reaching the control plane or the API server. Delays grow
//!   exponentially from `first`, doubling up to `max`, each jittered so that
//!   a fleet of proxies waiting for the same service does not retry in
//!   step. backon's jitter adds up to the delay again, so its delays run
//!   from half of ours: each delay falls between half and all of the
//!   exponential value, and never beyond `max` (a proxy whose certificate
//!   is running out must not sleep through the service's return).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How many times to try, and how long to wait between tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Up to this many attempts in all (the first one included), with no
    /// delay between them.
    Immediate(usize),
    /// Attempts without end, `first` apart at first, doubling up to `max`
    /// apart, jittered.
    Backoff {
        /// The delay before the second attempt, before jitter.
        first: Duration,
        /// The longest delay between two attempts.
        max: Duration,
    },
}

impl Policy {
    /// The attempts, numbered from 0: `0..n` for [`Policy::Immediate`],
    /// endless for [`Policy::Backoff`].
    pub fn attempts(&self) -> std::ops::Range<usize> {
        match *self {
            Policy::Immediate(attempts) => 0..attempts,
            Policy::Backoff { .. } => 0..usize::MAX,
        }
    }

    /// The delays before each attempt after the first: zero for
    /// [`Policy::Immediate`] (as many as it has retries), jittered and
    /// growing for [`Policy::Backoff`] (endless). Start a new sequence
    /// after a success.
    pub fn delays(&self) -> Box<dyn Iterator<Item = Duration> + Send> {
        match *self {
            Policy::Immediate(attempts) => Box::new(std::iter::repeat_n(Duration::ZERO, attempts.saturating_sub(1))),
            Policy::Backoff { first, max } => Box::new(
                ExponentialBuilder::default()
                    .with_min_delay(first / 2)
                    .with_max_delay(max / 2)
                    .with_jitter()
                    .without_max_times()
                    .build()
                    .map(move |delay| delay.min(max)),
            ),
        }
    }

    /// The longest delay this policy waits between attempts.
    pub fn max_delay(&self) -> Duration {
        match *self {
            Policy::Immediate(_) => Duration::ZERO,
            Policy::Backoff { max, .. } => max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_delays_grow_to_the_bound_with_jitter_and_never_end() {
        let policy = Policy::Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = policy.delays().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(
            delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)), "{delays:?}");
        assert!(delays[19] >= Duration::from_millis(500), "{delays:?}");
        assert_eq!(policy.attempts().take(1000).count(), 1000);
    }

    #[test]
    fn immediate_attempts_are_bounded_and_undelayed() {
        let policy = Policy::Immediate(3);
        assert_eq!(policy.attempts().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(policy.delays().collect::<Vec<_>>(), [Duration::ZERO; 2]);
        assert_eq!(Policy::Immediate(0).attempts().count(), 0);
    }
}
