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
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

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

/// Measurements of one named step: its latency histogram and its stanza counters.
#[derive(Debug, Clone)]
pub struct StepStats {
    name: String,
    latency: Histogram<u64>,
    saturated: u64,
    sent: u64,
    received: u64,
    bounced: BTreeMap<String, u64>,
    lost: u64,
}

impl StepStats {
    fn new(name: &str) -> Self {
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
    steps: Vec<StepStats>,
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

    /// Writes one `.hgrm` percentile distribution per step with samples, to
    /// `dir/<prefix>-<step>.hgrm` (step names reduced to `[A-Za-z0-9_.-]`), values in ms.
    /// Returns the paths written, in step order.
    pub fn write_hgrm_files(&self, dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, ReportError> {
        let mut paths = Vec::new();
        for s in self.steps.iter().filter(|s| !s.latency.is_empty()) {
            let path = dir.join(format!("{prefix}-{}.hgrm", file_safe(&s.name)));
            let mut out = io::BufWriter::new(std::fs::File::create(&path)?);
            write_percentile_distribution(&s.latency, &mut out, US_PER_MS)?;
            out.flush()?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// An SVG plot of the latency percentile spectrum: x is the percentile on a logarithmic
    /// `1/(1-p)` axis (labelled 90%, 99%, 99.9%, …), y the latency in ms, one line per step
    /// with samples.
    pub fn percentile_spectrum_svg(&self, title: &str) -> Result<String, ReportError> {
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = self
            .steps
            .iter()
            .filter(|s| !s.latency.is_empty())
            .map(|s| (s.name.as_str(), spectrum_points(&s.latency)))
            .collect();
        let x_top = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
            .fold(100.0_f64, f64::max);
        // Round the axis up to a power of ten so that its last label is a "99.9…%" one.
        let x_max = 10f64.powi(x_top.log10().ceil() as i32);
        // Every percentile past a histogram's last tick has its maximum as value: carry each
        // line flat to the right edge (so a one-sample step is a visible line, not a point).
        for ((_, pts), s) in series
            .iter_mut()
            .zip(self.steps.iter().filter(|s| !s.latency.is_empty()))
        {
            pts.push((x_max, s.latency.max() as f64 / US_PER_MS));
        }
        let y_top = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .fold(0.001_f64, f64::max);
        let y_max = y_top * 1.1;
        let y_decimals = match y_max {
            y if y >= 100.0 => 0,
            y if y >= 10.0 => 1,
            y if y >= 1.0 => 2,
            _ => 3,
        };

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (1024, 640)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(16)
                .margin_right(56)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("percentile")
                .y_desc("latency (ms)")
                .x_label_formatter(&|x| percentile_label(*x))
                .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
                .draw()
                .map_err(plot_err)?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let (r, g, b) = LINE_COLORS[i % LINE_COLORS.len()];
                let color = RGBColor(r, g, b);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(plot_err)?;
            }
            root.present().map_err(plot_err)?;
        }
        Ok(svg)
    }

    /// Writes [`Recorder::percentile_spectrum_svg`] to `path`.
    pub fn write_svg(&self, path: &Path, title: &str) -> Result<(), ReportError> {
        let svg = self.percentile_spectrum_svg(title)?;
        std::fs::write(path, svg)?;
        Ok(())
    }
}

/// Line colours of the plot (Tableau 10: distinguishable, readable on white).
const LINE_COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn plot_err<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// Points `(1/(1-p), latency ms)` of a histogram's percentile spectrum, up to (excluding) 100%.
fn spectrum_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                1.0 / (1.0 - v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / US_PER_MS,
            )
        })
        .collect()
}

/// Label of `x = 1/(1-p)` as a percentile: 1 → `0%`, 10 → `90%`, 1000 → `99.9%`.
fn percentile_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".to_owned();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().ceil() as i64 - 2).clamp(0, 9) as usize;
    format!("{p:.decimals$}%")
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

/// HdrHistogram's sub-bucket count for `sigfig` digits: `2^ceil(log2(2 * 10^sigfig))`
/// (not exposed by the crate; the `.hgrm` footer reports it like the Java implementation).
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(sigfig));
    largest.next_power_of_two()
}

