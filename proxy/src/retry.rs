//! Delays between attempts to reach the control plane or the API server:
//! exponential from `first`, doubling up to `max`, each jittered so that a
//! fleet of proxies waiting for the same service does not retry in step.
//! backon's jitter adds up to the delay again, so its delays run from half
//! of ours: each delay falls between half and all of the exponential value,
//! and never beyond `max` (a proxy whose certificate is running out must
//! not sleep through the service's return).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An endless sequence of delays; start a new one after a success.
pub fn delays(first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(first / 2)
        .with_max_delay(max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_bound_with_jitter_and_never_end() {
        let delays: Vec<Duration> = delays(Duration::from_millis(100), Duration::from_secs(1))
            .take(20)
            .collect();
        assert_eq!(delays.len(), 20);
        assert!(
            delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)), "{delays:?}");
        assert!(delays[19] >= Duration::from_millis(500), "{delays:?}");
    }
}
