//! Each endpoint's load: a peak-EWMA latency estimate times the requests in
//! flight, as Finagle and Linkerd balance.
//!
//! tower has this estimator (`tower::load::PeakEwma`), but its `Cost` is
//! opaque: it can be compared, not measured. The balancer needs the
//! magnitude, to tell a real difference in load from latency jitter (see
//! `CLEARLY_CHEAPER`), so the estimator lives here, with the same rules but
//! two: a slower response raises the estimate at once (the peak), though at
//! most doubling it per response so a single outlier cannot starve an
//! endpoint; a faster one pulls it down by how long ago the last update was,
//! but by at least a tenth, so a busy endpoint forgets a pause within a few
//! dozen responses rather than a second; and an idle estimate decays towards
//! zero so an unused endpoint is tried again. A request that got no answer
//! at all (the client gave up, or the connection failed) is no outlier: its
//! wait replaces the estimate whole, so an endpoint that accepts calls but
//! never answers is left alone until that long wait has decayed.
//!
//! An estimate that keeps an endpoint out gets no new answers to correct
//! it: a freshly started server whose first answers were slow (caches,
//! thread pools, connections still being made) would be left out until
//! its estimate had decayed, seconds in which the others take all the
//! traffic. So an endpoint passed over on load is sent a probe once it has
//! lost [`PROBE_EVERY`] comparisons ([`PeakEwma::passed_over`]); the
//! probe's answer replaces the estimate, since it is newer than everything
//! the estimate holds. A pod that warmed up is back at once. A pod that
//! really is slow (or never answers) confirms it, and its next probe waits
//! for twice as many lost comparisons, so what probes cost a client stays
//! a few calls however long the pod stays bad.
//!
//! `Recent` counts the requests an endpoint was given lately, decaying at
//! the same pace: among endpoints whose loads are within noise of each
//! other, the balancer gives the next request to the one with fewer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much one response can raise the estimate: a lone outlier at most
/// doubles it, which stays within the balancer's noise band (a pause does
/// not starve a pod), while a second slow response in a row takes a pod
/// out of the band, so a tenfold slower pod is avoided after two or three
/// calls each time its estimate has decayed.
const PEAK_STEP: f64 = 2.0;
/// A floor for the step, so an estimate that decayed to nothing can rise.
const MIN_RTT_NS: f64 = 50_000.0;
/// The most of the old estimate one faster response keeps.
const MAX_KEEP: f64 = 0.9;
/// How much cheaper one candidate must be to win on load alone. Latency
/// estimates jitter (a pause, a cold cache, a busy core); comparing them
/// exactly would let that noise skew the shares of equal pods. Within this
/// band the candidate given fewer requests lately wins, so equal pods share
/// evenly, while a pod with more requests in flight or a clearly higher
/// latency still loses. A probe whose answer comes within it shows the
/// endpoint is fit again.
pub const CLEARLY_CHEAPER: f64 = 2.0;
/// Comparisons an endpoint loses on load before it gets a probe. A server
/// warming up may answer a few probes slowly before it is fit, so the
/// first [`PATIENT_PROBES`] probes that find it clearly worse (beyond twice
/// the band, or no answer) leave this as it is; each further one doubles
/// it (at most 1024 times); one that does not brings it back.
pub const PROBE_EVERY: u32 = 50;
const PATIENT_PROBES: u32 = 4;
const MAX_BACKOFF: u32 = 10;

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
    probes: Probes,
}

/// When the next probe goes to an endpoint passed over on load.
#[derive(Debug)]
struct Probes {
    /// Comparisons still to lose before the next probe.
    until_next: u32,
    /// Probes in a row that found the endpoint worse.
    worse: u32,
    /// A probe to send with the next request: the cost it must come within
    /// (times `CLEARLY_CHEAPER`) to show the endpoint fit.
    pending: Option<f64>,
    /// A probe was sent and its answer is awaited: one at a time.
    outstanding: bool,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            until_next: PROBE_EVERY,
            worse: 0,
            pending: None,
            outstanding: false,
        }
    }
}

