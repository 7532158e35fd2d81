//! The `.hlog` output: an HdrHistogram interval log, one line per step per reporting period
//! ([`IntervalLog`]).

use std::io::Write;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use super::{file_safe, Recorder, ReportError, US_PER_MS};

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
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::Histogram;

    use super::super::fixtures::{ms, two_workers};
    use super::super::{new_latency_histogram, steps};
    use super::*;

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
}
