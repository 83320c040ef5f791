//! Each endpoint's load: a peak-EWMA latency estimate times the requests in
//! flight, as Finagle and Linkerd balance.
//!
//! tower has this estimator (`tower::load::PeakEwma`), but its `Cost` is
//! opaque: it can be compared, not measured. The balancer needs the
//! magnitude, to tell a real difference in load from latency jitter (see
//! `CLEARLY_CHEAPER`), so the estimator lives here, with the same rules but
//! one: a slower response raises the estimate at once (the peak), though at
//! most by a quarter per response so a single outlier cannot starve an
//! endpoint;
//! a faster one pulls it down by how long ago the last update was; and an
//! idle estimate decays towards zero so an unused endpoint is tried again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much one response can raise the estimate: a lone outlier stays
/// within `CLEARLY_CHEAPER`, a tenfold slower endpoint is matched within
/// about ten responses.
const PEAK_STEP: f64 = 1.25;
/// A floor for the step, so an estimate that decayed to nothing can rise.
const MIN_RTT_NS: f64 = 50_000.0;

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

impl Estimate {
    /// Folds in a response time (zero to only decay with time).
    fn update(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        if rtt_ns > self.rtt_ns {
            // A peak raises the estimate at once, but at most by PEAK_STEP per
            // response: a lone outlier (a lost ACK, a pause) costs the
            // endpoint little, while a consistently slower one is followed
            // within a few responses.
            self.rtt_ns = rtt_ns.min(self.rtt_ns.max(MIN_RTT_NS) * PEAK_STEP);
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
            let weight = (-elapsed / decay_ns).exp();
            self.rtt_ns = self.rtt_ns * weight + rtt_ns * (1.0 - weight);
        }
        self.updated = now;
        self.rtt_ns
    }
}

#[derive(Debug)]
pub struct PeakEwma {
    estimate: Mutex<Estimate>,
    in_flight: AtomicU32,
    decay_ns: f64,
}

impl PeakEwma {
    pub fn new(default_rtt: Duration, decay: Duration) -> Arc<Self> {
        Arc::new(PeakEwma {
            estimate: Mutex::new(Estimate {
                rtt_ns: default_rtt.as_nanos() as f64,
                updated: Instant::now(),
            }),
            in_flight: AtomicU32::new(0),
            decay_ns: decay.as_nanos() as f64,
        })
    }

    /// The estimated cost of one more request, in nanoseconds.
    pub fn cost(&self) -> f64 {
        let rtt =
            self.estimate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .update(0.0, Instant::now(), self.decay_ns);
        rtt * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    /// Counts a request as in flight until the returned guard is dropped,
    /// which also records its response time.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self.clone(),
            sent_at: Instant::now(),
        }
    }
}

/// One request in flight; dropped when its response has ended.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<PeakEwma>,
    sent_at: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.sent_at).as_nanos() as f64;
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.load
            .estimate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(rtt, now, self.load.decay_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1_000_000.0;

    #[test]
    fn peaks_replace_and_faster_responses_pull_down_with_time() {
        let start = Instant::now();
        let mut estimate = Estimate {
            rtt_ns: 10.0 * MS,
            updated: start,
        };
        let raised = estimate.update(30.0 * MS, start, 1_000.0 * MS);
        assert_eq!(
            raised,
            10.0 * MS * PEAK_STEP,
            "one response raises the estimate by the step at most"
        );
        for _ in 0..10 {
            estimate.update(30.0 * MS, start, 1_000.0 * MS);
        }
        assert_eq!(estimate.rtt_ns, 30.0 * MS, "a consistently slow endpoint is followed");
        let later = start + Duration::from_secs(1);
        let pulled = estimate.update(10.0 * MS, later, 1_000.0 * MS);
        let expected = 30.0 * MS * (-1.0f64).exp() + 10.0 * MS * (1.0 - (-1.0f64).exp());
        assert!((pulled - expected).abs() < 1.0, "{pulled} vs {expected}");
        let idle = estimate.update(0.0, later + Duration::from_secs(10), 1_000.0 * MS);
        assert!(idle < 0.001 * MS, "an idle estimate decays towards zero: {idle}");
    }

    #[test]
    fn requests_in_flight_multiply_the_cost() {
        let load = PeakEwma::new(Duration::from_millis(2), Duration::from_secs(10));
        let idle = load.cost();
        let first = load.start();
        let _second = load.start();
        let busy = load.cost();
        assert!(busy > 2.9 * idle && busy < 3.1 * idle, "{busy} vs {idle}");
        drop(first);
        assert!(load.cost() < busy);
    }
}