impl Estimate {
    /// Folds in a response time.
    fn observe(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        self.fold(rtt_ns, now, decay_ns, PEAK_STEP)
    }

    /// Folds in how long a request waited without an answer.
    fn observe_unanswered(&mut self, waited_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        self.fold(waited_ns, now, decay_ns, f64::INFINITY)
    }

    /// Folds in a time, rising at most `step` times per observation.
    fn fold(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64, step: f64) -> f64 {
        if rtt_ns > self.rtt_ns {
            // A peak raises the estimate at once, but at most by PEAK_STEP per
            // response: a lone outlier (a lost ACK, a pause) costs the
            // endpoint little, while a consistently slower one is followed
            // within a few responses.
            self.rtt_ns = rtt_ns.min(self.rtt_ns.max(MIN_RTT_NS) * step);
        } else {
            let weight = self.kept(now, decay_ns).min(MAX_KEEP);
            self.rtt_ns = self.rtt_ns * weight + rtt_ns * (1.0 - weight);
        }
        self.updated = now;
        self.rtt_ns
    }

    /// Takes a probe's answer time (`None`: it got no answer) as the
    /// estimate, and sets when the next probe goes. A probe that got no
    /// answer (the caller gave up, the connection failed) proves nothing
    /// fast: the estimate only rises, to its wait.
    fn probed(&mut self, rtt_ns: Option<f64>, waited_ns: f64, target_ns: f64, now: Instant) {
        self.rtt_ns = rtt_ns.unwrap_or(self.rtt_ns.max(waited_ns));
        self.updated = now;
        // Only an answer clearly outside the noise band (or none) counts as
        // worse: on a busy machine a fit pod's answers jitter past the band.
        let worse = rtt_ns.is_none_or(|rtt| rtt > target_ns * CLEARLY_CHEAPER * CLEARLY_CHEAPER);
        self.probes.worse = if worse { self.probes.worse + 1 } else { 0 };
        let backoff = self.probes.worse.saturating_sub(PATIENT_PROBES).min(MAX_BACKOFF);
        self.probes.until_next = PROBE_EVERY << backoff;
        self.probes.outstanding = false;
    }

    /// Decays the estimate towards zero for the time nothing was heard.
    fn idle(&mut self, now: Instant, decay_ns: f64) -> f64 {
        self.rtt_ns *= self.kept(now, decay_ns);
        self.updated = now;
        self.rtt_ns
    }

    /// How much of the estimate the time since the last update keeps.
    fn kept(&self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        (-elapsed / decay_ns).exp()
    }
}

/// An endpoint's load as the balancer sees it.
#[derive(Clone, Copy, Debug)]
pub struct LoadView {
    /// The latency estimate, in nanoseconds.
    pub latency_ns: f64,
    /// Requests sent to the endpoint whose responses have not yet ended.
    pub in_flight: u32,
    /// What the balancer compares: latency × (in flight + 1).
    pub cost_ns: f64,
}

/// One endpoint's load: its peak-EWMA latency estimate and its requests in
/// flight (see the module docs), shared by the balancer and each request sent.
#[derive(Debug)]
pub struct PeakEwma {
    estimate: Mutex<Estimate>,
    in_flight: AtomicU32,
    decay_ns: f64,
}

impl PeakEwma {
    /// A load with no requests in flight whose latency estimate starts at
    /// `default_rtt`; `decay` is the time constant of the EWMA (after an idle `t`
    /// the estimate keeps `e^(-t/decay)` of itself).
    pub fn new(default_rtt: Duration, decay: Duration) -> Arc<Self> {
        Arc::new(PeakEwma {
            estimate: Mutex::new(Estimate {
                rtt_ns: default_rtt.as_nanos() as f64,
                updated: Instant::now(),
                probes: Probes::default(),
            }),
            in_flight: AtomicU32::new(0),
            decay_ns: decay.as_nanos() as f64,
        })
    }

    /// The estimated cost of one more request, in nanoseconds.
    pub fn cost(&self) -> f64 {
        self.view().cost_ns
    }