/// Writes `h` as HdrHistogram's standard percentile distribution (`.hgrm`, the format of
/// Java's `AbstractHistogram.outputPercentileDistribution` with 5 ticks per half distance):
/// header `Value Percentile TotalCount 1/(1-Percentile)`, one line per percentile tick with
/// values divided by `value_unit_ratio` (1000 turns µs into ms) to `h.sigfig()` decimals, and
/// the footer `#[Mean = …, StdDeviation = …]`, `#[Max = …, Total count = …]`,
/// `#[Buckets = …, SubBuckets = …]`.
pub fn write_percentile_distribution<W: Write>(
    h: &Histogram<u64>,
    out: &mut W,
    value_unit_ratio: f64,
) -> io::Result<()> {
    let prec = usize::from(h.sigfig());
    write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / value_unit_ratio;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.prec$} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.prec$} {q:2.12} {total:10}")?;
        }
    }
    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / value_unit_ratio, h.stdev() / value_unit_ratio)
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.prec$}, StdDeviation   = {stdev:12.prec$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {:12.prec$}, Total count    = {:12}]",
        h.max() as f64 / value_unit_ratio,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )
}

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

impl Summary {
    /// Writes the percentile table (ms, 3 decimals), then the accounting table, the bounce
    /// conditions and [`Accounting::summary_line`].
    pub fn write_table<W: Write>(&self, out: &mut W) -> io::Result<()> {
        out.write_all(self.table().as_bytes())
    }

    /// [`Summary::write_table`] as a string.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "latency over {:.3} s (ms):", self.measured.as_secs_f64());
        let _ = writeln!(
            t,
            "{:<24} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "step", "count", "rate/s", "p50", "p90", "p99", "p99.9", "max"
        );
        for s in &self.steps {
            let _ = writeln!(
                t,
                "{:<24} {:>10} {:>12.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                s.step,
                s.count,
                s.throughput_per_s,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms
            );
            if s.saturated > 0 {
                let _ = writeln!(t, "  {} samples above 60 s counted as 60 s", s.saturated);
            }
        }
        let acc = &self.accounting;
        if !acc.steps.is_empty() {
            let _ = writeln!(t, "stanzas:");
            let _ = writeln!(
                t,
                "{:<24} {:>10} {:>10} {:>10} {:>10}",
                "step", "sent", "received", "bounced", "lost"
            );
            for s in &acc.steps {
                let _ = writeln!(
                    t,
                    "{:<24} {:>10} {:>10} {:>10} {:>10}",
                    s.step,
                    s.sent,
                    s.received,
                    s.bounced_total(),
                    s.lost
                );
                for (condition, n) in &s.bounced {
                    let _ = writeln!(t, "  bounced {condition}: {n}");
                }
                if s.unresolved > 0 {
                    let _ = writeln!(t, "  {} sent but never accounted for", s.unresolved);
                }
            }
        }
        let _ = writeln!(t, "{}", acc.summary_line());
        t
    }

    /// The JSON summary: `{"params", "measured_seconds", "steps": {name: StepSummary},
    /// "accounting": {"ok", "summary", "sent", "received", "bounced", "lost", "excess",
    /// "steps": {name: StepAccounting}}}`, steps in step order; `params` is the run's
    /// parameters as given.
    pub fn to_json(&self, params: &serde_json::Value) -> String {
        let acc = &self.accounting;
        let json = JsonSummary {
            params,
            measured_seconds: self.measured.as_secs_f64(),
            steps: ByStep(&self.steps),
            accounting: JsonAccounting {
                ok: acc.is_clean(),
                summary: acc.summary_line(),
                sent: acc.sent(),
                received: acc.received(),
                bounced: acc.bounced(),
                lost: acc.lost(),
                excess: acc.excess(),
                steps: ByStep(&acc.steps),
            },
        };
        serde_json::to_string_pretty(&json)
            .expect("the summary serialises: no maps with non-string keys")
    }

    /// Writes [`Summary::to_json`] and a final newline to `out`.
    pub fn write_json<W: Write>(
        &self,
        out: &mut W,
        params: &serde_json::Value,
    ) -> Result<(), ReportError> {
        out.write_all(self.to_json(params).as_bytes())?;
        out.write_all(b"\n")?;
        Ok(())
    }
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    params: &'a serde_json::Value,
    measured_seconds: f64,
    steps: ByStep<'a, StepSummary>,
    accounting: JsonAccounting<'a>,
}

#[derive(Serialize)]
struct JsonAccounting<'a> {
    ok: bool,
    summary: String,
    sent: u64,
    received: u64,
    bounced: u64,
    lost: u64,
    excess: u64,
    steps: ByStep<'a, StepAccounting>,
}

