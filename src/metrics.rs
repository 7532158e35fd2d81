//! Metrics: per-shard counters and HDR histograms, merged only when read.
//!
//! Each shard thread owns one [`Metrics`] (a thread-local in the runtime): recording is a
//! plain `u64` increment or an HDR histogram record on that thread, with no atomics and no
//! locks on the hot path. A scrape asks every shard for a copy ([`Metrics::clone`]),
//! [`Metrics::merge`]s them and renders Prometheus / OpenMetrics text
//! ([`Metrics::render`]) or HdrHistogram's percentile distribution (`.hgrm`,
//! [`Metrics::hgrm`]).
//!
//! Latencies are recorded in microseconds (1 µs to 60 s, 3 significant digits) and
//! exported in seconds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram's name, for [`Metrics::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Latency {
    /// A stanza from the socket read that brought it to the socket write that sent it on.
    Routing,
    /// A stanza from its socket read to its processing on the owner shard (stanzas that
    /// cross shards only).
    Handoff,
    /// A DNS SRV look-up for a remote domain.
    Dns,
    /// A TCP connect to a remote server's address.
    Connect,
    /// An outbound S2S stream from TCP connected to authenticated.
    Negotiation,
    /// A roster change from submission to the store to its durable commit being answered.
    StoreCommit,
    /// A stanza on an outbound S2S stream from its bytes entering the stream to the
    /// peer's XEP-0198 acknowledgement covering it.
    SmAck,
    /// A stanza from its publication by one cluster node to its processing by the owner
    /// node's shard (wall clocks of both nodes: meaningful on one host or with NTP).
    ClusterHandoff,
}

impl Latency {
    /// All of them, in export order.
    pub const ALL: [Latency; 8] = [
        Latency::Routing,
        Latency::Handoff,
        Latency::Dns,
        Latency::Connect,
        Latency::Negotiation,
        Latency::StoreCommit,
        Latency::SmAck,
        Latency::ClusterHandoff,
    ];

    /// The metric family name (`fedrouter_<name>_seconds`) and its `.hgrm` name.
    pub fn name(self) -> &'static str {
        match self {
            Latency::Routing => "routing_latency",
            Latency::Handoff => "handoff_latency",
            Latency::Dns => "dns_lookup",
            Latency::Connect => "s2s_connect",
            Latency::Negotiation => "s2s_negotiation",
            Latency::StoreCommit => "store_commit",
            Latency::SmAck => "s2s_ack_latency",
            Latency::ClusterHandoff => "cluster_handoff_latency",
        }
    }

    /// The family's help text.
    pub fn help(self) -> &'static str {
        match self {
            Latency::Routing => "Stanza latency from socket read to socket write.",
            Latency::Handoff => "Stanza latency from socket read to processing on its owner shard.",
            Latency::Dns => "DNS SRV look-up time for remote domains.",
            Latency::Connect => "TCP connect time to remote servers.",
            Latency::Negotiation => {
                "Outbound S2S stream set-up time, TCP connected to authenticated."
            }
            Latency::StoreCommit => "Roster change time from submission to durable commit.",
            Latency::SmAck => {
                "Outbound S2S stanza time from written into the stream to acknowledged by the peer (XEP-0198)."
            }
            Latency::ClusterHandoff => {
                "Stanza time from publication by one cluster node to processing on its owner node."
            }
        }
    }

    /// Parses [`Latency::name`].
    pub fn from_name(name: &str) -> Option<Latency> {
        Latency::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// Classic histogram bucket bounds, in seconds (`le` labels).
pub const BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Quantiles exported as gauges.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// A labelled counter key: family and label pairs, e.g.
/// `("stanzas_total", [("dir","s2s_in"),("kind","iq")])`.
type Key = (&'static str, Vec<(&'static str, String)>);

/// A counter resolved once by [`Metrics::counter_id`] (family and labels), then counted by
/// [`Metrics::add`] as an index into the counters' values, with no hashing or label
/// comparison per count.
///
/// An id is valid for the [`Metrics`] that resolved it and for its clones (a clone keeps
/// every counter at the same index); [`Metrics::merge`] resolves by labels, so merged
/// metrics need no ids. Using an id with other metrics panics or counts another counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterId(u32);

