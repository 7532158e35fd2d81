//! A [`Recorder`] as JSON, for the processes of a split run (`loadgen --procs`): each child
//! sends its recorders to the parent, which merges them as if one process had recorded
//! everything ([`RecorderWire`]).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

use super::record::StepStats;
use super::{Recorder, ReportError};

/// One step of a [`RecorderWire`]: its counters and its latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepWire {
    /// Step name.
    pub name: String,
    /// The latency histogram (µs), HdrHistogram V2 serialization (uncompressed), base64.
    pub histogram_v2: String,
    /// Latencies above 60 s, recorded as 60 s.
    pub saturated: u64,
    /// Stanzas sent.
    pub sent: u64,
    /// Stanzas received.
    pub received: u64,
    /// Stanzas bounced, by RFC 6120 §8.3.3 condition.
    pub bounced: BTreeMap<String, u64>,
    /// Stanzas marked lost.
    pub lost: u64,
}

/// A [`Recorder`] in a serializable form: its steps in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecorderWire {
    /// The steps, in the recorder's order.
    pub steps: Vec<StepWire>,
}

impl Recorder {
    /// This recorder in its serializable form.
    ///
    /// Errors: [`ReportError::Serialize`] when a histogram cannot be serialized.
    pub fn to_wire(&self) -> Result<RecorderWire, ReportError> {
        let mut ser = V2Serializer::new();
        let mut steps = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let mut buf = Vec::new();
            ser.serialize(&s.latency, &mut buf)
                .map_err(|e| ReportError::Serialize(format!("step `{}`: {e:?}", s.name)))?;
            steps.push(StepWire {
                name: s.name.clone(),
                histogram_v2: B64.encode(&buf),
                saturated: s.saturated,
                sent: s.sent,
                received: s.received,
                bounced: s.bounced.clone(),
                lost: s.lost,
            });
        }
        Ok(RecorderWire { steps })
    }

    /// The recorder `wire` describes; its histograms have the usual bounds (1 µs .. 60 s,
    /// 3 significant digits) whatever the serialized ones had.
    ///
    /// Errors: [`ReportError::Serialize`] naming the step whose histogram is not base64, not
    /// a V2 histogram, or holds values beyond 60 s.
    pub fn from_wire(wire: &RecorderWire) -> Result<Recorder, ReportError> {
        let mut de = Deserializer::new();
        let mut steps = Vec::with_capacity(wire.steps.len());
        for w in &wire.steps {
            let bad = |what: String| ReportError::Serialize(format!("step `{}`: {what}", w.name));
            let bytes = B64
                .decode(&w.histogram_v2)
                .map_err(|e| bad(format!("histogram_v2 is not base64: {e}")))?;
            let h: hdrhistogram::Histogram<u64> = de
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| bad(format!("histogram_v2: {e:?}")))?;
            let mut stats = StepStats::new(&w.name);
            stats
                .latency
                .add(&h)
                .map_err(|e| bad(format!("histogram_v2 does not fit 1 µs .. 60 s: {e:?}")))?;
            stats.saturated = w.saturated;
            stats.sent = w.sent;
            stats.received = w.received;
            stats.bounced = w.bounced.clone();
            stats.lost = w.lost;
            steps.push(stats);
        }
        Ok(Recorder { steps })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::two_workers;
    use super::*;

    #[test]
    fn recorders_round_trip_through_json() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let text = serde_json::to_string(&a.to_wire().unwrap()).unwrap();
        let back = Recorder::from_wire(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back.accounting(), a.accounting());
        for (x, y) in a.steps().zip(back.steps()) {
            assert_eq!(x.name(), y.name());
            assert_eq!(x.latency(), y.latency());
            assert_eq!(x.saturated(), y.saturated());
        }
        let mut bad = a.to_wire().unwrap();
        bad.steps[0].histogram_v2 = "!!".into();
        let e = Recorder::from_wire(&bad).unwrap_err().to_string();
        assert!(e.contains("step `stream_setup`"), "{e}");
    }
}
