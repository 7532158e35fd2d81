//! A remote domain's send queue: what waits for its outbound stream, the congestion
//! policy that bounds it, why stanzas for it are bounced, and the backoff after failures
//! (DESIGN.md "Ownership", "Failure semantics").
//!
//! Pure: no socket, no clock (time comes in as an argument), no metrics. The runtime
//! (`runtime/remote.rs`) owns one [`DomainQueue`] per remote domain and executes what it
//! decides.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::condition::StanzaCondition;
use crate::jid::domain_of;
use crate::router::domain_key;
use crate::router::fanout::{write_to_attr, SharedStanza};
use crate::stream::s2s::S2sConnection;
use crate::xml::Element;

/// A stanza waiting for a remote domain's stream.
#[derive(Debug)]
pub enum Queued {
    /// A stanza as received or generated; when it was read from a socket, if it was.
    Whole(Element, Option<Instant>),
    /// One recipient of a broadcast: the shared body (no `to`), this recipient's `to`,
    /// read time.
    Shared(SharedStanza, Box<str>, Option<Instant>),
}

impl Queued {
    /// When the stanza was read from a socket (for the routing latency), if it was.
    pub fn read_at(&self) -> Option<Instant> {
        match self {
            Queued::Whole(_, t) | Queued::Shared(_, _, t) => *t,
        }
    }

    /// Its raw `to`: the stanza's, or this recipient's of a broadcast.
    pub fn to(&self) -> Option<&str> {
        match self {
            Queued::Whole(el, _) => el.to(),
            Queued::Shared(_, to, _) => Some(to),
        }
    }

    /// Its raw `from` attribute.
    pub fn from(&self) -> Option<&str> {
        match self {
            Queued::Whole(el, _) => el.from(),
            Queued::Shared(s, _, _) => s.from(),
        }
    }

    /// The element name (`message`, `presence`, `iq`).
    pub fn name(&self) -> &str {
        match self {
            Queued::Whole(el, _) => el.name(),
            Queued::Shared(s, _, _) => s.element().name(),
        }
    }

    /// The local domain that sends it, as an ownership key ([`domain_key`]); empty when it
    /// has no `from`.
    pub fn local_domain(&self) -> String {
        self.from()
            .map(|f| domain_key(domain_of(f)).into_owned())
            .unwrap_or_default()
    }

    /// The remote domain it is for, as an ownership key ([`domain_key`]) of its `to`;
    /// empty when it has none.
    pub fn remote_domain(&self) -> String {
        let to = match self {
            Queued::Whole(el, _) => el.to(),
            Queued::Shared(_, to, _) => Some(&**to),
        };
        to.map(|t| domain_key(domain_of(t)).into_owned())
            .unwrap_or_default()
    }

    /// Writes it onto the outbound stream `proto` for the pair `local` → `remote`
    /// (RFC 6120 §8.1.1.1: only on a stream that authenticated the pair). Returns whether
    /// the stream took it; a shared stanza gets this recipient's `to` written in place
    /// (no copy of the body).
    pub fn send(&self, proto: &mut S2sConnection, local: &str, remote: &str, now: Instant) -> bool {
        match self {
            Queued::Whole(el, _) => proto.send_stanza(local, remote, el.bytes(), now).is_ok(),
            Queued::Shared(s, to, _) => {
                thread_local! {
                    // The recipient's ` to='…'`, rewritten per recipient (no allocation).
                    static ATTR: std::cell::RefCell<Vec<u8>> =
                        const { std::cell::RefCell::new(Vec::new()) };
                }
                ATTR.with(|attr| {
                    let mut attr = attr.borrow_mut();
                    attr.clear();
                    write_to_attr(to, &mut attr);
                    proto
                        .send_stanza_parts(local, remote, &s.parts(&attr), now)
                        .is_ok()
                })
            }
        }
    }

    /// The stanza as an element (one copy of the body for a shared one): for bounces.
    pub fn into_element(self) -> Option<Element> {
        match self {
            Queued::Whole(el, _) => Some(el),
            Queued::Shared(s, to, _) => s.to_element(&to).ok(),
        }
    }
}

/// Why sending to a remote domain failed, as the bounce it causes (RFC 6120 §8.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The condition of the bounce.
    pub condition: StanzaCondition,
    /// Its human-readable text.
    pub text: String,
}

impl Failure {
    /// Why a stanza for a remote domain is not sent while the server shuts down: no
    /// stream is opened any more (it would outlive the drain) and the open ones are
    /// closing. `remote-server-timeout` (RFC 6120 §8.3.3.16, type `wait`): the remote
    /// server is not known to be unreachable, and the sender may retry once we are back.
    pub fn shutdown() -> Failure {
        Failure {
            condition: StanzaCondition::RemoteServerTimeout,
            text: "the server is shutting down".into(),
        }
    }
}

/// Why a stanza for a remote domain was bounced: the `cause` label of the
/// `bounced_by_cause` and `undeliverable_errors` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceCause {
    /// The domain's queue was full (`resource-constraint`).
    QueueFull,
    /// Its stream accepted no byte for `s2s.write_stall_timeout` (`remote-server-timeout`).
    WriteStall,
    /// The domain is backing off after a failure.
    Backoff,
    /// Resolving, connecting or negotiating failed.
    Unreachable,
    /// The remote server did not authenticate us.
    AuthFailed,
    /// The server is shutting down.
    Shutdown,
}

