//! The `.hgrm` output: HdrHistogram's standard percentile distribution, one file per step
//! ([`Recorder::write_hgrm_files`], [`write_percentile_distribution`]).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use super::{file_safe, Recorder, ReportError, TICKS_PER_HALF_DISTANCE, US_PER_MS};

impl Recorder {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::two_workers;
    use super::super::{new_latency_histogram, steps};
    use super::*;

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
    fn sub_bucket_counts() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
    }
}