/// Labelled values: resolved by a hash of the family and label strings, then compared
/// (an entry is allocated once, when first resolved), to an index into `values`.
#[derive(Clone, Debug, Default)]
struct Table {
    /// Key hash → indices of the keys with that hash.
    index: HashMap<u64, Vec<u32>>,
    keys: Vec<Key>,
    values: Vec<u64>,
    /// Whether the counter was ever counted: a counter only resolved is not exported.
    counted: Vec<bool>,
}

fn hash_key(family: &str, labels: &[(&str, &str)]) -> u64 {
    // FNV-1a (the `fnv` crate, as `router::shard_of`): stable, no allocation; a 0xff
    // byte (never in UTF-8) ends each part, so ("ab", "c") and ("a", "bc") differ.
    use std::hash::Hasher as _;
    let mut h = fnv::FnvHasher::default();
    let mut eat = |b: &[u8]| {
        h.write(b);
        h.write_u8(0xff);
    };
    eat(family.as_bytes());
    for (k, v) in labels {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    h.finish()
}

fn same(key: &Key, family: &str, labels: &[(&str, &str)]) -> bool {
    key.0 == family
        && key.1.len() == labels.len()
        && key
            .1
            .iter()
            .zip(labels)
            .all(|((k, v), (lk, lv))| k == lk && v == lv)
}

impl Table {
    fn resolve(&mut self, family: &'static str, labels: &[(&'static str, &str)]) -> CounterId {
        let bucket = self.index.entry(hash_key(family, labels)).or_default();
        if let Some(&i) = bucket
            .iter()
            .find(|&&i| same(&self.keys[i as usize], family, labels))
        {
            return CounterId(i);
        }
        let i = u32::try_from(self.keys.len()).expect("fewer than 2^32 counters");
        self.keys.push((
            family,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        ));
        self.values.push(0);
        self.counted.push(false);
        bucket.push(i);
        CounterId(i)
    }

    fn add(&mut self, id: CounterId, n: u64) {
        let i = id.0 as usize;
        self.values[i] += n;
        self.counted[i] = true;
    }

    fn entries(&self) -> BTreeMap<&Key, u64> {
        self.keys
            .iter()
            .zip(&self.values)
            .zip(&self.counted)
            .filter(|(_, counted)| **counted)
            .map(|((k, v), _)| (k, *v))
            .collect()
    }
}

