//! What a worker records: one [`StepStats`] per named step in a [`Recorder`], and what the
//! recorded steps add up to ([`Recorder::accounting`], [`Recorder::summary`]).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

#[cfg(doc)]
use super::steps;
use super::{
    new_latency_histogram, Accounting, StepAccounting, StepSummary, Summary, HIGHEST_US, US_PER_MS,
};

/// Measurements of one named step: its latency histogram and its stanza counters.
#[derive(Debug, Clone)]
pub struct StepStats {
    pub(super) name: String,
    pub(super) latency: Histogram<u64>,
    pub(super) saturated: u64,
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) bounced: BTreeMap<String, u64>,
    pub(super) lost: u64,
}

impl StepStats {
    pub(super) fn new(name: &str) -> Self {
        StepStats {
            name: name.to_owned(),
            latency: new_latency_histogram(),
            saturated: 0,
            sent: 0,
            received: 0,
            bounced: BTreeMap::new(),
            lost: 0,
        }
    }

    fn record_latency(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if us > HIGHEST_US {
            self.saturated += 1;
        }
        self.latency.saturating_record(us.min(HIGHEST_US));
    }

    fn merge(&mut self, other: &StepStats) {
        // Every histogram is made by `new_latency_histogram` with the same bounds and no
        // auto-resize, so adding one to another cannot fail.
        self.latency
            .add(&other.latency)
            .expect("latency histograms share their bounds");
        self.saturated += other.saturated;
        self.sent += other.sent;
        self.received += other.received;
        for (condition, n) in &other.bounced {
            *self.bounced.entry(condition.clone()).or_insert(0) += n;
        }
        self.lost += other.lost;
    }

    fn has_counters(&self) -> bool {
        self.sent != 0 || self.received != 0 || self.lost != 0 || !self.bounced.is_empty()
    }

