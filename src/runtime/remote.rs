//! The remote domains a shard owns (DESIGN.md "Ownership"): for each, its send queue
//! ([`DomainQueue`]), its outbound stream, the local domains authenticated or being
//! authenticated on it, its failures and backoff, and the dialback verifications it
//! carries for our inbound streams (XEP-0220 §2.1.3).
//!
//! [`Remotes`] decides what happens to a stanza for a remote domain (sent at once,
//! queued while the stream is set up, or bounced: backing off, congested, shutting
//! down) and reacts to the outbound stream's life (authenticated, refused, closed,
//! stalled). The stream itself is driven by `s2s.rs`, opened by `connect.rs`. The
//! verify-only stream that carries `db:verify`s when the domain's stream cannot is
//! `remote/verify_only.rs`; domains that share a stream with another domain hosted at
//! the same target (XEP-0220 §2.4) are `remote/multiplex.rs`; the `db:verify`s sent for
//! inbound streams and their answers are `remote/verify.rs`.

mod multiplex;
mod verify;
mod verify_only;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use tracing::{debug, info, info_span, warn, Instrument};

use super::conn::{Conn, ConnId};
use super::connect::Purpose;
use super::shard::Shard;
use crate::condition::StanzaCondition;
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::jid::domain_of;
use crate::router::domain_key;
use crate::router::queue::{
    backoff_delay, BounceCause, DomainQueue, Drain, Episode, Failure, Push, Queued,
};
use crate::stanza::{is_error, StanzaKind};
use crate::stream::s2s::{CloseReason, Direction};
use crate::xml::Element;
use verify::{write_verifies, VerifyReq};

/// At most one WARN per remote domain per this long about error stanzas dropped for it
/// ([`Remotes::drop_error`]).
const DROPPED_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The local domain of JID `from` as an ownership key ([`domain_key`]), borrowed from
/// the configuration (`domains`) when it spells it so: no allocation per stanza; a copy
/// only when the configured spelling differs. `None` when we do not host it.
fn hosted_key<'a>(shared: &'a super::Shared, from: &str) -> Option<Cow<'a, str>> {
    let want = domain_key(domain_of(from));
    let l = shared
        .s2s
        .local_domains
        .iter()
        .find(|l| l.eq_ignore_ascii_case(&want))?;
    Some(if **l == *want {
        Cow::Borrowed(l.as_str())
    } else {
        Cow::Owned(want.into_owned())
    })
}

/// The remote domains by ownership key ([`domain_key`]), hashed with std's SipHash
/// (`RandomState`, keyed per process): the keys are chosen by remote senders.
type RemoteMap = hashbrown::HashMap<Rc<str>, Remote, std::hash::RandomState>;

/// The state of remote domain `d` (an ownership key) and the map's own key for it (a
/// reference count), created when new: one hash, and the key is allocated only then
/// (`HashMap::entry` would take an owned key on every call, an allocation per stanza).
fn remote_entry<'a>(map: &'a mut RemoteMap, d: &str) -> (Rc<str>, &'a mut Remote) {
    match map.entry_ref(d) {
        hashbrown::hash_map::EntryRef::Occupied(e) => (Rc::clone(e.key()), e.into_mut()),
        hashbrown::hash_map::EntryRef::Vacant(e) => {
            let e = e.insert_entry(Remote::default());
            (Rc::clone(e.key()), e.into_mut())
        }
    }
}

/// An SRV target as a key: host (lowercase) and port.
pub(super) type TargetKey = (Box<str>, u16);

/// A remote domain owned by this shard.
#[derive(Default)]
struct Remote {
    /// Stanzas waiting for the outbound stream (bounded by `s2s.queue_per_domain`).
    queue: DomainQueue,
    /// The outbound stream, connecting or open.
    conn: Option<Rc<Conn>>,
    /// A connection attempt (DNS, TCP, direct TLS) is running.
    connecting: bool,
    /// Local domains that asked to send (authenticated or being authenticated).
    locals: Vec<String>,
    /// Consecutive failures (for backoff).
    failures: u32,
    /// No new attempt before this.
    backoff_until: Option<Instant>,
    /// The last failure, bounced to senders while backing off.
    last_failure: Option<Failure>,
    /// Error stanzas for this domain dropped because they could not be queued or sent
    /// ([`Remotes::bounce_queued`]), since the domain became known: `fedrouter status`
    /// shows it per domain.
    dropped_errors: u64,
    /// Dropped error stanzas not yet reported in a WARN, and when the last WARN was.
    dropped_unreported: u64,
    dropped_warned_at: Option<Instant>,
    /// Dialback verifications to send / waiting for answers.
    verifies: Vec<VerifyReq>,
    /// The verify-only stream (XEP-0220 §2.1.3), connecting (`verifier_connecting`) or
    /// open: carries the `db:verify`s `conn` cannot (an inbound bidirectional stream,
    /// XEP-0288 §2.2; or another node owns the domain). At most one per domain; closed
    /// once no verification waits on it.
    verifier: Option<Rc<Conn>>,
    verifier_connecting: bool,
    /// We closed `verifier` (nothing waited on it): nothing more is written to it.
    verifier_closing: bool,
    /// Verify-only streams that ended by themselves with verifications waiting, in a
    /// row: one more attempt after the first, then those verifications fail.
    verifier_failures: u32,
    /// Why the remote server's side of our dialback failed, when that was learned on
    /// another stream ([`Remotes::peer_verification_failed`]): the bounce and the WARN of
    /// the `Event::AuthFailed` it causes say so.
    auth_failure_note: Option<Failure>,
}