/// One shard's metrics, or several merged.
#[derive(Clone, Debug)]
pub struct Metrics {
    counters: Table,
    gauges: BTreeMap<Key, i64>,
    latencies: Vec<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The counter families: name and help.
const COUNTER_HELP: &[(&str, &str)] = &[
    ("accept_errors", "Failed accept calls on a listener, by cause: fd_limit (out of file descriptors, EMFILE/ENFILE) or other; the listener backs off from 50 ms to 1 s while they fail."),
    ("cluster_forwarded", "Stanzas published to the cluster node that owns their destination, by node."),
    ("cluster_received", "Stanzas received from other cluster nodes."),
    ("s2s_verify_only_streams", "Verify-only outbound S2S streams opened (XEP-0220 §2.1.3): they carry our db:verify requests and authenticate nothing, for a domain whose stream is an inbound bidirectional one (XEP-0288) or that another cluster node owns."),
    ("cluster_verify_streams_closed", "Outbound streams to a remote domain another node owns, closed once the dialback verifications they carried were answered."),
    ("cluster_session_messages", "Messages between a client's access node and its home node (cluster.c2s_sessions = \"stay\"), by dir: out (published), in (received), returned (could not be published)."),
    ("cluster_session_lost", "Client stanzas that could not be relayed to their session's home node, by cause."),
    ("cluster_forward_refused", "Stanzas bounced (remote-server-timeout) because the way to their owner node was full, by node (backlog: its backlog in the NATS thread)."),
    ("cluster_hops_exceeded", "Stanzas handled here after MAX_HOPS forwards between nodes whose views disagreed."),
    ("cluster_reforwarded", "Stanzas from another node forwarded again because ownership had moved."),
    ("cluster_nats_reconnects", "Reconnections to NATS after a loss."),
    ("cluster_lost", "Stanzas between nodes lost: dropped by NATS (slow consumer) or not taken by a busy shard within 1 s."),
    ("cluster_backlog_full", "Stanzas bounced because the backlog for their node (cluster.backlog) was full."),
    ("cluster_outbox_resent", "Subscription requests sent again from the durable outbox after a member died or NATS came back."),
    ("cluster_unconfirmed_at_death", "Stanzas published to cluster members that died before confirming them in a heartbeat: possibly lost with the dead member's memory, by node (the member that died)."),
    ("cluster_membership_changes", "Changes of the cluster's live member set."),
    ("c2s_redirects", "Clients sent to the cluster node that owns their bare JID (see-other-host)."),
    (
        "flood_refused",
        "Requests refused by a flood limit ([limits]), by reason: subscription_rate, pending_per_domain, pending_per_user, c2s_unauthenticated_per_address, c2s_auth_failures_per_address.",
    ),
    (
        "directory_checks",
        "C2S password checks answered by the LDAP directory (auth.backend = ldap), by result: accepted, accepted_cached, rejected, unavailable, busy (queue full).",
    ),
    (
        "stanzas",
        "Stanzas received (dir=*_in) and sent (dir=*_out) by kind.",
    ),
    (
        "bytes",
        "Bytes read and written on sockets by protocol and direction.",
    ),
    (
        "bounces",
        "Stanzas bounced to their sender, by error condition.",
    ),
    (
        "auth",
        "Stream authentications by protocol, method and result.",
    ),
    (
        "stream_errors",
        "Stream errors received from peers (RFC 6120 4.9), by stream direction and condition.",
    ),
    (
        "bounced_by_cause",
        "Stanzas for remote domains bounced, by cause (queue_full, write_stall, backoff, unreachable, auth_failed, shutdown).",
    ),
    (
        "undeliverable_errors",
        "Error stanzas that could not be delivered and, per RFC 6120 8.3.1, were not bounced, by cause (the remote domain's own count is dropped_errors in /status).",
    ),
    (
        "store_failures",
        "Store requests that failed in the database itself (I/O error, disk full), each request of a failed group commit counted; nothing of them was stored and their clients got an error.",
    ),
    (
        "sm_acknowledged",
        "Stanzas we sent on S2S streams (outbound, and inbound bidirectional ones, XEP-0288) that the peer acknowledged (XEP-0198).",
    ),
    (
        "sm_resent",
        "Stanzas the socket had taken but the peer never acknowledged when an outbound S2S stream ended (XEP-0198): queued again for the next stream.",
    ),
    (
        "s2s_multiplexed_domains",
        "Remote domains authenticated on an outbound S2S stream to another domain hosted at the same SRV target (XEP-0220 §2.4 multiplexing) instead of a connection of their own.",
    ),
    (
        "s2s_negotiation_retries",
        "Outbound S2S streams that ended before authenticating us for a passing reason (dropped, reset, connection-timeout) and were opened once more instead of bouncing what waited.",
    ),
    (
        "stalled_streams_closed",
        "Streams closed because their socket accepted no byte for the write-stall timeout, by protocol.",
    ),
    (
        "offline_stored",
        "Messages stored offline (XEP-0160) for a local user with no available resource, counted once committed.",
    ),
    (
        "unknown_user_cache_hits",
        "Stanzas from others to a bare JID without an account refused without asking the store: the shard remembered the store's answer (c2s.unknown_user_cache).",
    ),
    (
        "offline_delivered",
        "Stored offline messages (XEP-0160) handed to a user's session at its available presence.",
    ),
    (
        "offline_refused",
        "Messages for a user with no available resource refused instead of stored offline, by cause (disabled, full, no_such_user, store_error; chat_states_only: dropped, not answered).",
    ),
    (
        "c2s_sm_enabled",
        "Client streams that enabled stream management (XEP-0198 §3).",
    ),
    (
        "c2s_registrations",
        "Accounts created by in-band registration (XEP-0077 3.1, c2s.allow_registration).",
    ),
    (
        "c2s_sessions_detached",
        "Client sessions whose stream dropped, kept detached for resumption (XEP-0198 §5).",
    ),
    (
        "c2s_sessions_resumed",
        "Detached client sessions resumed by a new stream (XEP-0198 §5).",
    ),
    (
        "c2s_unacked_redelivered",
        "Stanzas a client never acknowledged delivered elsewhere when its session ended (XEP-0198 §5, RFC 6121 §8.5).",
    ),
    (
        "store_reconnects",
        "Reconnections to the PostgreSQL store (store.backend = postgres) after its connection was lost.",
    ),
    (
        "store_connection_failures",
        "PostgreSQL store connections that failed: connection attempts refused or timed out, and connections found broken by a request (which failed, unacknowledged).",
    ),
    (
        "reads_paused_ms",
        "Milliseconds stream readers spent paused waiting for room in the cross-shard inboxes or the store, by protocol.",
    ),
];

/// The gauge families: name and help.
const GAUGE_HELP: &[(&str, &str)] = &[
    ("cluster_nats_up", "1 while the NATS connection of the cluster is up."),
    ("cluster_relayed_clients", "Client connections of this node whose session's home is another node (cluster.c2s_sessions = \"stay\")."),
    ("cluster_members_up", "Live cluster members, this node included."),
    ("cluster_epoch", "The cluster membership epoch (changes of the live set, plus one)."),
    (
        "directory_up",
        "Whether the LDAP directory (auth.backend = ldap) answered the last check or probe: 1 up, 0 unreachable or not asked yet.",
    ),
    (
        "directory_state_seconds",
        "Seconds the LDAP directory has been in its current state (label state: up, unreachable or unknown).",
    ),
    (
        "store_up",
        "Whether the PostgreSQL store (store.backend = postgres) answered its last request: 1 up, 0 down.",
    ),
    ("streams", "Open streams by protocol, direction and state."),
    ("queue_depth", "Items waiting, by queue (dns: look-ups waiting for one of the dns.max_in_flight query slots of their shard)."),
    (
        "congested_destinations",
        "Remote domains whose queue is full (new stanzas for them are bounced with resource-constraint).",
    ),
    (
        "write_stalled_streams",
        "Streams whose socket has accepted no byte for over a second while bytes wait, by protocol.",
    ),
];

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Metrics {
        Metrics {
            counters: Table::default(),
            gauges: BTreeMap::new(),
            latencies: Latency::ALL
                .iter()
                .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"))
                .collect(),
        }
    }

