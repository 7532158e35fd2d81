//! This shard thread's [`Metrics`] and the handles of its per-stanza counters.
//!
//! Each shard thread owns one [`Metrics`] in a thread-local (merged with the others' only
//! when read, see [`crate::metrics`]). Counts made once per stanza or per socket read and
//! write go through [`CounterId`]s resolved once per thread ([`Hot`]): an index into a
//! vector instead of hashing the family and label strings on every count
//! (`benches/metrics.rs` compares the two). Rare counts (errors, authentications,
//! bounces) keep [`Metrics::count`] by labels.

use std::cell::RefCell;
use std::sync::Arc;

use crate::metrics::{CounterId, Metrics};

/// The direction label of `stanzas{dir,kind}`: the protocol, and whether the stanza was
/// received (`*_in`) or sent (`*_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StanzaDir {
    /// Received on an S2S stream.
    S2sIn,
    /// Queued for an S2S stream.
    S2sOut,
    /// Received on a client stream.
    C2sIn,
    /// Sent to a client session.
    C2sOut,
}

impl StanzaDir {
    const ALL: [StanzaDir; 4] = [
        StanzaDir::S2sIn,
        StanzaDir::S2sOut,
        StanzaDir::C2sIn,
        StanzaDir::C2sOut,
    ];

    fn label(self) -> &'static str {
        match self {
            StanzaDir::S2sIn => "s2s_in",
            StanzaDir::S2sOut => "s2s_out",
            StanzaDir::C2sIn => "c2s_in",
            StanzaDir::C2sOut => "c2s_out",
        }
    }
}

/// The `kind` labels of `stanzas{dir,kind}`, by index (see [`kind_index`]).
const KINDS: [&str; 4] = ["message", "presence", "iq", "other"];

/// The index in [`KINDS`] of a stanza's element name (`other` for anything else).
fn kind_index(name: &str) -> usize {
    match name {
        "message" => 0,
        "presence" => 1,
        "iq" => 2,
        _ => 3,
    }
}

/// The `proto` labels of `bytes{proto,dir}` with handles.
const BYTE_PROTOS: [&str; 2] = ["s2s", "c2s"];

/// The per-stanza counters of this thread's [`Metrics`], resolved once.
struct Hot {
    /// `stanzas{dir,kind}`, by [`StanzaDir`] then [`kind_index`].
    stanzas: [[CounterId; 4]; 4],
    /// `bytes{proto,dir}`, by [`BYTE_PROTOS`] index then in (0) / out (1).
    bytes: [[CounterId; 2]; 2],
    /// `cluster_received`.
    cluster_received: CounterId,
    /// `cluster_forwarded{node}`, by node (a few: the cluster's members), found by the
    /// node name's pointer first.
    cluster_forwarded: RefCell<Vec<(Arc<str>, CounterId)>>,
    /// The counters of [`count_static`], resolved on first use.
    by_static: RefCell<Vec<(StaticKey, CounterId)>>,
}

/// At most this many nodes get a `cluster_forwarded` handle; more are counted by labels.
const MAX_NODE_HANDLES: usize = 64;

/// At most this many (family, label, value) triples get a handle from
/// [`count_static`]; more are counted by labels.
const MAX_STATIC_HANDLES: usize = 64;