/// The remote domains this shard owns.
#[derive(Default)]
pub(super) struct Remotes {
    /// By ownership key ([`domain_key`]). The key is an `Rc<str>` so that a stanza's path
    /// holds the domain's name without allocating ([`remote_entry`], [`Remotes::key`]).
    map: RefCell<RemoteMap>,
    /// Stanzas for remote servers bounced because the shard was shutting down.
    shutdown_bounced: Cell<usize>,
    /// This shard's outbound streams by the SRV target (host, port) they connected to:
    /// what a further domain hosted there joins (XEP-0220 §2.4, `remote/multiplex.rs`).
    targets: RefCell<HashMap<TargetKey, Rc<Conn>>>,
    /// Targets this shard is dialling for a domain's stream, with the (remote, local)
    /// pairs of other domains hosted there that wait to join the stream once it exists.
    dialing: RefCell<HashMap<TargetKey, Vec<(String, String)>>>,
}

impl Remotes {
    /// `d` (an ownership key) as this shard's interned key: the map's own key when the
    /// domain is known here (no allocation: a reference count), else a new one.
    pub(super) fn key(&self, d: &str) -> Rc<str> {
        match self.map.borrow().get_key_value(d) {
            Some((k, _)) => Rc::clone(k),
            None => Rc::from(d),
        }
    }

    /// How many remote domains this shard holds state for.
    pub(super) fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Bounces a queued stanza for `cause` (counted in `bounced_by_cause`); an error
    /// stanza, which is never bounced (RFC 6120 §8.3.1), is dropped, and not without a
    /// trace ([`Remotes::drop_error`]).
    pub(super) fn bounce_queued(
        &self,
        shard: &Shard,
        el: Queued,
        condition: StanzaCondition,
        text: &str,
        cause: BounceCause,
    ) {
        let Some(el) = el.into_element() else { return };
        if is_error(&el) {
            return self.drop_error(shard, &el, condition, cause);
        }
        if StanzaKind::of(&el).is_some() {
            super::metrics(|m| m.count("bounced_by_cause", &[("cause", cause.as_str())], 1));
        }
        shard.bounce(&el, condition, text);
    }

    /// Drops error stanza `el` for a remote domain that cannot take it (`cause`), and
    /// keeps a trace of it (issue 21: nothing dropped without a trace):
    ///
    /// - the metric `undeliverable_errors_total{cause}`: labelled by cause only, a fixed
    ///   set, so that thousands of remote domains cannot grow the metric families;
    /// - the destination domain's own count, `dropped_errors` in its `fedrouter status`
    ///   object, which lives and goes with the domain's other state here;
    /// - a WARN naming the domain and how many were dropped, at most one per domain per
    ///   [`DROPPED_WARN_EVERY`] (the first drop is reported at once; later ones are summed
    ///   into the next WARN), so a flood of drops does not flood the log.
    fn drop_error(
        &self,
        shard: &Shard,
        el: &Element,
        condition: StanzaCondition,
        cause: BounceCause,
    ) {
        super::metrics(|m| m.count("undeliverable_errors", &[("cause", cause.as_str())], 1));
        let to = el.to().map(|t| domain_key(domain_of(t)).into_owned());
        debug!(to = el.to(), %condition, "dropping an error stanza that cannot be delivered");
        let Some(d) = to else { return };
        let now = Instant::now();
        let mut remotes = self.map.borrow_mut();
        let Some(r) = remotes.get_mut(d.as_str()) else {
            return;
        };
        r.dropped_errors += 1;
        r.dropped_unreported += 1;
        if r.dropped_warned_at
            .is_none_or(|t| now.saturating_duration_since(t) >= DROPPED_WARN_EVERY)
        {
            warn!(
                parent: &shard.span,
                remote = %d,
                cause = cause.as_str(),
                dropped = r.dropped_unreported,
                total = r.dropped_errors,
                "error stanzas for this remote server dropped: they cannot be queued and are never bounced (RFC 6120 8.3.1)"
            );
            r.dropped_unreported = 0;
            r.dropped_warned_at = Some(now);
        }
    }