    /// Adds `n` to counter `family` (one of [`COUNTER_HELP`]'s, e.g. `stanzas`, `bytes`,
    /// `bounces`) with `labels`: resolves it ([`Metrics::counter_id`]: a hash of the
    /// strings and a comparison) on every call. No allocation once the counter exists.
    /// Per-stanza counts use a resolved [`CounterId`] and [`Metrics::add`] instead.
    pub fn count(&mut self, family: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let id = self.counters.resolve(family, labels);
        self.counters.add(id, n);
    }

    /// The handle of counter `family` with `labels`, for [`Metrics::add`]: created (one
    /// allocation of its key) the first time, found by hashing `family` and `labels`
    /// after that. A counter only resolved, never added to, is not exported by
    /// [`Metrics::render`] (it is not known to have happened, as with [`Metrics::count`]).
    pub fn counter_id(
        &mut self,
        family: &'static str,
        labels: &[(&'static str, &str)],
    ) -> CounterId {
        self.counters.resolve(family, labels)
    }

    /// Adds `n` to the counter `id` ([`Metrics::counter_id`] of these metrics or of what
    /// they were cloned from): one index into a vector, no hashing, no allocation.
    ///
    /// # Panics
    /// If `id` was resolved by other metrics that have more counters than these.
    pub fn add(&mut self, id: CounterId, n: u64) {
        self.counters.add(id, n);
    }

    /// Sets gauge `family` (`streams`, `queue_depth`) with `labels` to `value`.
    pub fn set_gauge(&mut self, family: &'static str, labels: &[(&'static str, &str)], value: i64) {
        let key = (
            family,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.gauges.insert(key, value);
    }

    /// Adds `value` to gauge `family` with `labels`.
    pub fn add_gauge(&mut self, family: &'static str, labels: &[(&'static str, &str)], value: i64) {
        let key = (
            family,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        *self.gauges.entry(key).or_insert(0) += value;
    }

    /// Records one latency (clamped to 1 µs – 60 s).
    pub fn observe(&mut self, which: Latency, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.latencies[which as usize].record(us);
    }

    /// A counter's value (0 when never counted).
    pub fn counter(&self, family: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .entries()
            .into_iter()
            .filter(|((f, l), _)| {
                *f == family
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// One latency histogram (µs).
    pub fn histogram(&self, which: Latency) -> &Histogram<u64> {
        &self.latencies[which as usize]
    }

    /// Adds `other` into `self`: counters and gauges summed, histograms merged.
    pub fn merge(&mut self, other: &Metrics) {
        for (k, v) in other.counters.entries() {
            let labels: Vec<(&'static str, &str)> =
                k.1.iter().map(|(lk, lv)| (*lk, lv.as_str())).collect();
            let id = self.counters.resolve(k.0, &labels);
            self.counters.add(id, v);
        }
        for (k, v) in &other.gauges {
            *self.gauges.entry(k.clone()).or_insert(0) += v;
        }
        for (a, b) in self.latencies.iter_mut().zip(&other.latencies) {
            let _ = a.add(b);
        }
    }

    /// Renders Prometheus text exposition format (version 0.0.4, also accepted by
    /// OpenMetrics parsers for these types): counters `fedrouter_<family>_total`, gauges
    /// `fedrouter_<family>`, and per [`Latency`] a classic histogram
    /// `fedrouter_<name>_seconds` with [`BUCKETS`] plus gauges
    /// `fedrouter_<name>_quantile_seconds{quantile=…}` for [`QUANTILES`].
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        for (family, help) in COUNTER_HELP {
            let _ = writeln!(out, "# HELP fedrouter_{family}_total {help}");
            let _ = writeln!(out, "# TYPE fedrouter_{family}_total counter");
            for ((f, labels), v) in self.counters.entries() {
                if f == family {
                    let _ = writeln!(out, "fedrouter_{family}_total{} {v}", render_labels(labels));
                }
            }
        }
        for (family, help) in GAUGE_HELP {
            let _ = writeln!(out, "# HELP fedrouter_{family} {help}");
            let _ = writeln!(out, "# TYPE fedrouter_{family} gauge");
            for ((f, labels), v) in &self.gauges {
                if f == family {
                    let _ = writeln!(out, "fedrouter_{family}{} {v}", render_labels(labels));
                }
            }
        }
        for which in Latency::ALL {
            let h = self.histogram(which);
            let name = which.name();
            let _ = writeln!(out, "# HELP fedrouter_{name}_seconds {}", which.help());
            let _ = writeln!(out, "# TYPE fedrouter_{name}_seconds histogram");
            for le in BUCKETS {
                let us = (le * 1e6).round() as u64;
                let n = h.count_between(0, us);
                let _ = writeln!(out, "fedrouter_{name}_seconds_bucket{{le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "fedrouter_{name}_seconds_bucket{{le=\"+Inf\"}} {}",
                h.len()
            );
            let sum: f64 = h
                .iter_recorded()
                .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                .sum::<f64>()
                / 1e6;
            let _ = writeln!(out, "fedrouter_{name}_seconds_sum {sum}");
            let _ = writeln!(out, "fedrouter_{name}_seconds_count {}", h.len());
            let _ = writeln!(
                out,
                "# HELP fedrouter_{name}_quantile_seconds {} Quantiles of the HDR histogram.",
                which.help()
            );
            let _ = writeln!(out, "# TYPE fedrouter_{name}_quantile_seconds gauge");
            for q in QUANTILES {
                let v = h.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "fedrouter_{name}_quantile_seconds{{quantile=\"{q}\"}} {v}"
                );
            }
        }
        out
    }

    /// HdrHistogram's percentile distribution text (the `.hgrm` format of
    /// `HistogramLogProcessor` and HdrHistogram's plotter) of one latency, values in
    /// milliseconds, 5 ticks per half distance.
    pub fn hgrm(&self, which: Latency) -> String {
        let h = self.histogram(which);
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let scale = 1000.0; // µs → ms
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            let total = v.count_since_last_iteration();
            let _ = total;
            let count = h.count_between(0, v.value_iterated_to());
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.3} {q:>14.12} {count:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>14.12} {count:>10}");
            }
        }
        let mean = h.mean() / scale;
        let stdev = h.stdev() / scale;
        let _ = writeln!(
            out,
            "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
        );
        let _ = writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            h.max() as f64 / scale,
            h.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
            h.buckets(),
            h.distinct_values()
        );
        out
    }
}

fn render_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_fnv1a_with_part_ends() {
        // FNV-1a over each part followed by 0xff, computed independently.
        assert_eq!(hash_key("up", &[]), 0x4c48_1a19_3dc3_92cd);
        assert_eq!(
            hash_key("stanzas_total", &[("dir", "s2s_in"), ("kind", "iq")]),
            0x1ecd_0ffc_0d90_7f24
        );
        assert_ne!(hash_key("ab", &[("c", "")]), hash_key("a", &[("bc", "")]));
    }

    /// Every counter family the crate counts (a string literal as the first argument of
    /// `m.count(…)`, `m.counter_id(…)` or `count_static(…)` in `src/`) is exported by
    /// [`Metrics::render`]: a family missing from [`COUNTER_HELP`] would be counted and
    /// never shown.
    #[test]
    fn every_counted_family_is_rendered() {
        fn sources(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
            for entry in std::fs::read_dir(dir).expect("read src") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("read source");
                    out.push((path, text));
                }
            }
        }
        let mut files = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut families = Vec::new();
        // This file defines `count` (and names it in this test), it counts nothing.
        for (path, text) in files.iter().filter(|(p, _)| !p.ends_with("metrics.rs")) {
            for call in ["m.count(", "m.counter_id(", "count_static("] {
                for (at, _) in text.match_indices(call) {
                    let rest = text[at + call.len()..].trim_start();
                    if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                        families.push((name.to_owned(), path.display().to_string()));
                    }
                }
            }
        }
        assert!(families.iter().any(|(f, _)| f == "stanzas"), "{families:?}");
        for (family, path) in &families {
            assert!(
                COUNTER_HELP.iter().any(|(f, _)| f == family),
                "counter family {family} (counted in {path}) is not in COUNTER_HELP: \
                 /metrics would never show it"
            );
        }
    }

    /// A handle counts the same counter as its labels, survives a clone, and a counter
    /// only resolved is not exported.
    #[test]
    fn handles_count_the_labelled_counter() {
        let mut m = Metrics::new();
        let unused = m.counter_id("bounces", &[("condition", "gone")]);
        let id = m.counter_id("stanzas", &[("dir", "s2s_in"), ("kind", "iq")]);
        assert_ne!(id, unused);
        assert_eq!(
            m.counter_id("stanzas", &[("dir", "s2s_in"), ("kind", "iq")]),
            id
        );
        m.add(id, 2);
        m.count("stanzas", &[("dir", "s2s_in"), ("kind", "iq")], 1);
        let mut copy = m.clone();
        copy.add(id, 4);
        assert_eq!(
            m.counter("stanzas", &[("dir", "s2s_in"), ("kind", "iq")]),
            3
        );
        assert_eq!(
            copy.counter("stanzas", &[("dir", "s2s_in"), ("kind", "iq")]),
            7
        );
        let text = copy.render();
        assert!(
            text.contains("fedrouter_stanzas_total{dir=\"s2s_in\",kind=\"iq\"} 7"),
            "{text}"
        );
        assert!(!text.contains("gone"), "{text}");
        let mut merged = Metrics::new();
        merged.merge(&copy);
        merged.merge(&m);
        assert_eq!(merged.render(), {
            let mut both = Metrics::new();
            both.count("stanzas", &[("dir", "s2s_in"), ("kind", "iq")], 10);
            both.render()
        });
    }

    #[test]
    fn merge_sums_and_renders() {
        let mut a = Metrics::new();
        let mut b = Metrics::new();
        a.count("stanzas", &[("dir", "s2s_in"), ("kind", "iq")], 2);
        b.count("stanzas", &[("dir", "s2s_in"), ("kind", "iq")], 3);
        a.observe(Latency::Routing, Duration::from_micros(40));
        b.observe(Latency::Routing, Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(
            a.counter("stanzas", &[("dir", "s2s_in"), ("kind", "iq")]),
            5
        );
        assert_eq!(a.histogram(Latency::Routing).len(), 2);
        let text = a.render();
        assert!(
            text.contains("fedrouter_stanzas_total{dir=\"s2s_in\",kind=\"iq\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("fedrouter_routing_latency_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fedrouter_routing_latency_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        let hgrm = a.hgrm(Latency::Routing);
        assert!(hgrm.contains("Total count    =            2"), "{hgrm}");
    }
}
