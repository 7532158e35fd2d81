//! Measurement and reporting: HDR latency histograms, stanza accounting and the run's outputs.
//!
//! Data flow of a run:
//!
//! ```text
//!  worker 1 ─ Recorder ─┐  every N s: take() ─► IntervalLog::write_interval  (.hlog, tagged by step)
//!  worker 2 ─ Recorder ─┼─ merge() ─► Recorder (whole run)
//!  worker k ─ Recorder ─┘                 │
//!                                         ├─ summary(measured) ─► Summary ─► table (stdout), JSON
//!                                         ├─ write_hgrm_files ─► <prefix>-<step>.hgrm
//!                                         └─ write_svg ─► percentile spectrum plot
//! ```
//!
//! Each worker owns one [`Recorder`] (no locks on the hot path) with one
//! [`hdrhistogram::Histogram<u64>`] per named step. Latencies are recorded in **microseconds**
//! from [`LOWEST_US`] (1 µs) to [`HIGHEST_US`] (60 s) with [`SIGFIG`] (3) significant digits;
//! a latency above 60 s is recorded as 60 s and counted in [`StepStats::saturated`]. Every
//! output shows milliseconds.
//!
//! Accounting: every stanza sent ([`Recorder::record_sent`]) must end as received
//! ([`Recorder::record_received`]), bounced with its error condition
//! ([`Recorder::record_bounce`], RFC 6120 §8.3.3 defined conditions such as
//! `remote-server-not-found`) or lost ([`Recorder::record_lost`]). A stanza that ended as none
//! of them is counted as lost too ([`StepAccounting::unresolved`]). Any loss makes
//! [`Accounting::is_clean`] false and [`Accounting::summary_line`] loud; the binary exits
//! non-zero on it.
//!
//! This module reads no clock: times are arguments (elapsed [`Duration`]s measured by the run
//! loop on one monotonic clock, and the wall-clock [`SystemTime`] the interval log starts at).
//!
//! # Files
//!
//! - `record.rs`: what workers record ([`Recorder`], [`StepStats`]) and what it adds up to.
//! - `summary.rs`: the results ([`Summary`], [`StepSummary`], [`Accounting`],
//!   [`StepAccounting`]).
//! - One file per output format: `text.rs` (the table on stdout), `json.rs` (the JSON
//!   summary), `hgrm.rs` (`.hgrm` percentile distributions), `hlog.rs` (the `.hlog`
//!   interval log, [`IntervalLog`]), `svg.rs` (the percentile spectrum plot).
//! - `wire.rs`: a recorder as JSON ([`RecorderWire`]), for the processes of a split run.
#![warn(missing_docs)]

use std::io;
use std::time::Duration;
#[cfg(doc)]
use std::time::SystemTime;

use hdrhistogram::Histogram;

mod hgrm;
mod hlog;
mod json;
mod record;
mod summary;
mod svg;
mod text;
mod wire;

pub use hgrm::write_percentile_distribution;
pub use hlog::IntervalLog;
pub use record::{Recorder, StepStats};
pub use summary::{Accounting, StepAccounting, StepSummary, Summary};
pub use wire::{RecorderWire, StepWire};

/// Lowest latency the histograms discern, in microseconds (values of 0 µs are still counted).
pub const LOWEST_US: u64 = 1;
/// Highest latency the histograms track, in microseconds (60 s); larger values are clamped.
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept by every latency histogram.
pub const SIGFIG: u8 = 3;
/// Percentile ticks per half distance to 100% in `.hgrm` files and plots (HdrHistogram's usual 5).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per millisecond: the divisor from recorded values to every output's unit.
pub const US_PER_MS: f64 = 1000.0;

/// Names of the steps the scenarios measure, so that workers, outputs and scripts agree.
pub mod steps {
    /// A `<message/>` round trip: sent by one side, received by the other.
    pub const MESSAGE: &str = "message";
    /// A `<presence type='subscribe'/>` from send to its receipt (RFC 6121 §3.1).
    pub const SUBSCRIBE: &str = "subscribe";
    /// A presence broadcast from send to its receipt by one subscriber (RFC 6121 §4.2).
    pub const PRESENCE: &str = "presence";
    /// Stream set-up: TCP connect to an authenticated stream ready for stanzas (RFC 6120 §4).
    pub const STREAM_SETUP: &str = "stream_setup";
    /// Subscription completion: `subscribe` sent to mutual `both` subscription (RFC 6121 §3).
    pub const SUBSCRIPTION_COMPLETE: &str = "subscription_complete";
}

/// Errors of the reporting outputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Writing an output failed.
    #[error("report i/o: {0}")]
    Io(#[from] io::Error),
    /// Serialising a histogram for the interval log failed.
    #[error("interval log histogram serialisation: {0}")]
    Serialize(String),
    /// Writing the JSON summary failed.
    #[error("JSON summary: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing the SVG plot failed.
    #[error("SVG plot: {0}")]
    Plot(String),
    /// [`IntervalLog::write_cumulative`] got a histogram with fewer samples than the previous
    /// snapshot of the same step: the recorder passed is not cumulative.
    #[error(
        "step `{step}`: recorder is not cumulative (fewer samples than the previous snapshot)"
    )]
    NotCumulative {
        /// The step whose histogram shrank.
        step: String,
    },
    /// An interval log entry would start before the previous one ended.
    #[error("interval log time went backwards: {now:?} is before {last:?}")]
    IntervalOrder {
        /// End of the previous interval, since the log's base time.
        last: Duration,
        /// The time given now, since the log's base time.
        now: Duration,
    },
}

/// A new, empty latency histogram: 1 µs .. 60 s, 3 significant digits, counts in `u64`.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)
        .expect("constant bounds 1..60e6 with 3 significant digits are valid")
}

/// `name` with every character outside `[A-Za-z0-9_.-]` replaced by `_` (file names, tags).
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Recorders shared by the tests of the output formats.
#[cfg(test)]
mod fixtures {
    use std::time::Duration;

    use super::{steps, Recorder};

    pub(super) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Worker A: 100 messages, 1..=100 ms; worker B: 100 messages 101..=200 ms, 2 bounces.
    pub(super) fn two_workers() -> (Recorder, Recorder) {
        let mut a = Recorder::with_steps(&[steps::STREAM_SETUP, steps::MESSAGE]);
        a.record_latency(steps::STREAM_SETUP, ms(5));
        a.record_sent(steps::MESSAGE, 100);
        for i in 1..=100 {
            a.record_received(steps::MESSAGE, ms(i));
        }
        let mut b = Recorder::new();
        b.record_sent(steps::MESSAGE, 102);
        for i in 101..=200 {
            b.record_received(steps::MESSAGE, ms(i));
        }
        b.record_bounce(steps::MESSAGE, "remote-server-not-found");
        b.record_bounce(steps::MESSAGE, "remote-server-not-found");
        b.record_sent(steps::PRESENCE, 3);
        b.record_received(steps::PRESENCE, Duration::from_micros(250));
        b.record_bounce(steps::PRESENCE, "service-unavailable");
        b.record_lost(steps::PRESENCE, 1);
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_safe("a b,c/d"), "a_b_c_d");
    }
}
