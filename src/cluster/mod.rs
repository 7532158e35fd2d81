//! Several nodes serving one deployment (DESIGN.md "Cluster", `[cluster]`): membership
//! and stanzas between nodes over NATS; what must survive a node is in the shared
//! PostgreSQL store.
//!
//! - **Membership** ([`membership`]): every node publishes a heartbeat on
//!   `<prefix>.members` every `cluster.heartbeat`; a member silent for
//!   `cluster.failure_timeout` is dead. Each change of the live set makes a new [`View`]
//!   with the next epoch, which shards read lock-free ([`Cluster::view`]).
//! - **Ownership**: a remote domain and a local bare JID each have one owner node,
//!   [`crate::router::rendezvous::owner`] over the view's live members, then one owner
//!   shard inside it ([`crate::router::shard_of`]).
//! - **Routing**: a stanza for something another node owns is published on that node's
//!   subject `<prefix>.node.<name>` as its bytes plus its destination ([`wire`]); the
//!   owner routes it as if it had arrived locally. A receiver that does not own the key
//!   under its own view (ownership moved while the stanza travelled) forwards it again,
//!   at most [`MAX_HOPS`] times in all, then handles it itself.
//! - **Bounded**: stanzas for a node wait in its backlog (`cluster.backlog`) while NATS
//!   is down; past it they are bounced with `remote-server-timeout`. When the node dies
//!   its backlog is routed again under the new view (to the new owners).
//! - **Clients** stay on the node that owns their bare JID: one that authenticates on
//!   another node is sent there with `<see-other-host/>` (RFC 6120 §4.9.3.19), and when
//!   ownership moves, the sessions on the old owner are closed the same way.
//!
//! The NATS client (async-nats, tokio) runs on its own thread ([`nats`]); shards talk to
//! it through a bounded channel and it answers through their control channels.

pub mod membership;
pub(crate) mod nats;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::router::rendezvous;

/// Most nodes a stanza is forwarded through before the last one handles it whatever its
/// view says (views disagree only while a change propagates).
pub const MAX_HOPS: u8 = 3;

/// The live members as this node sees them: one epoch's ownership.
#[derive(Debug, Clone)]
pub struct View {
    /// This node.
    pub me: Arc<str>,
    /// The live members, this node included, sorted by name.
    pub members: Vec<Arc<str>>,
    /// The membership epoch ([`membership::Membership::epoch`]).
    pub epoch: u64,
    /// Each live member's client address (`host:port`, for `<see-other-host/>`).
    pub c2s: HashMap<Arc<str>, String>,
}

/// Who owns a key under a [`View`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// This node.
    Me,
    /// Another live member.
    Node(&'a Arc<str>),
}

impl View {
    /// The owner of ownership key `key` ([`crate::router::domain_key`] or
    /// [`crate::router::bare_key`]).
    pub fn owner(&self, key: &str) -> Owner<'_> {
        match rendezvous::owner(key, &self.members) {
            Some(n) if *n != self.me => Owner::Node(n),
            _ => Owner::Me,
        }
    }
}

/// A stanza on its way to another node ([`Cluster::forward`]).
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The owner.
    pub node: Arc<str>,
    /// [`wire::encode`]d.
    pub payload: Bytes,
}

/// The cluster's state as `/status/cluster`, `/health` and `fedrouter status` show it.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The NATS connection is up.
    pub nats_up: bool,
    /// The server connected to, or the configured ones.
    pub nats_url: String,
    /// Since when the connection is in its current state.
    pub since: Option<SystemTime>,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// Other members: name, state, client address, counts, seconds since last heard.
    pub members: Vec<serde_json::Value>,
    /// Stanzas waiting per node.
    pub backlog: Vec<(String, usize)>,
}

/// Counters the NATS thread keeps (shards count their own in their metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconnections to NATS after a loss.
    pub reconnects: AtomicU64,
    /// Stanzas lost between nodes: NATS dropped them (slow consumer) or the target shard
    /// could not take them.
    pub lost: AtomicU64,
    /// Stanzas bounced because a node's backlog was full.
    pub backlog_full: AtomicU64,
    /// Subscription requests sent again from the durable outbox after a member died or
    /// NATS came back.
    pub outbox_resent: AtomicU64,
    /// Changes of the live set.
    pub membership_changes: AtomicU64,
    /// Stanzas received from other nodes that this node had to forward again.
    pub reforwarded: AtomicU64,
    /// Stanzas published to members that died before they confirmed receiving them (in
    /// their heartbeats): possibly lost with the dead member's memory.
    pub unconfirmed_at_death: AtomicU64,
    /// The same, by the member that died (its name).
    pub unconfirmed_by_node: Mutex<BTreeMap<String, u64>>,
}