    /// Writes `q` onto `conn` for `local` → `d` if the stream takes it; counts it and
    /// tracks it in the stream (what a write stall leaves unsent is known stanza by
    /// stanza). One pump per stanza: its bytes' end in the stream is then exact.
    /// Returns the stanza back when the stream did not take it.
    fn write(conn: &Conn, q: Queued, local: &str, d: &str, now: Instant) -> Option<Queued> {
        let mut st = conn.st.borrow_mut();
        if !q.send(&mut st.proto, local, d, now) {
            return Some(q);
        }
        super::count_stanza(super::StanzaDir::S2sOut, q.name());
        st.pump();
        st.mark(q.read_at());
        st.track(q);
        None
    }

    /// Sends a stanza to the remote domain of its `to` (owned by this shard) over the
    /// domain's outbound stream, queueing it while the stream is being set up; bounces it
    /// (RFC 6120 §8.3.3) while the domain backs off, while its queue is full, or while
    /// shutting down. One look-up of the domain per stanza (its key is the map's).
    pub(super) fn send_remote(&self, shard: &Shard, el: Queued) {
        let Some(from) = el.from() else {
            return;
        };
        // Borrowed, not cloned: the `Arc`'s count is shared by every shard, and an atomic
        // add and subtract per stanza on it would move its cache line between the cores.
        // (Nothing in here reloads the configuration, which replaces it.)
        let shared = shard.shared();
        let Some(local) = hosted_key(&shared, from) else {
            // Only our own users and our server originate stanzas to remote domains.
            debug!(from, "not sending a stanza from a domain we do not host");
            return;
        };
        if shard.shutting_down.get() {
            // Every stream of this shard is closed or closing by now, and none is opened
            // any more: nothing can carry it.
            debug!(
                to = el.to(),
                "shutting down: not connecting to the remote server; stanza bounced"
            );
            self.shutdown_bounced.set(self.shutdown_bounced.get() + 1);
            let f = Failure::shutdown();
            return self.bounce_queued(shard, el, f.condition, &f.text, BounceCause::Shutdown);
        }
        let now = super::now();
        let mut remotes = self.map.borrow_mut();
        let (d, r) = {
            let Some(to) = el.to() else { return };
            remote_entry(&mut remotes, &domain_key(domain_of(to)))
        };
        let d: &str = &d;
        if let Some(until) = r.backoff_until {
            if now < until && r.conn.is_none() {
                let f = r.last_failure.clone().unwrap_or(Failure {
                    condition: StanzaCondition::RemoteServerNotFound,
                    text: "remote server unreachable".into(),
                });
                drop(remotes);
                return self.bounce_queued(
                    shard,
                    el,
                    f.condition,
                    &format!("{} (backing off)", f.text),
                    BounceCause::Backoff,
                );
            }
        }
        let mut el = el;
        if let Some(conn) = r.conn.clone() {
            let ready = {
                let st = conn.st.borrow();
                !st.closed && st.proto.may_send(&local, d)
            };
            let cap = shard.shared().config.s2s.queue_per_domain;
            if ready
                && r.queue.is_empty()
                && conn.backlog() < shard.shared().config.s2s.send_queue_bytes
                && conn.st.borrow().held() < cap
            {
                match Self::write(&conn, el, &local, d, now) {
                    None => {
                        conn.wake.notify_one();
                        return;
                    }
                    Some(back) => el = back,
                }
            }
        }
        // Congestion stays with its destination (DESIGN.md "Ownership"): a full queue
        // bounces what comes next for this domain, and nothing else waits. Stanzas held
        // on the stream for XEP-0198 acknowledgements count against the same bound.
        let held = r.conn.as_ref().map_or(0, |c| c.st.borrow().held());
        let cap = shard
            .shared()
            .config
            .s2s
            .queue_per_domain
            .saturating_sub(held)
            .max(1);
        match r.queue.push(el, cap, now) {
            Push::Queued => {
                drop(remotes);
                self.ensure_outbound(shard, d, &local);
            }
            Push::Full { stanza, began } => {
                if began {
                    let pending = r.conn.as_ref().map_or(0, |c| c.backlog());
                    warn!(
                        parent: &shard.span,
                        remote = %d,
                        queue = r.queue.len(),
                        stream = if r.conn.is_some() { "open" } else { "connecting" },
                        pending_bytes = pending,
                        "remote server congested: its queue is full; new stanzas for it are bounced (resource-constraint)"
                    );
                }
                drop(remotes);
                self.bounce_queued(
                    shard,
                    stanza,
                    StanzaCondition::ResourceConstraint,
                    "too many stanzas waiting for this remote server",
                    BounceCause::QueueFull,
                );
            }
        }
    }