    /// The step's name, e.g. [`steps::MESSAGE`].
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Latency histogram, values in microseconds (1 µs .. 60 s, 3 significant digits).
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }
    /// Latencies above 60 s, recorded as 60 s.
    pub fn saturated(&self) -> u64 {
        self.saturated
    }
    /// Stanzas sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }
    /// Stanzas received at their destination.
    pub fn received(&self) -> u64 {
        self.received
    }
    /// Stanzas bounced back, by error condition (e.g. `remote-server-not-found`).
    pub fn bounced(&self) -> &BTreeMap<String, u64> {
        &self.bounced
    }
    /// Total stanzas bounced, all conditions.
    pub fn bounced_total(&self) -> u64 {
        self.bounced.values().sum()
    }
    /// Stanzas marked lost by the run loop (e.g. not received before the drain deadline).
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// Per-worker measurements: one [`StepStats`] per named step, in first-use order.
///
/// Steps are created on first use (or ahead with [`Recorder::register`], which fixes the
/// order in which outputs list them). Look-up is by name, a linear scan over a handful of
/// steps; nothing allocates on the hot path once a step exists (a new bounce condition
/// allocates its name once).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub(super) steps: Vec<StepStats>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// A recorder with these steps registered, in this order.
    pub fn with_steps(names: &[&str]) -> Self {
        let mut r = Recorder::new();
        for name in names {
            r.register(name);
        }
        r
    }

    /// Creates step `name` if it does not exist yet (outputs list steps in creation order).
    pub fn register(&mut self, name: &str) {
        self.step_mut(name);
    }

    fn step_mut(&mut self, name: &str) -> &mut StepStats {
        let i = match self.steps.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                self.steps.push(StepStats::new(name));
                self.steps.len() - 1
            }
        };
        &mut self.steps[i]
    }

    /// Counts `n` stanzas sent for `step`.
    pub fn record_sent(&mut self, step: &str, n: u64) {
        self.step_mut(step).sent += n;
    }

    /// Counts one stanza of `step` received, `latency` after it was sent.
    pub fn record_received(&mut self, step: &str, latency: Duration) {
        let s = self.step_mut(step);
        s.received += 1;
        s.record_latency(latency);
    }

    /// Counts one stanza of `step` bounced to its sender with error `condition`
    /// (an RFC 6120 §8.3.3 condition name, e.g. `remote-server-not-found`).
    pub fn record_bounce(&mut self, step: &str, condition: &str) {
        let s = self.step_mut(step);
        match s.bounced.get_mut(condition) {
            Some(n) => *n += 1,
            None => {
                s.bounced.insert(condition.to_owned(), 1);
            }
        }
    }

    /// Counts `n` stanzas of `step` as lost (sent, never received nor bounced in time).
    pub fn record_lost(&mut self, step: &str, n: u64) {
        self.step_mut(step).lost += n;
    }

    /// Records a latency of `step` without touching the stanza counters: for derived
    /// measurements such as [`steps::STREAM_SETUP`] and [`steps::SUBSCRIPTION_COMPLETE`].
    pub fn record_latency(&mut self, step: &str, latency: Duration) {
        self.step_mut(step).record_latency(latency);
    }

    /// Adds `other`'s histograms and counters into `self`, step by step (steps new to
    /// `self` are appended in `other`'s order).
    pub fn merge(&mut self, other: &Recorder) {
        for s in &other.steps {
            self.step_mut(&s.name).merge(s);
        }
    }

    /// Takes the measurements so far, leaving `self` with the same steps, all zero: for
    /// per-interval hand-off to the collector, or to drop the warm-up's samples.
    pub fn take(&mut self) -> Recorder {
        let fresh = Recorder {
            steps: self.steps.iter().map(|s| StepStats::new(&s.name)).collect(),
        };
        std::mem::replace(self, fresh)
    }

    /// The step called `name`, if it was used.
    pub fn step(&self, name: &str) -> Option<&StepStats> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// All steps, in creation order.
    pub fn steps(&self) -> impl Iterator<Item = &StepStats> {
        self.steps.iter()
    }

    /// Where every stanza sent ended, for the steps that count stanzas (latency-only steps
    /// are left out).
    pub fn accounting(&self) -> Accounting {
        let steps = self
            .steps
            .iter()
            .filter(|s| s.has_counters())
            .map(|s| {
                let ended = s.received + s.bounced_total() + s.lost;
                let unresolved = s.sent.saturating_sub(ended);
                StepAccounting {
                    step: s.name.clone(),
                    sent: s.sent,
                    received: s.received,
                    bounced: s.bounced.clone(),
                    lost: s.lost + unresolved,
                    unresolved,
                    excess: ended.saturating_sub(s.sent),
                }
            })
            .collect();
        Accounting { steps }
    }

    /// Percentiles and throughput of every step with samples over `measured` (the measured
    /// part of the run, warm-up excluded), plus the accounting.
    pub fn summary(&self, measured: Duration) -> Summary {
        let secs = measured.as_secs_f64();
        let steps = self
            .steps
            .iter()
            .filter(|s| !s.latency.is_empty())
            .map(|s| {
                let h = &s.latency;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / US_PER_MS;
                let count = h.len();
                StepSummary {
                    step: s.name.clone(),
                    count,
                    throughput_per_s: if secs > 0.0 { count as f64 / secs } else { 0.0 },
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    p999_ms: ms(0.999),
                    max_ms: h.max() as f64 / US_PER_MS,
                    mean_ms: h.mean() / US_PER_MS,
                    saturated: s.saturated,
                }
            })
            .collect();
        Summary {
            measured,
            steps,
            accounting: self.accounting(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{ms, two_workers};
    use super::super::steps;
    use super::*;

    #[test]
    fn merge_adds_histograms_and_counters() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let names: Vec<&str> = a.steps().map(StepStats::name).collect();
        assert_eq!(
            names,
            [steps::STREAM_SETUP, steps::MESSAGE, steps::PRESENCE]
        );
        let m = a.step(steps::MESSAGE).unwrap();
        assert_eq!(m.latency().len(), 200);
        assert_eq!(
            (m.sent(), m.received(), m.bounced_total(), m.lost()),
            (202, 200, 2, 0)
        );
        assert_eq!(m.bounced()["remote-server-not-found"], 2);
        // Values within the 3-significant-digit bucket of the exact ones.
        assert!(m.latency().equivalent(m.latency().min(), 1_000));
        assert!(m.latency().equivalent(m.latency().max(), 200_000));
        assert!(m
            .latency()
            .equivalent(m.latency().value_at_quantile(0.5), 100_000));
        let p = a.step(steps::PRESENCE).unwrap();
        assert_eq!(
            (p.sent(), p.received(), p.bounced_total(), p.lost()),
            (3, 1, 1, 1)
        );
        assert_eq!(a.step(steps::STREAM_SETUP).unwrap().latency().len(), 1);
        // Merging is addition: merging b again doubles its part.
        a.merge(&b);
        assert_eq!(a.step(steps::MESSAGE).unwrap().latency().len(), 300);
        assert_eq!(
            a.step(steps::MESSAGE).unwrap().bounced()["remote-server-not-found"],
            4
        );
    }

    #[test]
    fn latencies_above_60s_saturate_and_are_counted() {
        let mut r = Recorder::new();
        r.record_latency("x", Duration::from_secs(120));
        r.record_latency("x", Duration::from_nanos(10));
        let s = r.step("x").unwrap();
        assert_eq!(s.saturated(), 1);
        assert!(s.latency().equivalent(s.latency().max(), HIGHEST_US));
        assert_eq!(s.latency().min(), 0);
        assert_eq!(r.summary(ms(1000)).steps[0].saturated, 1);
    }

    #[test]
    fn take_leaves_the_same_steps_empty() {
        let (mut a, _) = two_workers();
        let taken = a.take();
        assert_eq!(taken.step(steps::MESSAGE).unwrap().latency().len(), 100);
        let names: Vec<&str> = a.steps().map(StepStats::name).collect();
        assert_eq!(names, [steps::STREAM_SETUP, steps::MESSAGE]);
        assert!(a.steps().all(|s| s.latency().is_empty() && s.sent() == 0));
        assert!(a.accounting().steps.is_empty());
    }
}