/// A (family, label name, label value) triple of [`count_static`].
type StaticKey = (&'static str, &'static str, &'static str);

impl Hot {
    fn resolve(m: &mut Metrics) -> Hot {
        let stanzas = StanzaDir::ALL.map(|dir| {
            KINDS.map(|kind| m.counter_id("stanzas", &[("dir", dir.label()), ("kind", kind)]))
        });
        let bytes = BYTE_PROTOS.map(|proto| {
            ["in", "out"].map(|dir| m.counter_id("bytes", &[("proto", proto), ("dir", dir)]))
        });
        Hot {
            stanzas,
            bytes,
            cluster_received: m.counter_id("cluster_received", &[]),
            cluster_forwarded: RefCell::new(Vec::new()),
            by_static: RefCell::new(Vec::new()),
        }
    }
}

thread_local! {
    /// This shard thread's metrics (merged with the others' only when read).
    static METRICS: RefCell<Metrics> = RefCell::new(Metrics::new());
    /// The handles of [`METRICS`]'s per-stanza counters (resolved on first use; the
    /// metrics are never replaced, so they stay valid).
    static HOT: Hot = metrics(Hot::resolve);
}

/// Runs `f` on this thread's metrics.
pub(crate) fn metrics<R>(f: impl FnOnce(&mut Metrics) -> R) -> R {
    METRICS.with(|m| f(&mut m.borrow_mut()))
}

/// Counts one stanza named `kind` (element name: `message`, `presence`, `iq`, anything
/// else counts as `other`) in direction `dir`: `stanzas{dir,kind}`.
pub(crate) fn count_stanza(dir: StanzaDir, kind: &str) {
    let id = HOT.with(|h| h.stanzas[dir as usize][kind_index(kind)]);
    metrics(|m| m.add(id, 1));
}

/// Counts `n` bytes read (`out` false) or written (`out` true) on a socket of protocol
/// `proto` (`s2s`, `c2s`): `bytes{proto,dir}`.
pub(crate) fn count_bytes(proto: &'static str, out: bool, n: u64) {
    match BYTE_PROTOS.iter().position(|p| *p == proto) {
        Some(p) => {
            let id = HOT.with(|h| h.bytes[p][usize::from(out)]);
            metrics(|m| m.add(id, n));
        }
        None => metrics(|m| {
            m.count(
                "bytes",
                &[("proto", proto), ("dir", if out { "out" } else { "in" })],
                n,
            )
        }),
    }
}

/// Counts one stanza received from another cluster node: `cluster_received`.
pub(crate) fn count_cluster_received() {
    let id = HOT.with(|h| h.cluster_received);
    metrics(|m| m.add(id, 1));
}

/// Counts one stanza published to cluster node `node`: `cluster_forwarded{node}`.
pub(crate) fn count_cluster_forwarded(node: &Arc<str>) {
    let id = HOT.with(|h| {
        let mut known = h.cluster_forwarded.borrow_mut();
        if let Some((_, id)) = known
            .iter()
            .find(|(n, _)| Arc::ptr_eq(n, node) || **n == **node)
        {
            return Some(*id);
        }
        if known.len() >= MAX_NODE_HANDLES {
            return None;
        }
        let id = metrics(|m| m.counter_id("cluster_forwarded", &[("node", node)]));
        known.push((Arc::clone(node), id));
        Some(id)
    });
    match id {
        Some(id) => metrics(|m| m.add(id, 1)),
        None => metrics(|m| m.count("cluster_forwarded", &[("node", node)], 1)),
    }
}

/// Adds `n` to counter `family{label=value}` (all three static strings, e.g.
/// `cluster_session_messages{dir=out}`; an empty `label` is the family without labels):
/// through a handle resolved on first use and found again among the few such counters
/// by comparing the strings (their pointers first), not by hashing.
pub(crate) fn count_static(family: &'static str, label: &'static str, value: &'static str, n: u64) {
    let key = (family, label, value);
    let same = |k: &StaticKey| {
        (std::ptr::eq(k.0, family) || k.0 == family)
            && (std::ptr::eq(k.1, label) || k.1 == label)
            && (std::ptr::eq(k.2, value) || k.2 == value)
    };
    let id = HOT.with(|h| {
        let mut known = h.by_static.borrow_mut();
        if let Some((_, id)) = known.iter().find(|(k, _)| same(k)) {
            return Some(*id);
        }
        if known.len() >= MAX_STATIC_HANDLES {
            return None;
        }
        let id = if label.is_empty() {
            metrics(|m| m.counter_id(family, &[]))
        } else {
            metrics(|m| m.counter_id(family, &[(label, value)]))
        };
        known.push((key, id));
        Some(id)
    });
    match id {
        Some(id) => metrics(|m| m.add(id, n)),
        None if label.is_empty() => metrics(|m| m.count(family, &[], n)),
        None => metrics(|m| m.count(family, &[(label, value)], n)),
    }
}