    /// The estimate now (decayed for the time nothing was heard).
    pub fn view(&self) -> LoadView {
        let latency_ns = self.lock().idle(Instant::now(), self.decay_ns);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        LoadView {
            latency_ns,
            in_flight,
            cost_ns: latency_ns * f64::from(in_flight + 1),
        }
    }

    /// Counts a request as in flight until the returned guard is dropped,
    /// which also records its response time.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self.clone(),
            sent_at: Instant::now(),
            answered: false,
            probe: self.take_probe(),
            head_after_ns: 0.0,
        }
    }

    /// Forgets a probe that was due but never sent (the connection to the
    /// endpoint failed first): the next loss counts towards another.
    pub fn cancel_probe(&self) {
        let mut estimate = self.lock();
        if estimate.probes.pending.take().is_some() {
            estimate.probes.until_next = 1;
        }
    }

    /// The probe due, if any, now sent.
    fn take_probe(&self) -> Option<f64> {
        let mut estimate = self.lock();
        let probe = estimate.probes.pending.take();
        estimate.probes.outstanding |= probe.is_some();
        probe
    }

    /// Notes that the balancer passed this endpoint over for one costing
    /// `rival_cost_ns`; true when it is time for a probe, which the next
    /// request here is.
    pub fn passed_over(&self, rival_cost_ns: f64) -> bool {
        let mut estimate = self.lock();
        let probes = &mut estimate.probes;
        if probes.pending.is_some() || probes.outstanding {
            return false;
        }
        probes.until_next = probes.until_next.saturating_sub(1);
        if probes.until_next > 0 {
            return false;
        }
        probes.pending = Some(rival_cost_ns);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.estimate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request in flight; dropped when its response has ended.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<PeakEwma>,
    sent_at: Instant,
    /// Whether the response's head arrived.
    answered: bool,
    /// For a probe, the cost its answer must come within (see
    /// [`PeakEwma::passed_over`]); the time to its response's head
    /// replaces the estimate (a streamed response may last for minutes).
    probe: Option<f64>,
    head_after_ns: f64,
}

impl InFlight {
    /// Notes that the response's head arrived.
    pub fn answered(&mut self) {
        self.answered = true;
        self.head_after_ns = self.sent_at.elapsed().as_nanos() as f64;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.sent_at).as_nanos() as f64;
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut estimate = self.load.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(target) = self.probe {
            estimate.probed(self.answered.then_some(self.head_after_ns), rtt, target, now);
        } else if self.answered {
            estimate.observe(rtt, now, self.load.decay_ns);
        } else {
            estimate.observe_unanswered(rtt, now, self.load.decay_ns);
        }
    }
}

/// A count of requests given to an endpoint that fades with time, so it
/// reflects its recent share.
#[derive(Debug)]
pub struct Recent {
    count: Mutex<(f64, Instant)>,
    decay_ns: f64,
}

impl Recent {
    /// A counter starting at `count`: a new endpoint starts level with the
    /// others rather than at zero, which would hand it every tie at first.
    pub fn new(count: f64, decay: Duration) -> Self {
        Recent {
            count: Mutex::new((count, Instant::now())),
            decay_ns: decay.as_nanos() as f64,
        }
    }

    fn decayed(&self, state: &mut (f64, Instant), now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(state.1).as_nanos() as f64;
        state.0 *= (-elapsed / self.decay_ns).exp();
        state.1 = now;
        state.0
    }

    /// The count now, decayed for the time since it last changed.
    pub fn get(&self) -> f64 {
        let mut state = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        self.decayed(&mut state, Instant::now())
    }