    /// Makes sure an outbound stream to `d` exists and `local` is (being) authenticated
    /// on it; starts a connection attempt if none runs.
    fn ensure_outbound(&self, shard: &Shard, d: &str, local: &str) {
        let mut remotes = self.map.borrow_mut();
        let (_, r) = remote_entry(&mut remotes, d);
        // An inbound bidirectional stream serving as `d`'s (XEP-0288) carries only the
        // pairs `d` authenticated on it: another local domain needs a stream of our own.
        if r.conn.as_ref().is_some_and(|c| {
            let st = c.st.borrow();
            c.direction == Direction::Inbound && !st.closed && !st.proto.may_send(local, d)
        }) {
            debug!(parent: &shard.span, remote = %d, %local, "the inbound bidirectional stream does not carry this local domain: opening a stream of our own");
            Self::detach_inbound(r);
        }
        if !r.locals.iter().any(|l| l == local) {
            r.locals.push(local.to_owned());
            if let Some(conn) = r.conn.clone() {
                let mut st = conn.st.borrow_mut();
                // On a stream that multiplexes `d` (XEP-0220 §2.4) the pair may be
                // refused (policy, certificate): `d` then gets a stream of its own.
                let joined = st.proto.request_dialback_for(local, d, Instant::now());
                st.pump();
                drop(st);
                conn.wake.notify_one();
                if joined.is_err() && conn.direction == Direction::Outbound {
                    debug!(parent: &shard.span, remote = %d, %local, "the shared stream does not carry this pair: opening a stream of its own");
                    r.conn = None;
                }
            }
        }
        if r.conn.is_none() && !r.connecting {
            if shard.shutting_down.get() {
                drop(remotes);
                return self.refuse_during_shutdown(shard, d);
            }
            r.connecting = true;
            let first = r
                .locals
                .first()
                .cloned()
                .unwrap_or_else(|| local.to_owned());
            drop(remotes);
            let me = shard.rc();
            let d = d.to_owned();
            // A child of the shard's span, not of the stream whose task asks for it.
            let span = info_span!(parent: &shard.span, "s2s", dir = "out", peer = %d, id = tracing::field::Empty);
            tokio_uring::spawn(
                super::connect::connect(me, d, first, Purpose::Stream).instrument(span),
            );
        }
    }

    /// Stops using the inbound bidirectional stream as `r`'s outbound stream (it stays
    /// open for what the peer sends): the next send opens a stream of our own.
    fn detach_inbound(r: &mut Remote) {
        if r.conn
            .as_ref()
            .is_some_and(|c| c.direction == Direction::Inbound)
        {
            r.conn = None;
            r.locals.clear();
        }
    }

    /// XEP-0288: the inbound stream `conn` from `d` (owned by this shard) is
    /// bidirectional and authenticated `local` → `d` against its direction. When `d`
    /// has no outbound stream, it becomes `d`'s: what waits for `d` is written to it and
    /// nothing is dialled ("one TCP connection carries both directions"). An outbound
    /// stream already open keeps its place; one still being dialled replaces this one
    /// when it connects ([`Remotes::connected`]).
    pub(super) fn bidi_inbound_ready(&self, shard: &Shard, conn: &Rc<Conn>, local: &str, d: &str) {
        {
            let mut remotes = self.map.borrow_mut();
            let (_, r) = remote_entry(&mut remotes, d);
            if r.conn.as_ref().is_none_or(|c| c.id != conn.id) {
                if r.conn.as_ref().is_some_and(|c| !c.st.borrow().closed) {
                    return;
                }
                r.conn = Some(Rc::clone(conn));
                r.locals.clear();
                info!(parent: &conn.span, remote = %d, %local, "inbound bidirectional stream (XEP-0288) also carries our stanzas to the remote server");
            }
            if !r.locals.iter().any(|l| l == local) {
                r.locals.push(local.to_owned());
            }
            r.failures = 0;
            r.backoff_until = None;
            r.last_failure = None;
        }
        self.drain_queue(shard, conn, d);
    }

    /// The shard is shutting down and `d` has no stream: no connection is opened; what
    /// waits for `d` is bounced ([`Failure::shutdown`]) and its pending dialback
    /// verifications are answered with an error.
    pub(super) fn refuse_during_shutdown(&self, shard: &Shard, d: &str) {
        let n = self.map.borrow().get(d).map_or(0, |r| r.queue.len());
        self.shutdown_bounced.set(self.shutdown_bounced.get() + n);
        info!(
            parent: &shard.span,
            remote = d,
            stanzas = n,
            "shutting down: not connecting to the remote server; bouncing what waits for it"
        );
        self.remote_failed(shard, d, Failure::shutdown(), BounceCause::Shutdown);
    }