impl BounceCause {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCause::QueueFull => "queue_full",
            BounceCause::WriteStall => "write_stall",
            BounceCause::Backoff => "backoff",
            BounceCause::Unreachable => "unreachable",
            BounceCause::AuthFailed => "auth_failed",
            BounceCause::Shutdown => "shutdown",
        }
    }
}

/// One congestion episode of a domain, as reported when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    /// How long the queue stayed congested.
    pub lasted: Duration,
    /// Stanzas bounced with `resource-constraint` meanwhile.
    pub bounced: u64,
}

/// What [`DomainQueue::push`] did with a stanza.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned at once, never stored
pub enum Push {
    /// Queued behind the others.
    Queued,
    /// The queue is full: bounce the stanza (`resource-constraint`, RFC 6120 §8.3.3.18).
    /// `began`: this stanza started a congestion episode (say so, once).
    Full {
        /// The stanza, to bounce.
        stanza: Queued,
        /// Whether this stanza began the episode.
        began: bool,
    },
}

/// The stanzas waiting for one remote domain, bounded by a capacity
/// (`s2s.queue_per_domain`). A full queue is congested: new stanzas are refused (the
/// caller bounces them) until the queue is down to half, so congestion stays with its
/// destination and nothing else waits.
#[derive(Debug, Default)]
pub struct DomainQueue {
    items: VecDeque<Queued>,
    congested_since: Option<Instant>,
    bounced: u64,
}

impl DomainQueue {
    /// Queues `q` unless the queue holds `cap` stanzas already.
    pub fn push(&mut self, q: Queued, cap: usize, now: Instant) -> Push {
        if self.items.len() < cap {
            self.items.push_back(q);
            return Push::Queued;
        }
        let began = self.congested_since.is_none();
        if began {
            self.congested_since = Some(now);
            self.bounced = 0;
        }
        self.bounced += 1;
        Push::Full { stanza: q, began }
    }

    /// Puts stanzas back at the front, in their order (what an ended stream never wrote
    /// goes out first on the next one). Not bounded: they were admitted before.
    pub fn requeue_front(&mut self, qs: impl DoubleEndedIterator<Item = Queued>) {
        for q in qs.rev() {
            self.items.push_front(q);
        }
    }

    /// Takes every stanza, in order; a congestion episode in progress ends and is
    /// returned (the domain's stream failed).
    pub fn take_all(&mut self, now: Instant) -> (VecDeque<Queued>, Option<Episode>) {
        let episode = self.end_episode(now);
        (std::mem::take(&mut self.items), episode)
    }

    /// Takes the stanzas sent by `local` (a [`Queued::local_domain`]), keeping the others
    /// in order.
    pub fn take_from(&mut self, local: &str) -> Vec<Queued> {
        let (out, keep): (VecDeque<Queued>, VecDeque<Queued>) = self
            .items
            .drain(..)
            .partition(|q| q.local_domain() == local);
        self.items = keep;
        out.into()
    }

    /// Offers the stanzas in order to `send`, which returns the stanza back when it could
    /// not take it, and [`Drain::Stop`] when nothing more can go now (the stream's backlog
    /// is full). What comes back stays queued in order. When the queue ends at half of
    /// `cap` or less, a congestion episode in progress ends and is returned.
    pub fn drain(
        &mut self,
        cap: usize,
        now: Instant,
        mut send: impl FnMut(Queued) -> Drain,
    ) -> Option<Episode> {
        let mut keep = VecDeque::new();
        while let Some(q) = self.items.pop_front() {
            match send(q) {
                Drain::Sent => {}
                Drain::Skip(q) => keep.push_back(q),
                Drain::Stop(q) => {
                    keep.push_back(q);
                    keep.extend(self.items.drain(..));
                    break;
                }
            }
        }
        self.items = keep;
        if self.items.len() <= cap / 2 {
            self.end_episode(now)
        } else {
            None
        }
    }

    fn end_episode(&mut self, now: Instant) -> Option<Episode> {
        let since = self.congested_since.take()?;
        Some(Episode {
            lasted: now.saturating_duration_since(since),
            bounced: std::mem::take(&mut self.bounced),
        })
    }

    /// Stanzas waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The oldest stanza waiting.
    pub fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// Since when the queue has been congested, if it is.
    pub fn congested_since(&self) -> Option<Instant> {
        self.congested_since
    }
}

/// What the sender of [`DomainQueue::drain`] did with one stanza.
#[derive(Debug)]
pub enum Drain {
    /// Written onto the stream.
    Sent,
    /// Not for this stream now (its sender is not authenticated yet): keep it, go on.
    Skip(Queued),
    /// No room: keep it and everything after it.
    Stop(Queued),
}