/// The cluster as shards and the admin endpoint see it: the current [`View`], the way
/// to other nodes, status and counters. Shared (`Arc`) by every thread.
pub struct Cluster {
    /// This node's name.
    pub node: Arc<str>,
    view: ArcSwap<View>,
    out: tokio::sync::mpsc::Sender<Outgoing>,
    status: Mutex<Status>,
    /// Counters.
    pub stats: Stats,
    /// Remote domains and local users each shard holds state for (heartbeat counts).
    pub held: Vec<(AtomicU64, AtomicU64)>,
    /// Set by [`Cluster::leave`].
    leaving: std::sync::atomic::AtomicBool,
}

/// Why [`Cluster::forward`] could not take a stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// The way to the NATS thread is full (NATS slow or down for a while).
    Full,
    /// The NATS thread is gone (shutting down).
    Closed,
}

impl Cluster {
    /// The current view (a refcount increment, no lock).
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Publishes a stanza for `node`: `kind`/`key` its destination, `hops` including
    /// this one, `stanza` its bytes.
    ///
    /// Errors: [`ForwardError`]; the caller bounces the stanza (RFC 6120 §8.3.3.17
    /// `remote-server-timeout`).
    pub fn forward(
        &self,
        node: &Arc<str>,
        kind: wire::Kind,
        key: &str,
        hops: u8,
        stanza: &[u8],
    ) -> Result<(), ForwardError> {
        let epoch = self.view.load().epoch;
        let payload = wire::encode(kind, hops, key, wire::now_us(), epoch, stanza);
        self.out
            .try_send(Outgoing {
                node: Arc::clone(node),
                payload,
            })
            .map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => ForwardError::Full,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => ForwardError::Closed,
            })
    }

    /// The node shuts down: the NATS thread tells the others it leaves (they take over
    /// its share at once instead of after `cluster.failure_timeout`) at its next
    /// heartbeat.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Relaxed);
    }

    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The status as JSON (`/status/cluster`, `/health`'s `"cluster"`).
    pub fn to_json(&self) -> serde_json::Value {
        let s = self.status();
        let v = self.view();
        let since = s
            .since
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let held: (u64, u64) = self.held.iter().fold((0, 0), |(d, u), (hd, hu)| {
            (
                d + hd.load(Ordering::Relaxed),
                u + hu.load(Ordering::Relaxed),
            )
        });
        let mut members = vec![serde_json::json!({
            "node": &*self.node,
            "state": "up",
            "self": true,
            "c2s": v.c2s.get(&self.node),
            "domains": held.0,
            "users": held.1,
        })];
        members.extend(s.members.iter().cloned());
        serde_json::json!({
            "node": &*self.node,
            "epoch": v.epoch,
            "nats": if s.nats_up { "up" } else { "down" },
            "nats_url": s.nats_url,
            "nats_since": since,
            "last_error": s.last_error,
            "live": v.members.iter().map(|m| &**m).collect::<Vec<_>>(),
            "members": members,
            "backlog": s.backlog.iter().map(|(n, c)| serde_json::json!({"node": n, "stanzas": c})).collect::<Vec<_>>(),
            "reconnects": self.stats.reconnects.load(Ordering::Relaxed),
            "lost": self.stats.lost.load(Ordering::Relaxed),
            "outbox_resent": self.stats.outbox_resent.load(Ordering::Relaxed),
            "unconfirmed_at_death": self.stats.unconfirmed_at_death.load(Ordering::Relaxed),
        })
    }

    /// Adds the NATS thread's counters and gauges to a metrics snapshot (once per
    /// scrape).
    pub fn add_metrics(&self, m: &mut crate::metrics::Metrics) {
        let s = self.status();
        let v = self.view();
        m.set_gauge("cluster_nats_up", &[], i64::from(s.nats_up));
        m.set_gauge("cluster_members_up", &[], v.members.len() as i64);
        m.set_gauge("cluster_epoch", &[], v.epoch as i64);
        for (node, n) in &s.backlog {
            m.set_gauge(
                "queue_depth",
                &[("queue", "cluster"), ("node", node)],
                *n as i64,
            );
        }
        let st = &self.stats;
        m.count(
            "cluster_nats_reconnects",
            &[],
            st.reconnects.load(Ordering::Relaxed),
        );
        m.count("cluster_lost", &[], st.lost.load(Ordering::Relaxed));
        m.count(
            "cluster_backlog_full",
            &[],
            st.backlog_full.load(Ordering::Relaxed),
        );
        m.count(
            "cluster_outbox_resent",
            &[],
            st.outbox_resent.load(Ordering::Relaxed),
        );
        m.count(
            "cluster_membership_changes",
            &[],
            st.membership_changes.load(Ordering::Relaxed),
        );
        m.count(
            "cluster_reforwarded",
            &[],
            st.reforwarded.load(Ordering::Relaxed),
        );
        if let Ok(by) = st.unconfirmed_by_node.lock() {
            for (node, n) in by.iter() {
                m.count("cluster_unconfirmed_at_death", &[("node", node)], *n);
            }
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}