trait Named {
    fn name(&self) -> &str;
}
impl Named for StepSummary {
    fn name(&self) -> &str {
        &self.step
    }
}
impl Named for StepAccounting {
    fn name(&self) -> &str {
        &self.step
    }
}

/// A slice serialised as a JSON object keyed by step name, keeping the slice's order.
struct ByStep<'a, T>(&'a [T]);

impl<T: Named + Serialize> Serialize for ByStep<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for item in self.0 {
            map.serialize_entry(item.name(), item)?;
        }
        map.end()
    }
}

/// An HdrHistogram interval log (the `.hlog` format of Java's `HistogramLogWriter`, version
/// 1.3): one line per step per reporting period, tagged `Tag=<step>`, each histogram V2
/// deflate-compressed and base64-encoded, values in µs, `Interval_Max` in ms.
///
/// The run loop feeds it every N seconds, either with the period's own measurements
/// ([`IntervalLog::write_interval`], e.g. the merge of every worker's [`Recorder::take`]) or
/// with the cumulative measurements so far ([`IntervalLog::write_cumulative`], which
/// subtracts the previous snapshot). Use one of the two per log. Read it back with
/// [`hdrhistogram::serialization::interval_log::IntervalLogIterator`], or with Java's
/// `HistogramLogProcessor -outputValueUnitRatio 1000` for ms.
pub struct IntervalLog<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
    scratch: Vec<u8>,
    previous: Recorder,
    last_end: Duration,
    intervals: u64,
}

impl<W: Write> IntervalLog<W> {
    /// Starts a log on `out`: comment lines from `comment` (may be empty), the format
    /// version, `StartTime` and `BaseTime` both `base_time` (interval timestamps are seconds
    /// since it), `MaxValueDivisor` 1000 and the column legend.
    pub fn new(mut out: W, base_time: SystemTime, comment: &str) -> Result<Self, ReportError> {
        let mut serializer = V2DeflateSerializer::new();
        {
            let mut builder = IntervalLogWriterBuilder::new();
            if !comment.is_empty() {
                builder.add_comment(comment);
            }
            builder
                .add_comment("[Histogram log format version 1.3]")
                .add_comment("[values in microseconds; Interval_Max in milliseconds]")
                .with_start_time(base_time)
                .with_base_time(base_time)
                .with_max_value_divisor(US_PER_MS);
            builder.begin_log_with(&mut out, &mut serializer)?;
        }
        out.write_all(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        )?;
        Ok(IntervalLog {
            out,
            serializer,
            scratch: Vec::new(),
            previous: Recorder::new(),
            last_end: Duration::ZERO,
            intervals: 0,
        })
    }

    /// Writes one interval: every step of `interval` (its samples of this period only), as
    /// starting `start` after the base time and lasting `length`.
    pub fn write_interval(
        &mut self,
        interval: &Recorder,
        start: Duration,
        length: Duration,
    ) -> Result<(), ReportError> {
        if start < self.last_end {
            return Err(ReportError::IntervalOrder {
                last: self.last_end,
                now: start,
            });
        }
        for s in interval.steps() {
            let tag_text = file_safe(&s.name);
            let tag = Tag::new(&tag_text);
            self.scratch.clear();
            {
                // The crate's writer owns neither its output nor its serializer, and writes
                // the `MaxValueDivisor` header line when built: build it on a scratch buffer
                // per line and drop that first line (the real header has it once).
                let mut w = IntervalLogWriterBuilder::new()
                    .with_max_value_divisor(US_PER_MS)
                    .begin_log_with(&mut self.scratch, &mut self.serializer)?;
                w.write_histogram(&s.latency, start, length, tag)
                    .map_err(|e| ReportError::Serialize(e.to_string()))?;
            }
            let body = match self.scratch.iter().position(|&b| b == b'\n') {
                Some(i) if self.scratch.starts_with(b"#[MaxValueDivisor") => &self.scratch[i + 1..],
                _ => &self.scratch[..],
            };
            self.out.write_all(body)?;
        }
        self.last_end = start + length;
        self.intervals += 1;
        Ok(())
    }