    /// Connecting to `d` failed: bounce what waits, answer waiting verifications, back
    /// off exponentially with jitter.
    pub(super) fn remote_failed(&self, shard: &Shard, d: &str, f: Failure, cause: BounceCause) {
        let (initial, max) = {
            let s2s = &shard.shared().config.s2s;
            (s2s.backoff_initial, s2s.backoff_max)
        };
        let now = Instant::now();
        let (queue, verifies) = {
            let mut remotes = self.map.borrow_mut();
            let (_, r) = remote_entry(&mut remotes, d);
            r.connecting = false;
            r.conn = None;
            r.locals.clear();
            r.failures = r.failures.saturating_add(1);
            // Full jitter on the upper half: [delay/2, delay].
            let jitter = shard.rng.borrow_mut().random_range(0.5..=1.0);
            let delay = backoff_delay(initial, max, r.failures, jitter);
            r.backoff_until = Some(now + delay);
            r.last_failure = Some(f.clone());
            let (queue, episode) = r.queue.take_all(now);
            if let Some(Episode { lasted, bounced }) = episode {
                warn!(
                    parent: &shard.span,
                    remote = %d,
                    congested_ms = lasted.as_millis() as u64,
                    bounced,
                    "remote server congestion ended: its stream failed"
                );
            }
            let (verify_only, others) = std::mem::take(&mut r.verifies)
                .into_iter()
                .partition(|v| v.verify_only);
            // Those on the verify-only stream do not depend on this one.
            r.verifies = verify_only;
            (queue, others)
        };
        for el in queue {
            self.bounce_queued(shard, el, f.condition, &f.text, cause);
        }
        let cond = DialbackErrorCondition::from_stanza_condition(f.condition);
        for v in verifies {
            shard.s2s.send_verdict(
                shard,
                v.reply_shard,
                v.conn,
                v.local,
                d.to_owned(),
                DialbackResult::Error(cond),
            );
        }
    }

    /// An outbound stream authenticated `local` → `d`: send what waited.
    pub(super) fn outbound_ready(&self, shard: &Shard, conn: &Conn, _local: &str, d: &str) {
        {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            r.failures = 0;
            r.backoff_until = None;
            r.last_failure = None;
        }
        self.drain_queue(shard, conn, d);
    }

    /// Moves queued stanzas for `d` whose local domain is authenticated on `conn` into
    /// the stream, in order, while the stream's backlog is under `s2s.send_queue_bytes`.
    pub(super) fn drain_queue(&self, shard: &Shard, conn: &Conn, d: &str) {
        let limit = shard.shared().config.s2s.send_queue_bytes;
        self.drain_queue_within(shard, conn, d, limit);
    }

    /// [`Remotes::drain_queue`] while the stream's backlog is under `limit` bytes.
    fn drain_queue_within(&self, shard: &Shard, conn: &Conn, d: &str, limit: usize) {
        let now = Instant::now();
        let mut remotes = self.map.borrow_mut();
        let Some(r) = remotes.get_mut(d) else { return };
        if r.queue.is_empty() || r.conn.as_ref().is_none_or(|c| c.id != conn.id) {
            return;
        }
        if conn.st.borrow().closed {
            return;
        }
        let shared = Arc::clone(&shard.shared());
        let cap = shared.config.s2s.queue_per_domain;
        let episode = r.queue.drain(cap, now, |q| {
            if conn.backlog() >= limit || conn.st.borrow().held() >= cap {
                return Drain::Stop(q);
            }
            // Not a copy per stanza: the configuration's spelling of the local domain.
            let Some(local) = q.from().and_then(|f| hosted_key(&shared, f)) else {
                return Drain::Skip(q);
            };
            if !conn.st.borrow().proto.may_send(&local, d) {
                return Drain::Skip(q);
            }
            match Self::write(conn, q, &local, d, now) {
                None => Drain::Sent,
                Some(q) => Drain::Skip(q),
            }
        });
        if let Some(Episode { lasted, bounced }) = episode {
            warn!(
                parent: &shard.span,
                remote = %d,
                queue = r.queue.len(),
                congested_ms = lasted.as_millis() as u64,
                bounced,
                "remote server recovered: its queue has room again"
            );
        }
        conn.wake.notify_one();
    }