/// The delay before the next connection attempt after `failures` consecutive failures
/// (at least 1): `initial · 2^(failures-1)`, capped at `max`, scaled by `jitter` (the
/// caller draws it from `[0.5, 1.0]`: full jitter on the upper half, so that many shards
/// backing off from one peer do not retry in step).
pub fn backoff_delay(initial: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max);
    exp.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    fn msg(from: &str, n: u32) -> Queued {
        let el = parse_stanza(
            format!("<message from='{from}' to='b@remote.test' id='{n}'/>").as_bytes(),
        )
        .unwrap();
        Queued::Whole(el, None)
    }

    fn id(q: &Queued) -> String {
        match q {
            Queued::Whole(el, _) => el.id().unwrap().to_owned(),
            Queued::Shared(..) => unreachable!(),
        }
    }

    #[test]
    fn a_full_queue_refuses_and_the_first_refusal_begins_the_episode() {
        let t0 = Instant::now();
        let mut q = DomainQueue::default();
        for i in 0..3 {
            assert!(matches!(q.push(msg("a@x.test", i), 3, t0), Push::Queued));
        }
        let began: Vec<bool> = (3..6)
            .map(|i| match q.push(msg("a@x.test", i), 3, t0) {
                Push::Full { began, stanza } => {
                    assert_eq!(id(&stanza), i.to_string());
                    began
                }
                Push::Queued => panic!("queued past the cap"),
            })
            .collect();
        assert_eq!(began, [true, false, false]);
        assert_eq!(q.len(), 3);
        assert_eq!(q.congested_since(), Some(t0));
    }

    #[test]
    fn congestion_ends_at_half_the_cap_with_its_count_and_length() {
        let t0 = Instant::now();
        let mut q = DomainQueue::default();
        for i in 0..4 {
            q.push(msg("a@x.test", i), 4, t0);
        }
        q.push(msg("a@x.test", 9), 4, t0);
        q.push(msg("a@x.test", 9), 4, t0);
        // One stanza sent, then no room: 3 > 4/2 waiting, still congested.
        let mut sent = 0;
        let ep = q.drain(4, t0 + Duration::from_secs(1), |s| {
            if sent == 0 {
                sent += 1;
                Drain::Sent
            } else {
                Drain::Stop(s)
            }
        });
        assert_eq!(ep, None);
        assert_eq!(q.len(), 3);
        // One more: 2 <= 4/2 waiting, the episode ends.
        let mut sent = 0;
        let ep = q.drain(4, t0 + Duration::from_secs(3), |s| {
            if sent == 0 {
                sent += 1;
                Drain::Sent
            } else {
                Drain::Stop(s)
            }
        });
        assert_eq!(
            ep,
            Some(Episode {
                lasted: Duration::from_secs(3),
                bounced: 2
            })
        );
        assert_eq!(q.congested_since(), None);
        assert!(matches!(q.push(msg("a@x.test", 5), 4, t0), Push::Queued));
    }

    #[test]
    fn drain_keeps_skipped_and_stopped_stanzas_in_order() {
        let t0 = Instant::now();
        let mut q = DomainQueue::default();
        for (i, from) in ["a@x.test", "a@y.test", "a@x.test", "a@y.test", "a@x.test"]
            .iter()
            .enumerate()
        {
            q.push(msg(from, i as u32), 10, t0);
        }
        let mut budget = 1;
        q.drain(10, t0, |s| {
            if s.local_domain() != "x.test" {
                Drain::Skip(s)
            } else if budget > 0 {
                budget -= 1;
                Drain::Sent
            } else {
                Drain::Stop(s)
            }
        });
        let left: Vec<String> = q.items.iter().map(id).collect();
        assert_eq!(left, ["1", "2", "3", "4"]);
    }

    #[test]
    fn take_from_partitions_by_sending_domain_and_requeue_puts_back_in_front() {
        let t0 = Instant::now();
        let mut q = DomainQueue::default();
        for (i, from) in ["a@x.test", "b@y.test", "c@X.test", "d@y.test"]
            .iter()
            .enumerate()
        {
            q.push(msg(from, i as u32), 10, t0);
        }
        let x: Vec<String> = q.take_from("x.test").iter().map(id).collect();
        assert_eq!(x, ["0", "2"]);
        q.requeue_front(vec![msg("a@x.test", 7), msg("a@x.test", 8)].into_iter());
        let (all, ep) = q.take_all(t0);
        assert_eq!(ep, None);
        let all: Vec<String> = all.iter().map(id).collect();
        assert_eq!(all, ["7", "8", "1", "3"]);
    }

    #[test]
    fn backoff_doubles_from_initial_caps_at_max_and_scales_by_jitter() {
        let s = Duration::from_secs;
        let rows = [
            // failures, jitter, expected
            (1, 1.0, s(2)),
            (2, 1.0, s(4)),
            (3, 1.0, s(8)),
            (3, 0.5, s(4)),
            (7, 1.0, s(60)),
            (40, 1.0, s(60)),
            (0, 1.0, s(2)),
        ];
        for (failures, jitter, want) in rows {
            assert_eq!(
                backoff_delay(s(2), s(60), failures, jitter),
                want,
                "{failures} failures, jitter {jitter}"
            );
        }
    }
}
