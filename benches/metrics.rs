//! Counting a per-stanza counter: by family and labels ([`Metrics::count`], a hash of the
//! strings, a bucket look-up and a comparison per count) against a handle resolved once
//! ([`Metrics::counter_id`], then [`Metrics::add`]: an index into a vector), as the
//! runtime counts `stanzas{dir,kind}` and `bytes{proto,dir}` (issue 20 item 4).
//!
//! The metrics hold what a busy shard's do: the 16 `stanzas{dir,kind}` and 4
//! `bytes{proto,dir}` counters plus 40 others (bounces, auth results, stream errors). Each
//! iteration counts one stanza received and one sent, as a routed S2S stanza does
//! (`stanzas{dir=s2s_in,kind=iq}`, `stanzas{dir=s2s_out,kind=iq}`).
//!
//! `cargo bench --bench metrics`; the ratio is that of the two times criterion prints.
//! In-memory, one thread, a few seconds.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use fedrouter::metrics::Metrics;

/// Metrics with the counters a running shard has, each counted once.
fn populated() -> Metrics {
    let mut m = Metrics::new();
    for dir in ["s2s_in", "s2s_out", "c2s_in", "c2s_out"] {
        for kind in ["message", "presence", "iq", "other"] {
            m.count("stanzas", &[("dir", dir), ("kind", kind)], 1);
        }
    }
    for proto in ["s2s", "c2s"] {
        for dir in ["in", "out"] {
            m.count("bytes", &[("proto", proto), ("dir", dir)], 1);
        }
    }
    let conditions = [
        "remote-server-not-found",
        "remote-server-timeout",
        "resource-constraint",
        "service-unavailable",
        "item-not-found",
        "not-authorized",
        "policy-violation",
        "recipient-unavailable",
        "bad-request",
        "internal-server-error",
    ];
    for c in conditions {
        m.count("bounces", &[("condition", c)], 1);
        m.count("stream_errors", &[("dir", "in"), ("condition", c)], 1);
        m.count("stream_errors", &[("dir", "out"), ("condition", c)], 1);
        m.count(
            "auth",
            &[("proto", "s2s"), ("method", c), ("result", "fail")],
            1,
        );
    }
    m
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut g = c.benchmark_group("metrics/routed-stanza");
    g.bench_function("count-by-labels", |b| {
        let mut m = populated();
        b.iter(|| {
            m.count(
                "stanzas",
                &[("dir", black_box("s2s_in")), ("kind", black_box("iq"))],
                1,
            );
            m.count(
                "stanzas",
                &[("dir", black_box("s2s_out")), ("kind", black_box("iq"))],
                1,
            );
        })
    });
    g.bench_function("handle", |b| {
        let mut m = populated();
        let ids = [
            m.counter_id("stanzas", &[("dir", "s2s_in"), ("kind", "iq")]),
            m.counter_id("stanzas", &[("dir", "s2s_out"), ("kind", "iq")]),
        ];
        b.iter(|| {
            let [i, o] = black_box(ids);
            m.add(i, 1);
            m.add(o, 1);
        })
    });
    g.finish();
    c.final_summary();
}
