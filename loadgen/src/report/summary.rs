//! The results of a run: per-step percentiles and throughput ([`Summary`], [`StepSummary`])
//! and where every stanza ended ([`Accounting`], [`StepAccounting`]). Their outputs are in
//! `text.rs` and `json.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Percentiles and throughput of one step, latencies in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSummary {
    /// Step name.
    pub step: String,
    /// Latency samples recorded.
    pub count: u64,
    /// `count` per second of the measured duration (0 if that duration is zero).
    pub throughput_per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest latency, ms (at most 60 000).
    pub max_ms: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Samples above 60 s, recorded as 60 s.
    pub saturated: u64,
}

/// Where the stanzas of one step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepAccounting {
    /// Step name.
    pub step: String,
    /// Stanzas sent.
    pub sent: u64,
    /// Stanzas received at their destination.
    pub received: u64,
    /// Stanzas bounced, by error condition.
    pub bounced: BTreeMap<String, u64>,
    /// Stanzas lost: marked lost by the run loop plus `unresolved`.
    pub lost: u64,
    /// Stanzas sent that ended as nothing (neither received, bounced nor marked lost);
    /// included in `lost`.
    pub unresolved: u64,
    /// Outcomes beyond the stanzas sent (duplicates, or a counting bug); 0 in a sound run.
    pub excess: u64,
}

impl StepAccounting {
    /// Total bounced, all conditions.
    pub fn bounced_total(&self) -> u64 {
        self.bounced.values().sum()
    }
}

/// Where every stanza sent ended: received, bounced (with its error) or lost, per step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// Steps that count stanzas, in step order.
    pub steps: Vec<StepAccounting>,
}

impl Accounting {
    /// Stanzas sent, all steps.
    pub fn sent(&self) -> u64 {
        self.steps.iter().map(|s| s.sent).sum()
    }
    /// Stanzas received, all steps.
    pub fn received(&self) -> u64 {
        self.steps.iter().map(|s| s.received).sum()
    }
    /// Stanzas bounced, all steps and conditions.
    pub fn bounced(&self) -> u64 {
        self.steps.iter().map(StepAccounting::bounced_total).sum()
    }
    /// Stanzas lost (marked lost or unresolved), all steps.
    pub fn lost(&self) -> u64 {
        self.steps.iter().map(|s| s.lost).sum()
    }
    /// Outcomes beyond the stanzas sent, all steps.
    pub fn excess(&self) -> u64 {
        self.steps.iter().map(|s| s.excess).sum()
    }
    /// True when nothing was lost and no outcome was counted twice: the run's exit status
    /// is zero only then.
    pub fn is_clean(&self) -> bool {
        self.lost() == 0 && self.excess() == 0
    }

    /// One line: `accounting: OK: …` when clean; otherwise it starts with `!!! LOSS:` (and/or
    /// `!!! ACCOUNTING ERROR:` for excess outcomes) and names the steps concerned.
    pub fn summary_line(&self) -> String {
        let (sent, received, bounced, lost) =
            (self.sent(), self.received(), self.bounced(), self.lost());
        if self.is_clean() {
            return format!(
                "accounting: OK: {sent} sent = {received} received + {bounced} bounced + 0 lost"
            );
        }
        let mut line = String::new();
        if lost > 0 {
            let per_step = self
                .steps
                .iter()
                .filter(|s| s.lost > 0)
                .map(|s| format!("{}: {}", s.step, s.lost))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(
                line,
                "!!! LOSS: {lost} of {sent} stanzas lost ({per_step}); \
                 {received} received, {bounced} bounced !!!"
            );
        }
        let excess = self.excess();
        if excess > 0 {
            let per_step = self
                .steps
                .iter()
                .filter(|s| s.excess > 0)
                .map(|s| format!("{}: {}", s.step, s.excess))
                .collect::<Vec<_>>()
                .join(", ");
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = write!(
                line,
                "!!! ACCOUNTING ERROR: {excess} outcomes more than stanzas sent ({per_step}) !!!"
            );
        }
        line
    }
}

/// The results of a run: per-step percentiles and throughput, and the accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Measured duration the throughput is computed over (warm-up excluded).
    pub measured: Duration,
    /// Steps with latency samples, in step order.
    pub steps: Vec<StepSummary>,
    /// Where every stanza ended.
    pub accounting: Accounting,
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{ms, two_workers};
    use super::super::{steps, Recorder};

    #[test]
    fn accounting_every_stanza_ends_somewhere() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let acc = a.accounting();
        // stream_setup records latency only: not a stanza step.
        let names: Vec<&str> = acc.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(names, [steps::MESSAGE, steps::PRESENCE]);
        assert_eq!(acc.sent(), 205);
        assert_eq!(acc.received(), 201);
        assert_eq!(acc.bounced(), 3);
        assert_eq!(acc.lost(), 1);
        assert_eq!(acc.sent(), acc.received() + acc.bounced() + acc.lost());
        assert!(!acc.is_clean());
        let line = acc.summary_line();
        assert!(
            line.starts_with("!!! LOSS: 1 of 205 stanzas lost (presence: 1)"),
            "{line}"
        );
    }

    #[test]
    fn accounting_counts_unresolved_as_lost_and_flags_excess() {
        let mut r = Recorder::new();
        r.record_sent("message", 10);
        for _ in 0..7 {
            r.record_received("message", ms(1));
        }
        r.record_sent("presence", 1);
        r.record_received("presence", ms(1));
        r.record_received("presence", ms(1));
        let acc = r.accounting();
        assert_eq!(acc.steps[0].unresolved, 3);
        assert_eq!(acc.steps[0].lost, 3);
        assert_eq!(acc.steps[1].excess, 1);
        assert_eq!(acc.lost(), 3);
        assert_eq!(acc.excess(), 1);
        let line = acc.summary_line();
        assert!(
            line.contains("!!! LOSS: 3 of 11 stanzas lost (message: 3)"),
            "{line}"
        );
        assert!(
            line.contains("!!! ACCOUNTING ERROR: 1 outcomes more"),
            "{line}"
        );

        let mut clean = Recorder::new();
        clean.record_sent("message", 2);
        clean.record_received("message", ms(1));
        clean.record_bounce("message", "service-unavailable");
        let acc = clean.accounting();
        assert!(acc.is_clean());
        assert_eq!(
            acc.summary_line(),
            "accounting: OK: 2 sent = 1 received + 1 bounced + 0 lost"
        );
    }
}
