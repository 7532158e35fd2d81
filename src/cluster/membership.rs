//! Who is in the cluster, from heartbeats: sans-IO, fed heartbeats and time, returning
//! the changes to the live set (DESIGN.md "Cluster").
//!
//! Every node publishes a [`Heartbeat`] every `cluster.heartbeat`; a member silent for
//! `cluster.failure_timeout` is dead; a member that says it is leaving (graceful
//! shutdown) is gone at once. A member that comes back with a new incarnation (it
//! restarted) counts as one that died and joined again: what it held in memory is gone.
//! Each change of the live set increments the epoch, which status shows and which lets a
//! node tell that ownership moved while a stanza was on its way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most members remembered (live and dead); the oldest dead ones are forgotten first.
pub const MAX_REMEMBERED: usize = 1024;

/// What a node announces about itself (JSON on `<prefix>.members`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Its name (`cluster.node`).
    pub node: String,
    /// Set once per process start (the start time in nanoseconds since the Unix epoch):
    /// a new value means the node restarted and lost what it held in memory.
    pub incarnation: u64,
    /// Where its clients go (`host:port`, the text of `<see-other-host/>`).
    pub c2s: String,
    /// The node is shutting down gracefully: drop it now.
    #[serde(default)]
    pub leaving: bool,
    /// How many remote domains it holds state for (all its shards).
    #[serde(default)]
    pub domains: u64,
    /// How many local users it holds sessions or state for.
    #[serde(default)]
    pub users: u64,
    /// Stanzas it received from each other node since it started (by node name).
    #[serde(default)]
    pub received: std::collections::BTreeMap<String, u64>,
}

/// A change of the live set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A member was heard for the first time, or again after it was dead or had left.
    Joined(Arc<str>),
    /// A member stopped sending heartbeats for the failure timeout, or restarted (a new
    /// incarnation): what it held in memory is gone.
    Died(Arc<str>),
    /// A member left gracefully (it drained what it held).
    Left(Arc<str>),
    /// Another process announces this node's own name: two nodes are configured with
    /// the same `cluster.node`.
    Conflict(Arc<str>),
}

/// A member's state as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Heard within the failure timeout.
    Up,
    /// Silent for the failure timeout, or restarted.
    Dead,
    /// Left gracefully.
    Left,
}

impl State {
    /// `"up"`, `"dead"` or `"left"`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Dead => "dead",
            State::Left => "left",
        }
    }
}

/// One other member, as last heard.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its last heartbeat.
    pub last: Heartbeat,
    /// When that heartbeat arrived.
    pub seen: Instant,
    /// Its state.
    pub state: State,
}

/// The membership as this node sees it.
#[derive(Debug)]
pub struct Membership {
    me: Arc<str>,
    incarnation: u64,
    failure_timeout: Duration,
    others: BTreeMap<Arc<str>, Member>,
    epoch: u64,
    /// The last [`Membership::tick`].
    last_tick: Option<Instant>,
    /// How many times this node found itself stalled ([`Membership::tick`]).
    stalls: u64,
}

impl Membership {
    /// This node (`me`, started as `incarnation`) alone, epoch 1.
    pub fn new(me: &str, incarnation: u64, failure_timeout: Duration) -> Membership {
        Membership {
            me: Arc::from(me),
            incarnation,
            failure_timeout,
            others: BTreeMap::new(),
            epoch: 1,
            last_tick: None,
            stalls: 0,
        }
    }

    /// This node's name.
    pub fn me(&self) -> &Arc<str> {
        &self.me
    }