    /// The outbound stream `conn` could not authenticate `local` → `d` (XEP-0220 §2.1.1):
    /// the stanzas waiting for that pair are bounced at once, with the RFC 6120 §8.3.3
    /// condition that says whether retrying can help ([`DialbackResult::bounce_condition`]
    /// for an answer, [`CloseReason::bounce_condition`] when the stream ended, or what
    /// [`Remotes::peer_verification_failed`] found), and a WARN names the remote domain and
    /// what its server did. A stream left with nothing to carry (no authenticated pair,
    /// no answer awaited) is closed and the domain backs off ([`Remotes::remote_failed`]),
    /// rather than a new dialback being tried for every stanza.
    pub(super) fn outbound_auth_failed(
        &self,
        shard: &Shard,
        conn: &Conn,
        d: &str,
        local: &str,
        result: DialbackResult,
    ) {
        let (ended, idle) = {
            let st = conn.st.borrow();
            let idle =
                st.proto.authenticated().next().is_none() && !st.proto.awaits_dialback_answers();
            (st.proto.close_reason().cloned(), idle)
        };
        let (bounced, note, current): (Vec<Queued>, Option<Failure>, bool) = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            r.locals.retain(|l| l != local);
            let out = r.queue.take_from(local);
            let current = r.conn.as_ref().is_some_and(|c| c.id == conn.id);
            (out, r.auth_failure_note.clone(), current)
        };
        let f = note.unwrap_or_else(|| match &ended {
            Some(reason) => Failure {
                condition: reason.bounce_condition(),
                text: describe_outbound_end(reason),
            },
            None => Failure {
                condition: result
                    .bounce_condition()
                    .unwrap_or(StanzaCondition::RemoteServerNotFound),
                text: describe_dialback_answer(result),
            },
        });
        warn!(
            parent: &conn.span,
            remote = %d,
            %local,
            condition = %f.condition,
            bounced = bounced.len(),
            "the remote server did not authenticate us: {}; what waited for it is bounced",
            f.text
        );
        let text = format!("{d} did not authenticate {local}: {}", f.text);
        for el in bounced {
            self.bounce_queued(shard, el, f.condition, &text, BounceCause::AuthFailed);
        }
        if current && ended.is_none() && !idle && self.multiplexed_refused(conn, d) {
            // A further domain the peer refused on a shared stream (XEP-0220 §2.4): the
            // stream and its other domains stay; this domain backs off as any failing one.
            if let Some(r) = self.map.borrow_mut().get_mut(d) {
                r.conn = None;
                r.locals.clear();
            }
            return self.remote_failed(
                shard,
                d,
                Failure {
                    condition: f.condition,
                    text,
                },
                BounceCause::AuthFailed,
            );
        }
        if idle && current {
            if ended.is_none() {
                let mut st = conn.st.borrow_mut();
                st.proto.close(None, Instant::now());
                st.pump();
                drop(st);
                conn.wake.notify_one();
            }
            self.remote_failed(
                shard,
                d,
                Failure {
                    condition: f.condition,
                    text,
                },
                BounceCause::AuthFailed,
            );
        }
    }

    /// The outbound stream to `d` ended.
    pub(super) fn outbound_closed(
        &self,
        shard: &Shard,
        conn: &Conn,
        d: &str,
        reason: &CloseReason,
        authenticated: bool,
    ) {
        let is_current = {
            let remotes = self.map.borrow();
            remotes
                .get(d)
                .and_then(|r| r.conn.as_ref())
                .is_some_and(|c| c.id == conn.id)
        };
        if !is_current {
            return;
        }
        if authenticated {
            // An established stream closed (idle, peer restart): reconnect on demand.
            // What never reached the socket goes out first on the next stream, in order.
            let (unsent, resent) = conn.st.borrow_mut().take_unsent_for(d);
            if resent > 0 {
                // XEP-0198: the socket took them, the peer never acknowledged them.
                super::metrics(|m| m.count("sm_resent", &[], resent as u64));
                info!(parent: &shard.span, remote = %d, resent, "stream ended with unacknowledged stanzas: they go first on the next stream");
            }
            let (has_queue, local) = {
                let mut remotes = self.map.borrow_mut();
                let r = remotes.get_mut(d).expect("checked");
                r.conn = None;
                r.locals.clear();
                // `db:verify`s the lost stream carried and never answered go out again.
                // (Those on the verify-only stream stay where they are.)
                r.verifies
                    .iter_mut()
                    .filter(|v| !v.verify_only)
                    .for_each(|v| v.sent = false);
                r.queue.requeue_front(unsent.into_iter());
                let local = r.queue.front().map(Queued::local_domain);
                (
                    !r.queue.is_empty() || r.verifies.iter().any(|v| !v.verify_only),
                    local,
                )
            };
            if has_queue {
                let local = local.unwrap_or_else(|| shard.shared().config.domains[0].clone());
                self.ensure_outbound(shard, d, &local);
            }
            return;
        }
        if shard.shutting_down.get() {
            // Closed by the shutdown (or failing during it): no new attempt.
            return self.refuse_during_shutdown(shard, d);
        }
        if self.retry_once(shard, d, reason) {
            return;
        }
        let what = describe_outbound_end(reason);
        let f = Failure {
            condition: reason.bounce_condition(),
            text: format!("stream negotiation failed: {what}"),
        };
        let waiting = self.map.borrow().get(d).map_or(0, |r| r.queue.len());
        if waiting > 0 {
            warn!(
                parent: &conn.span,
                remote = %d,
                condition = %f.condition,
                bounced = waiting,
                "the stream to the remote server ended before it authenticated us: {what}; what waited for it is bounced"
            );
        }
        self.remote_failed(shard, d, f, BounceCause::Unreachable);
    }

    /// An outbound stream to `d` ended before it authenticated us for a passing reason
    /// (the connection dropped or reset, or the peer's `<connection-timeout/>`,
    /// `<system-shutdown/>`, `<reset/>`, `<resource-constraint/>`) and it is the first
    /// failure since `d` last authenticated us: connect once more before bouncing what
    /// waits. A NAT dropping a connection or a peer restarting mid-negotiation is not the
    /// domain failing for good; a second failure in a row is (then `remote_failed`
    /// bounces, with back-off as before). Returns whether a new stream was started.
    fn retry_once(&self, shard: &Shard, d: &str, reason: &CloseReason) -> bool {
        let passing = matches!(reason, CloseReason::PeerClosed)
            || (matches!(reason, CloseReason::ReceivedError(..))
                && reason.bounce_condition() == StanzaCondition::RemoteServerTimeout);
        if !passing {
            return false;
        }
        let local = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else {
                return false;
            };
            if r.failures > 0 || (r.queue.is_empty() && r.verifies.iter().all(|v| v.verify_only)) {
                return false;
            }
            r.failures = 1;
            r.conn = None;
            r.connecting = false;
            r.verifies
                .iter_mut()
                .filter(|v| !v.verify_only)
                .for_each(|v| v.sent = false);
            let local = r
                .locals
                .first()
                .cloned()
                .or_else(|| r.queue.front().map(Queued::local_domain));
            r.locals.clear();
            local
        };
        super::metrics(|m| m.count("s2s_negotiation_retries", &[], 1));
        info!(parent: &shard.span, remote = %d, "the stream to the remote server ended before it authenticated us ({}); connecting once more before bouncing what waits", describe_outbound_end(reason));
        let local = local.unwrap_or_else(|| shard.shared().config.domains[0].clone());
        self.ensure_outbound(shard, d, &local);
        true
    }

    /// A connection attempt to `d` for `local` succeeded with stream `conn`: it becomes
    /// the domain's outbound stream. Returns the other local domains waiting to be
    /// authenticated on it (dialback requests to send).
    pub(super) fn connected(&self, d: &str, local: &str, conn: &Rc<Conn>) -> Vec<String> {
        let mut remotes = self.map.borrow_mut();
        let (_, r) = remote_entry(&mut remotes, d);
        r.connecting = false;
        r.conn = Some(Rc::clone(conn));
        r.locals.iter().filter(|l| *l != local).cloned().collect()
    }

    /// Whether `conn` is the current outbound stream of `d`.
    pub(super) fn is_current(&self, d: &str, conn: ConnId) -> bool {
        self.map
            .borrow()
            .get(d)
            .and_then(|r| r.conn.as_ref())
            .is_some_and(|c| c.id == conn)
    }

    /// The shutdown begins: queued stanzas go out on the authenticated outbound streams
    /// before these close (all of them: the queue is bounded); what is left, for remote
    /// domains without a stream for its sender, is bounced now, while the senders'
    /// sessions are still open to receive the bounce.
    pub(super) fn begin_shutdown(&self, shard: &Shard) {
        let open: Vec<(Rc<str>, Rc<Conn>)> = self
            .map
            .borrow()
            .iter()
            .filter(|(_, r)| !r.queue.is_empty())
            .filter_map(|(d, r)| r.conn.as_ref().map(|c| (d.clone(), Rc::clone(c))))
            .collect();
        for (d, c) in &open {
            self.drain_queue_within(shard, c, d, usize::MAX);
        }
        let stuck: Vec<Rc<str>> = self
            .map
            .borrow()
            .iter()
            .filter(|(_, r)| {
                !r.queue.is_empty()
                    || (r.conn.is_none() && r.verifies.iter().any(|v| !v.verify_only))
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in &stuck {
            self.refuse_during_shutdown(shard, d);
        }
    }

    /// The shutdown ends: how many stanzas were bounced because of it, and how many are
    /// still queued (dropped: every stream is closed, so a bounce could reach nobody).
    pub(super) fn finish_shutdown(&self) -> (usize, usize) {
        let now = Instant::now();
        let queued: usize = self
            .map
            .borrow_mut()
            .values_mut()
            .map(|r| r.queue.take_all(now).0.len())
            .sum();
        (self.shutdown_bounced.get(), queued)
    }

    /// Gauges: stanzas queued for remote domains, and how many domains are congested.
    pub(super) fn gauges(&self, m: &mut crate::metrics::Metrics) {
        let map = self.map.borrow();
        let queued: usize = map.values().map(|r| r.queue.len()).sum();
        m.add_gauge("queue_depth", &[("queue", "s2s_remote")], queued as i64);
        let congested = map
            .values()
            .filter(|r| r.queue.congested_since().is_some())
            .count();
        m.add_gauge(
            "congested_destinations",
            &[("proto", "s2s")],
            congested as i64,
        );
    }

    /// `fedrouter status`: one JSON object per remote domain known here (owned, or with a
    /// stream in `streams`, the per-domain stream objects from `s2s.rs`): its streams,
    /// queue, congestion, failures, last error and backoff.
    pub(super) fn status(
        &self,
        shard: usize,
        mut streams: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    ) -> Vec<serde_json::Value> {
        use serde_json::json;
        let now = Instant::now();
        let remotes = self.map.borrow();
        let mut domains: std::collections::BTreeSet<String> =
            remotes.keys().map(|k| k.to_string()).collect();
        domains.extend(streams.keys().cloned());
        let mut out = Vec::with_capacity(domains.len());
        for d in domains {
            let r = remotes.get(d.as_str());
            let mut streams = streams.remove(&d).unwrap_or_default();
            if r.is_some_and(|r| r.connecting && r.conn.is_none()) {
                streams.push(json!({"direction": "out", "state": "connecting"}));
            }
            // XEP-0220 §2.4: the domain rides on the stream of another domain hosted at
            // the same target (listed, with all it serves, under that domain).
            if let Some(c) = r.and_then(|r| r.conn.as_ref()) {
                let st = c.st.borrow();
                let via = domain_key(st.proto.remote_domain());
                if c.direction == Direction::Outbound && via != d.as_str() {
                    let authenticated = st
                        .proto
                        .authenticated()
                        .any(|(_, r, _)| r.eq_ignore_ascii_case(&d));
                    streams.push(json!({
                        "direction": "out",
                        "state": if authenticated { "multiplexed" } else { "joining" },
                        "via": via,
                    }));
                }
            }
            let congested = r.and_then(|r| r.queue.congested_since());
            out.push(json!({
                "domain": d,
                "shard": shard,
                "streams": streams,
                "queue": r.map_or(0, |r| r.queue.len()),
                "congested": congested.is_some(),
                "congested_s": congested.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                "failures": r.map_or(0, |r| r.failures),
                "dropped_errors": r.map_or(0, |r| r.dropped_errors),
                "last_error": r.and_then(|r| r.last_failure.as_ref()).map(|f| format!("{}: {}", f.condition.as_str(), f.text)),
                "backoff_s": r.and_then(|r| r.backoff_until).filter(|u| *u > now).map(|u| (u - now).as_secs_f64()),
            }));
        }
        out
    }
}

/// What the remote server did, for the WARN and the bounce text of an outbound stream
/// that ended before it authenticated us.
fn describe_outbound_end(reason: &CloseReason) -> String {
    match reason {
        CloseReason::ReceivedError(c, text) => format!(
            "it closed the stream with a <{c}/> stream error{}",
            text.as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        ),
        CloseReason::PeerClosed => "it closed the stream".to_owned(),
        CloseReason::SentError(c, text) => format!("we closed the stream with <{c}/> ({text})"),
        CloseReason::CloseTimeout | CloseReason::Local => "we closed the stream".to_owned(),
        CloseReason::TlsFailed(e) => format!("TLS failed: {e}"),
    }
}

/// What the remote server answered to our `db:result` (XEP-0220 §2.1.1, §2.5).
fn describe_dialback_answer(result: DialbackResult) -> String {
    match result {
        DialbackResult::Valid => "it answered valid".to_owned(),
        DialbackResult::Invalid => "it answered our dialback key invalid".to_owned(),
        DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout) => {
            "no valid answer to our dialback key in time (remote-server-timeout)".to_owned()
        }
        DialbackResult::Error(c) => {
            format!("it answered our dialback key with the dialback error <{c}/>")
        }
    }
}
