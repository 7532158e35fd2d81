//! The text output: [`Summary::write_table`], the percentile and accounting tables printed
//! on stdout.

use std::fmt::Write as _;
use std::io::{self, Write};

#[cfg(doc)]
use super::Accounting;
use super::Summary;

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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixtures::{ms, two_workers};
    use super::super::{steps, Recorder};

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
}