    /// The number of changes of the live set so far, plus one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A heartbeat heard at `now`; returns what changed.
    pub fn on_heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if *hb.node == *self.me {
            if hb.incarnation != self.incarnation {
                changes.push(Change::Conflict(Arc::clone(&self.me)));
            }
            return changes;
        }
        let name: Arc<str> = Arc::from(hb.node.as_str());
        match self.others.get_mut(&name) {
            Some(m) => {
                let restarted = m.last.incarnation != hb.incarnation;
                let was_up = m.state == State::Up;
                let leaving = hb.leaving;
                m.last = hb;
                m.seen = now;
                if leaving {
                    if was_up {
                        m.state = State::Left;
                        changes.push(Change::Left(name));
                    }
                } else if restarted && was_up {
                    // The old process is gone with whatever it held; the new one joins.
                    changes.push(Change::Died(Arc::clone(&name)));
                    changes.push(Change::Joined(name));
                } else if !was_up {
                    m.state = State::Up;
                    changes.push(Change::Joined(name));
                }
            }
            None => {
                if hb.leaving {
                    return changes;
                }
                self.others.insert(
                    Arc::clone(&name),
                    Member {
                        last: hb,
                        seen: now,
                        state: State::Up,
                    },
                );
                changes.push(Change::Joined(name));
                self.forget_oldest_dead();
            }
        }
        self.epoch += changes
            .iter()
            .filter(|c| !matches!(c, Change::Conflict(_)))
            .count() as u64;
        changes
    }

    /// Time passes: members silent for the failure timeout die. Returns them.
    ///
    /// Called every heartbeat. When the previous call was half a failure timeout ago or
    /// more, this node itself did not run meanwhile (a stalled process or machine: the
    /// others' heartbeats are waiting unread, not missing), so nobody dies: as after
    /// [`Membership::reconnected`], every live member gets a full failure timeout from
    /// `now` ([`Membership::stalls`] counts these).
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let last = self.last_tick.replace(now);
        if last.is_some_and(|t| now.saturating_duration_since(t) >= self.failure_timeout / 2) {
            self.stalls += 1;
            self.reconnected(now);
            return Vec::new();
        }
        let mut changes = Vec::new();
        for (name, m) in self.others.iter_mut() {
            if m.state == State::Up && now.saturating_duration_since(m.seen) >= self.failure_timeout
            {
                m.state = State::Dead;
                changes.push(Change::Died(Arc::clone(name)));
            }
        }
        self.epoch += changes.len() as u64;
        changes
    }

    /// This node's own connection was down and is back: every live member gets a full
    /// failure timeout from `now` to be heard again (their silence was ours, not theirs).
    pub fn reconnected(&mut self, now: Instant) {
        self.last_tick = Some(now);
        for m in self.others.values_mut() {
            if m.state == State::Up {
                m.seen = now;
            }
        }
    }

    /// How many times [`Membership::tick`] found that this node had not run for half a
    /// failure timeout or more.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// When [`Membership::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.others
            .values()
            .filter(|m| m.state == State::Up)
            .map(|m| m.seen + self.failure_timeout)
            .min()
    }

    /// The live members, this node included, sorted by name.
    pub fn live(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self
            .others
            .iter()
            .filter(|(_, m)| m.state == State::Up)
            .map(|(n, _)| Arc::clone(n))
            .collect();
        v.push(Arc::clone(&self.me));
        v.sort();
        v
    }

    /// Every other member remembered, with its state, by name.
    pub fn others(&self) -> impl Iterator<Item = (&Arc<str>, &Member)> {
        self.others.iter()
    }

    fn forget_oldest_dead(&mut self) {
        while self.others.len() > MAX_REMEMBERED {
            let oldest = self
                .others
                .iter()
                .filter(|(_, m)| m.state != State::Up)
                .min_by_key(|(_, m)| m.seen)
                .map(|(n, _)| Arc::clone(n));
            match oldest {
                Some(n) => {
                    self.others.remove(&n);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: &str, inc: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            incarnation: inc,
            c2s: format!("{node}.test:5222"),
            leaving: false,
            domains: 0,
            users: 0,
            received: Default::default(),
        }
    }

    fn names(v: &[Arc<str>]) -> Vec<&str> {
        v.iter().map(|s| &**s).collect()
    }

    #[test]
    fn join_die_rejoin_with_time_passed_in() {
        let t0 = Instant::now();
        let ft = Duration::from_secs(3);
        let mut m = Membership::new("n1", 1, ft);
        assert_eq!(names(&m.live()), ["n1"]);
        assert_eq!(
            m.on_heartbeat(hb("n2", 7), t0),
            [Change::Joined("n2".into())]
        );
        assert_eq!(
            m.on_heartbeat(hb("n3", 8), t0),
            [Change::Joined("n3".into())]
        );
        assert_eq!(names(&m.live()), ["n1", "n2", "n3"]);
        assert_eq!(m.epoch(), 3);
        // n2 keeps beating, n3 goes silent.
        assert!(m
            .on_heartbeat(hb("n2", 7), t0 + Duration::from_secs(2))
            .is_empty());
        assert!(m.tick(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(m.next_deadline(), Some(t0 + ft));
        assert_eq!(m.tick(t0 + ft), [Change::Died("n3".into())]);
        assert_eq!(names(&m.live()), ["n1", "n2"]);
        assert_eq!(m.epoch(), 4);
        // n2 goes silent too; the caller ticks every heartbeat (here every second).
        let mut died = Vec::new();
        for k in 4..10 {
            died.extend(m.tick(t0 + Duration::from_secs(k)));
        }
        assert_eq!(died, [Change::Died("n2".into())]);
        assert_eq!(m.epoch(), 5);
        // n3 comes back (same incarnation: a partition healed).
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            m.on_heartbeat(hb("n3", 8), t1),
            [Change::Joined("n3".into())]
        );
        assert_eq!(m.epoch(), 6);
        assert_eq!(names(&m.live()), ["n1", "n3"]);
    }

    #[test]
    fn a_node_that_did_not_run_kills_nobody() {
        let t0 = Instant::now();
        let ft = Duration::from_secs(1);
        let mut m = Membership::new("n1", 1, ft);
        m.on_heartbeat(hb("n2", 7), t0);
        m.on_heartbeat(hb("n3", 8), t0);
        assert!(m.tick(t0 + Duration::from_millis(200)).is_empty());
        // This process (or the machine) stalled for 2 s: the others' heartbeats wait
        // unread; its next tick is late and declares nobody dead.
        let back = t0 + Duration::from_millis(2200);
        assert!(m.tick(back).is_empty());
        assert_eq!(m.stalls(), 1);
        assert_eq!(names(&m.live()), ["n1", "n2", "n3"]);
        // The waiting heartbeat of n2 is read; n3 stays silent and dies a full failure
        // timeout after the stall, ticking every 200 ms.
        let mut died = Vec::new();
        for k in 0..=5 {
            let now = back + Duration::from_millis(200 * k);
            m.on_heartbeat(hb("n2", 7), now);
            died.extend(m.tick(now + Duration::from_millis(1)));
        }
        assert_eq!(died, [Change::Died("n3".into())]);
        assert_eq!(m.stalls(), 1);
    }

    #[test]
    fn a_restart_is_a_death_then_a_join_and_leaving_is_immediate() {
        let t0 = Instant::now();
        let mut m = Membership::new("n1", 1, Duration::from_secs(3));
        m.on_heartbeat(hb("n2", 7), t0);
        assert_eq!(
            m.on_heartbeat(hb("n2", 9), t0),
            [Change::Died("n2".into()), Change::Joined("n2".into())]
        );
        let mut bye = hb("n2", 9);
        bye.leaving = true;
        assert_eq!(m.on_heartbeat(bye.clone(), t0), [Change::Left("n2".into())]);
        assert_eq!(names(&m.live()), ["n1"]);
        assert!(
            m.on_heartbeat(bye, t0).is_empty(),
            "told twice, changed once"
        );
        assert!(m.tick(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(m.others().next().map(|(_, m)| m.state), Some(State::Left));
    }

    #[test]
    fn silence_while_we_were_cut_off_is_not_a_death() {
        let t0 = Instant::now();
        let ft = Duration::from_secs(3);
        let mut m = Membership::new("n1", 1, ft);
        m.on_heartbeat(hb("n2", 7), t0);
        // Our NATS connection was down for 10 s (the caller does not tick meanwhile).
        let back = t0 + Duration::from_secs(10);
        m.reconnected(back);
        assert!(m.tick(back + Duration::from_secs(1)).is_empty());
        assert!(m.tick(back + Duration::from_secs(2)).is_empty());
        assert_eq!(m.tick(back + ft), [Change::Died("n2".into())]);
    }

    #[test]
    fn own_name_from_another_process_is_a_conflict_not_a_member() {
        let t0 = Instant::now();
        let mut m = Membership::new("n1", 1, Duration::from_secs(3));
        assert!(m.on_heartbeat(hb("n1", 1), t0).is_empty(), "our own echo");
        assert_eq!(
            m.on_heartbeat(hb("n1", 2), t0),
            [Change::Conflict("n1".into())]
        );
        assert_eq!(names(&m.live()), ["n1"]);
        assert_eq!(m.epoch(), 1);
    }
}