    /// Writes the interval from the previous call's `now` (or the base time) to `now`
    /// (time since the base time): `cumulative` (all samples so far) minus the previous
    /// snapshot. Errors if `now` went backwards or a histogram shrank.
    pub fn write_cumulative(
        &mut self,
        cumulative: &Recorder,
        now: Duration,
    ) -> Result<(), ReportError> {
        if now < self.last_end {
            return Err(ReportError::IntervalOrder {
                last: self.last_end,
                now,
            });
        }
        let mut delta = cumulative.clone();
        for s in &mut delta.steps {
            if let Some(p) = self.previous.step(&s.name) {
                s.latency
                    .subtract(&p.latency)
                    .map_err(|_| ReportError::NotCumulative {
                        step: s.name.clone(),
                    })?;
            }
        }
        let start = self.last_end;
        self.write_interval(&delta, start, now - start)?;
        self.previous = cumulative.clone();
        Ok(())
    }

    /// Reporting periods written so far.
    pub fn intervals_written(&self) -> u64 {
        self.intervals
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> Result<W, ReportError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Worker A: 100 messages, 1..=100 ms; worker B: 100 messages 101..=200 ms, 2 bounces.
    fn two_workers() -> (Recorder, Recorder) {
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

    #[test]
    fn table_has_percentiles_throughput_and_accounting() {
        let mut r = Recorder::new();
        r.record_sent(steps::MESSAGE, 1000);
        for i in 1..=1000u64 {
            r.record_received(steps::MESSAGE, Duration::from_micros(i * 1000));
        }
        let summary = r.summary(Duration::from_secs(10));
        let s = &summary.steps[0];
        assert_eq!(s.count, 1000);
        assert_eq!(s.throughput_per_s, 100.0);
        // 3 significant digits: within 0.1% of the exact percentile.
        for (got, want) in [
            (s.p50_ms, 500.0),
            (s.p90_ms, 900.0),
            (s.p99_ms, 990.0),
            (s.p999_ms, 999.0),
            (s.max_ms, 1000.0),
        ] {
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        }
        let table = summary.table();
        let header = table.lines().nth(1).unwrap();
        for col in [
            "step", "count", "rate/s", "p50", "p90", "p99", "p99.9", "max",
        ] {
            assert!(header.split_whitespace().any(|c| c == col), "{header}");
        }
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with("message "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "message",
                "1000",
                "100.000",
                &format!("{:.3}", s.p50_ms),
                &format!("{:.3}", s.p90_ms),
                &format!("{:.3}", s.p99_ms),
                &format!("{:.3}", s.p999_ms),
                &format!("{:.3}", s.max_ms),
            ]
        );
        // ms with 3 decimals.
        assert!(row[3].split('.').nth(1).unwrap().len() == 3);
        assert!(
            table.contains("message                        1000       1000          0          0")
        );
        assert!(table
            .trim_end()
            .ends_with("accounting: OK: 1000 sent = 1000 received + 0 bounced + 0 lost"));

        // A zero measured duration gives a zero rate, not infinity.
        assert_eq!(r.summary(Duration::ZERO).steps[0].throughput_per_s, 0.0);
    }

    #[test]
    fn table_shows_loss_loudly_and_bounce_conditions() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let table = a.summary(ms(1000)).table();
        assert!(
            table.contains("  bounced remote-server-not-found: 2"),
            "{table}"
        );
        assert!(
            table.contains("  bounced service-unavailable: 1"),
            "{table}"
        );
        assert!(
            table.lines().any(|l| l.starts_with("!!! LOSS: 1 of 205")),
            "{table}"
        );
    }

