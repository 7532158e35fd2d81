//! The JSON output: [`Summary::to_json`], per-step objects keyed by step name in step order.

use std::io::Write;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{ReportError, StepAccounting, StepSummary, Summary};

impl Summary {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixtures::two_workers;

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
}