    /// Counts one more request given to the endpoint.
    pub fn add(&self) {
        let mut state = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = self.decayed(&mut state, Instant::now()) + 1.0;
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
            probes: Probes::default(),
        };
        let raised = estimate.observe(30.0 * MS, start, 1_000.0 * MS);
        assert_eq!(
            raised,
            10.0 * MS * PEAK_STEP,
            "one response raises the estimate by the step at most"
        );
        for _ in 0..10 {
            estimate.observe(30.0 * MS, start, 1_000.0 * MS);
        }
        assert_eq!(estimate.rtt_ns, 30.0 * MS, "a consistently slow endpoint is followed");
        let later = start + Duration::from_secs(1);
        let pulled = estimate.observe(10.0 * MS, later, 1_000.0 * MS);
        let expected = 30.0 * MS * (-1.0f64).exp() + 10.0 * MS * (1.0 - (-1.0f64).exp());
        assert!((pulled - expected).abs() < 1.0, "{pulled} vs {expected}");
        // Back-to-back fast responses pull it down by a tenth each at least.
        let soon = later + Duration::from_micros(10);
        let next = estimate.observe(10.0 * MS, soon, 1_000.0 * MS);
        assert!((next - (pulled * MAX_KEEP + 10.0 * MS * (1.0 - MAX_KEEP))).abs() < 1.0);
        let idle = estimate.idle(later + Duration::from_secs(10), 1_000.0 * MS);
        assert!(idle < 0.001 * MS, "an idle estimate decays towards zero: {idle}");
    }

    #[test]
    fn a_request_never_answered_raises_the_estimate_to_its_whole_wait() {
        let load = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(1));
        let mut answered = load.start();
        answered.sent_at -= Duration::from_millis(500);
        answered.answered();
        drop(answered);
        let after_answer = load.estimate.lock().unwrap().rtt_ns;
        assert!(
            after_answer <= 2.0 * MS,
            "an answered outlier only doubles it: {after_answer}"
        );
        let mut unanswered = load.start();
        unanswered.sent_at -= Duration::from_millis(500);
        drop(unanswered);
        let after_silence = load.estimate.lock().unwrap().rtt_ns;
        assert!(after_silence >= 500.0 * MS, "{after_silence}");
    }

    /// Loses comparisons until a probe is due, then sends it, answered
    /// after `rtt`, or never answered.
    fn probe_after_losses(load: &Arc<PeakEwma>, rival_ns: f64, rtt: Option<Duration>) -> u32 {
        let mut losses = 1;
        while !load.passed_over(rival_ns) {
            losses += 1;
        }
        let mut probe = load.start();
        assert!(probe.probe.is_some());
        probe.sent_at -= rtt.unwrap_or(Duration::from_secs(1));
        if rtt.is_some() {
            probe.answered();
        }
        drop(probe);
        losses
    }

    #[test]
    fn a_probes_answer_replaces_the_estimate_and_sets_the_next_probe() {
        let load = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10));
        load.lock().rtt_ns = 40.0 * MS;
        let first = probe_after_losses(&load, 0.5 * MS, Some(Duration::from_micros(400)));
        assert_eq!(first, PROBE_EVERY);
        let after = load.lock().rtt_ns;
        assert!(
            after < 1.0 * MS,
            "a fast answer to a probe ends the stale peak: {after}"
        );

        // A pod that stays slow, or never answers, is probed at the base
        // rate a few times (it may be warming up), then ever more rarely.
        let mut intervals = Vec::new();
        for answer in [
            Some(Duration::from_millis(50)),
            None,
            Some(Duration::from_millis(50)),
            Some(Duration::from_millis(50)),
            Some(Duration::from_millis(50)),
            None,
            Some(Duration::from_micros(600)),
            Some(Duration::from_micros(600)),
        ] {
            intervals.push(probe_after_losses(&load, 0.5 * MS, answer));
            if answer.is_none() {
                assert!(load.lock().rtt_ns >= 1000.0 * MS, "no answer counts its whole wait");
            }
        }
        let base = PROBE_EVERY;
        assert_eq!(
            intervals,
            [base, base, base, base, base, 2 * base, 4 * base, base],
            "once fit again, back to the base rate"
        );
        let mut next = load.start();
        assert!(next.probe.is_none(), "only the one request after a probe was due");
        next.answered();
    }

    #[test]
    fn recent_counts_add_up_and_fade() {
        let recent = Recent::new(5.0, Duration::from_secs(1));
        recent.add();
        let now = recent.get();
        assert!(now > 5.9 && now <= 6.0, "{now}");
        recent.count.lock().unwrap().1 -= Duration::from_secs(1);
        let faded = recent.get();
        assert!((faded - now * (-1.0f64).exp()).abs() < 0.01, "{faded}");
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