    #[test]
    fn json_has_steps_accounting_and_params() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let params = serde_json::json!({"scenario": "message", "peers": 1000, "duration_s": 2.0});
        let summary = a.summary(Duration::from_secs(2));
        let mut out = Vec::new();
        summary.write_json(&mut out, &params).unwrap();
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["params"], params);
        assert_eq!(v["measured_seconds"], 2.0);
        let m = &v["steps"]["message"];
        assert_eq!(m["count"], 200);
        assert_eq!(m["throughput_per_s"], 100.0);
        for key in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"] {
            assert!(m[key].as_f64().unwrap() > 0.0, "{key}");
        }
        assert_eq!(m["p50_ms"].as_f64().unwrap(), summary.steps[1].p50_ms);
        assert_eq!(v["steps"]["stream_setup"]["count"], 1);
        // Steps keep their order in the text.
        let steps_text = &text[text.find("\"steps\"").unwrap()..];
        let (i_setup, i_msg) = (
            steps_text.find("\"stream_setup\"").unwrap(),
            steps_text.find("\"message\"").unwrap(),
        );
        assert!(i_setup < i_msg, "{text}");
        let acc = &v["accounting"];
        assert_eq!(acc["ok"], false);
        assert_eq!(acc["sent"], 205);
        assert_eq!(acc["received"], 201);
        assert_eq!(acc["bounced"], 3);
        assert_eq!(acc["lost"], 1);
        assert_eq!(acc["excess"], 0);
        assert!(acc["summary"].as_str().unwrap().starts_with("!!! LOSS"));
        assert_eq!(
            acc["steps"]["message"]["bounced"]["remote-server-not-found"],
            2
        );
        assert_eq!(acc["steps"]["presence"]["lost"], 1);
        assert!(acc["steps"].get("stream_setup").is_none());
    }

    #[test]
    fn hgrm_files_parse_and_footer_matches() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let dir = tempfile::tempdir().unwrap();
        let paths = a.write_hgrm_files(dir.path(), "run").unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "run-stream_setup.hgrm",
                "run-message.hgrm",
                "run-presence.hgrm"
            ]
        );

        let text = std::fs::read_to_string(&paths[1]).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let mut rows = Vec::new();
        let mut footer = Vec::new();
        for l in lines {
            if l.starts_with("#[") {
                footer.push(l);
                continue;
            }
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert!(cols.len() == 4 || cols.len() == 3, "{l}");
            let value: f64 = cols[0].parse().unwrap();
            let pct: f64 = cols[1].parse().unwrap();
            let total: u64 = cols[2].parse().unwrap();
            assert_eq!(
                cols[0].split('.').nth(1).unwrap().len(),
                3,
                "ms, 3 decimals: {l}"
            );
            assert_eq!(cols[1].split('.').nth(1).unwrap().len(), 12, "{l}");
            if cols.len() == 4 {
                let inv: f64 = cols[3].parse().unwrap();
                assert!((inv - 1.0 / (1.0 - pct)).abs() < 0.01, "{l}");
            }
            rows.push((value, pct, total));
        }
        // Monotonic, from percentile 0 to 1, ending with every sample.
        assert!(rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        assert_eq!(rows.first().unwrap().1, 0.0);
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 200);
        assert!((last.0 - 200.0).abs() <= 0.2, "max ≈ 200 ms: {}", last.0);
        // 5 ticks per half distance: 0, 0.1 .. 0.5 gives 6 lines below the median.
        assert_eq!(rows.iter().filter(|r| r.1 <= 0.5).count(), 6);

        assert_eq!(footer.len(), 3, "{footer:?}");
        assert!(footer[0].starts_with("#[Mean    = ") && footer[0].contains(", StdDeviation   = "));
        let total: u64 = footer[1]
            .split("Total count    =")
            .nth(1)
            .unwrap()
            .trim_end_matches(']')
            .trim()
            .parse()
            .unwrap();
        assert_eq!(total, 200);
        let max: f64 = footer[1]
            .trim_start_matches("#[Max     =")
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(max, last.0);
        assert_eq!(
            footer[2],
            format!(
                "#[Buckets = {:12}, SubBuckets     = {:12}]",
                a.step(steps::MESSAGE).unwrap().latency().buckets(),
                2048
            )
        );
        let mean: f64 = footer[0]
            .trim_start_matches("#[Mean    =")
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((mean - 100.5).abs() < 0.2, "{mean}");
    }

    #[test]
    fn hgrm_of_an_empty_histogram_has_header_and_footer_only() {
        let mut out = Vec::new();
        write_percentile_distribution(&new_latency_histogram(), &mut out, US_PER_MS).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn interval_log_reads_back_with_the_crate_iterator() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = IntervalLog::new(Vec::new(), base, "loadgen test run").unwrap();
        // Period 1: two workers, handed over with take().
        let (mut a, mut b) = two_workers();
        let mut period = a.take();
        period.merge(&b.take());
        log.write_interval(&period, Duration::ZERO, Duration::from_secs(5))
            .unwrap();
        // Period 2: only message samples, 50 of them at 7 ms.
        for _ in 0..50 {
            b.record_received(steps::MESSAGE, ms(7));
        }
        let mut period = a.take();
        period.merge(&b.take());
        log.write_interval(&period, Duration::from_secs(5), Duration::from_secs(5))
            .unwrap();
        assert_eq!(log.intervals_written(), 2);
        // Going back in time is refused.
        assert!(matches!(
            log.write_interval(&period, Duration::from_secs(1), Duration::from_secs(1)),
            Err(ReportError::IntervalOrder { .. })
        ));
        let bytes = log.finish().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("#loadgen test run\n#[Histogram log format version 1.3]\n"));
        assert_eq!(text.matches("MaxValueDivisor").count(), 1, "{text}");

        let mut start_time = None;
        let mut base_time = None;
        let mut intervals = Vec::new();
        for entry in IntervalLogIterator::new(&bytes) {
            match entry.unwrap() {
                LogEntry::StartTime(t) => start_time = Some(t),
                LogEntry::BaseTime(t) => base_time = Some(t),
                LogEntry::Interval(ilh) => {
                    let raw = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        ilh.encoded_histogram(),
                    )
                    .unwrap();
                    let h: Histogram<u64> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
                    intervals.push((
                        ilh.tag().unwrap().as_str().to_owned(),
                        ilh.start_timestamp(),
                        ilh.duration(),
                        ilh.max(),
                        h,
                    ));
                }
            }
        }
        assert_eq!(start_time, Some(Duration::from_secs(1_700_000_000)));
        assert_eq!(base_time, Some(Duration::from_secs(1_700_000_000)));
        // Period 1 has stream_setup, message, presence; period 2 the same steps (take() keeps them).
        let tags: Vec<&str> = intervals.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(
            tags,
            [
                "stream_setup",
                "message",
                "presence",
                "stream_setup",
                "message",
                "presence"
            ]
        );
        let (_, start, len, max_ms, h) = &intervals[1];
        assert_eq!((*start, *len), (Duration::ZERO, Duration::from_secs(5)));
        assert_eq!(h.len(), 200);
        assert!(
            (max_ms - 200.0).abs() <= 0.2,
            "Interval_Max in ms: {max_ms}"
        );
        let (_, start, _, _, h) = &intervals[4];
        assert_eq!(*start, Duration::from_secs(5));
        assert_eq!(h.len(), 50);
        assert!(h.equivalent(h.max(), 7_000));
        assert_eq!(intervals[3].4.len(), 0);
    }

    #[test]
    fn interval_log_from_cumulative_snapshots_writes_deltas() {
        let mut log = IntervalLog::new(Vec::new(), SystemTime::UNIX_EPOCH, "").unwrap();
        let mut cumulative = Recorder::new();
        for i in 0..10 {
            cumulative.record_received("message", ms(1 + i));
        }
        log.write_cumulative(&cumulative, Duration::from_secs(1))
            .unwrap();
        for _ in 0..4 {
            cumulative.record_received("message", ms(30));
        }
        log.write_cumulative(&cumulative, Duration::from_secs(2))
            .unwrap();
        // A recorder with fewer samples than the last snapshot is not cumulative.
        let mut shrunk = Recorder::new();
        shrunk.record_received("message", ms(1));
        assert!(matches!(
            log.write_cumulative(&shrunk, Duration::from_secs(3)),
            Err(ReportError::NotCumulative { step }) if step == "message"
        ));
        let bytes = log.finish().unwrap();
        let got: Vec<(Duration, Duration, u64, u64)> = IntervalLogIterator::new(&bytes)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(ilh) => {
                    let raw = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        ilh.encoded_histogram(),
                    )
                    .unwrap();
                    let h: Histogram<u64> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
                    Some((ilh.start_timestamp(), ilh.duration(), h.len(), h.max()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0, got[0].1, got[0].2),
            (Duration::ZERO, Duration::from_secs(1), 10)
        );
        assert_eq!(
            (got[1].0, got[1].1, got[1].2),
            (Duration::from_secs(1), Duration::from_secs(1), 4)
        );
        assert!(new_latency_histogram().equivalent(got[1].3, 30_000));
    }

    #[test]
    fn svg_plot_has_one_line_per_step() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spectrum.svg");
        a.write_svg(&path, "loadgen: message").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(!svg.is_empty());
        assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for label in [
            "loadgen: message",
            "message",
            "presence",
            "stream_setup",
            "latency (ms)",
            "percentile",
            "99%",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        // Three data lines plus three legend swatches.
        assert!(
            svg.matches("<polyline").count() >= 6,
            "{}",
            svg.matches("<polyline").count()
        );
        // An empty recorder still plots (empty axes).
        let empty = Recorder::new().percentile_spectrum_svg("empty").unwrap();
        assert!(empty.contains("<svg"));
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
        assert_eq!(file_safe("a b,c/d"), "a_b_c_d");
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
    }
}
