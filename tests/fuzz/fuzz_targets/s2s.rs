//! Fuzz target for the S2S stream core (`fedrouter_proto::stream::s2s::S2sConnection`,
//! RFC 6120 §4–§6, XEP-0220), fed arbitrary bytes and runtime calls in each state.
//!
//! We host `a.example` and `b.example` (certificate for `a.example`, so STARTTLS is
//! offered; no certificate verifier, so SASL EXTERNAL never is); the peer is `p.example`.
//!
//! Input: `[setup, script...]`. `setup % 8` is the state the connection is brought to
//! first, by a scripted peer and runtime (a panic if it is not reached):
//!
//! | setup | direction | state |
//! |---|---|---|
//! | 0 | inbound | nothing received |
//! | 1 | inbound | after a valid header (features sent) |
//! | 2 | inbound | after STARTTLS and the restarted header |
//! | 3 | inbound | `db:result` received, verdict pending |
//! | 4 | inbound | `p.example` → `a.example` authenticated by dialback |
//! | 5 | outbound | our header sent |
//! | 6 | outbound | after the peer's header and features; our `db:result` pending |
//! | 7 | outbound | `a.example` → `p.example` authenticated |
//!
//! `setup & 8` enables XEP-0198 stream management. The script (see
//! `fedrouter_fuzz::script`) is bytes for `handle_input`, with `0xff c` runtime calls:
//! `c % 8` = 0 advance the clock `c >> 3` seconds and `handle_timeout`; 1 advance to
//! `poll_timeout()`; 2 the verdict on the oldest pending `VerifyNeeded` (valid, invalid
//! or error by `c >> 3`); 3 `close` (with an error when `c & 8`); 4 `send_stanza`; 5
//! `request_dialback("b.example")`; 6 `send_db_verify`; 7 `release_idle_memory` or
//! `handle_tls_failed`. `StartTls` is answered at once with `handle_tls_established`.
//!
//! Invariants (the target panics when one fails):
//!
//! - sticky end: after `Event::Closed` (exactly one), no byte is transmitted, no event
//!   is emitted, `poll_timeout()` is `None` and `close_reason()` does not change, whatever
//!   is fed or called; `is_closed()` holds from the moment `Closed` is polled;
//! - what is transmitted is a well-formed stream: no element after `<stream:error/>`,
//!   nothing after `</stream:stream>` (`OutputCheck`);
//! - no stanza for an unauthenticated pair: every `Event::Stanza` is on an inbound
//!   stream, `to` names a hosted domain and (`to`, `from`) domains are a pair that an
//!   earlier `Event::Authenticated` announced (and no TLS restart cleared since);
//! - inbound, a pair is authenticated only after the runtime's `Valid` verdict for it,
//!   and a `db:result type='valid'` is sent only for such a pair;
//! - outbound, a pair is authenticated only after we sent its `db:result`, whose key is
//!   the XEP-0185 key for the peer's stream id; `send_stanza` succeeds only for an
//!   authenticated pair on an open stream.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use fedrouter_fuzz::{s2s_config, script, Clock, OutputCheck, Step, INBOUND_HEADER};
use fedrouter_proto::condition::StreamCondition;
use fedrouter_proto::dialback::{DialbackErrorCondition, DialbackResult};
use fedrouter_proto::jid::domain_of;
use fedrouter_proto::stanza::StanzaKind;
use fedrouter_proto::stream::s2s::{AuthMethod, Direction, Event, S2sConfig, S2sConnection};
use fedrouter_proto::stream::CloseReason;
use fedrouter_proto::xml::Namespace;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::UnixTime;

const PEER: &str = "p.example";

const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const DB_RESULT: &[u8] = b"<db:result from='p.example' to='a.example'>0123456789abcdef</db:result>";
const OUTBOUND_ANSWER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
from='p.example' to='a.example' id='peer-stream-1' version='1.0'><stream:features>\
<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
const DB_VALID: &[u8] = b"<db:result from='p.example' to='a.example' type='valid'/>";

fn same(a: &(String, String), l: &str, r: &str) -> bool {
    a.0.eq_ignore_ascii_case(l) && a.1.eq_ignore_ascii_case(r)
}

/// The runtime stand-in and the model the invariants are checked against.
struct Driver {
    conn: S2sConnection,
    cfg: Arc<S2sConfig>,
    clock: Clock,
    out: OutputCheck,
    /// Pairs announced by `Event::Authenticated` (and not cleared by a TLS restart).
    pairs: Vec<(String, String)>,
    /// Inbound: pairs the runtime answered `Valid` for.
    granted: Vec<(String, String)>,
    /// Outbound: pairs we sent a `db:result` for.
    requested: Vec<(String, String)>,
    /// Outbound: we sent a SASL EXTERNAL `<auth/>`.
    external_sent: bool,
    /// Inbound: `VerifyNeeded` not answered yet.
    pending: Vec<(String, String)>,
    closed: Option<CloseReason>,
}

impl Driver {
    /// Runs one call on the connection, then drains and checks everything.
    fn step(&mut self, call: impl FnOnce(&mut S2sConnection, std::time::Instant)) {
        let was_closed = self.closed.clone();
        call(&mut self.conn, self.clock.now());
        self.drain();
        if let Some(reason) = was_closed {
            // Already over before this call: nothing may have happened.
            assert_eq!(self.closed.as_ref(), Some(&reason));
        }
    }

    fn drain(&mut self) {
        // Bounded: each round either answers a StartTls or ends.
        for _ in 0..8 {
            let mut bytes = Vec::new();
            self.conn.poll_transmit(&mut bytes);
            if self.closed.is_some() {
                assert!(
                    bytes.is_empty(),
                    "transmitted after Closed: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            for el in self.out.feed(&bytes) {
                self.check_sent(&el);
            }
            let mut tls = false;
            while let Some(ev) = self.conn.poll_event() {
                assert!(self.closed.is_none(), "event after Closed: {ev:?}");
                tls |= self.on_event(ev);
            }
            if self.closed.is_some() {
                assert!(self.conn.is_closed());
                assert_eq!(self.conn.poll_timeout(), None, "a deadline after Closed");
                assert_eq!(self.conn.close_reason(), self.closed.as_ref());
            }
            if !tls {
                return;
            }
            let at = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000));
            self.conn
                .handle_tls_established(Vec::new(), self.clock.now(), at);
        }
    }

    /// Returns true when the event asks for TLS.
    fn on_event(&mut self, ev: Event) -> bool {
        match ev {
            Event::StartTls(_) => {
                // RFC 6120 §5.4.3.3: what was negotiated before TLS is forgotten.
                self.pairs.clear();
                self.pending.clear();
                return true;
            }
            Event::VerifyNeeded { local, remote, .. } => {
                assert_eq!(self.conn.direction(), Direction::Inbound);
                assert!(self.cfg.hosts(&local));
                self.pending.push((local, remote));
            }
            Event::Authenticated {
                local,
                remote,
                method,
                direction,
            } => {
                assert_eq!(direction, self.conn.direction());
                match (direction, method) {
                    (Direction::Inbound, AuthMethod::Dialback) => assert!(
                        self.granted.iter().any(|g| same(g, &local, &remote)),
                        "inbound {local} <- {remote} authenticated without a Valid verdict"
                    ),
                    (Direction::Inbound, AuthMethod::SaslExternal) => {
                        panic!("inbound SASL EXTERNAL without a certificate verifier")
                    }
                    (Direction::Outbound, AuthMethod::Dialback) => assert!(
                        self.requested.iter().any(|g| same(g, &local, &remote)),
                        "outbound {local} -> {remote} authenticated without our db:result"
                    ),
                    (Direction::Outbound, AuthMethod::SaslExternal) => assert!(
                        self.external_sent
                            && same(&(local.clone(), remote.clone()), "a.example", PEER),
                        "outbound {local} -> {remote} authenticated by SASL without our <auth/>"
                    ),
                }
                self.pairs.push((local, remote));
            }
            Event::Stanza { kind, element } => {
                assert_eq!(
                    self.conn.direction(),
                    Direction::Inbound,
                    "stanza on outbound"
                );
                assert_eq!(StanzaKind::of(&element), Some(kind));
                let to = domain_of(element.to().expect("a routed stanza has to"));
                let from = domain_of(element.from().expect("a routed stanza has from"));
                assert!(self.cfg.hosts(to), "stanza to unhosted {to}");
                assert!(
                    self.pairs.iter().any(|p| same(p, to, from)),
                    "stanza from {from} to {to}, which this stream has not authenticated ({:?})",
                    self.pairs
                );
            }
            Event::Closed(reason) => {
                assert!(
                    self.conn.is_closed(),
                    "Closed polled but is_closed() is false"
                );
                self.closed = Some(reason);
            }
            _ => {}
        }
        false
    }

    /// Checks one element we transmitted.
    fn check_sent(&mut self, el: &fedrouter_proto::xml::Element) {
        if *el.namespace() == Namespace::Sasl && el.name() == "auth" {
            assert_eq!(self.conn.direction(), Direction::Outbound);
            self.external_sent = true;
        }
        if *el.namespace() != Namespace::Dialback || el.name() != "result" {
            return;
        }
        let (Some(from), Some(to)) = (el.from(), el.to()) else {
            panic!("our db:result without from/to: {}", el.as_str());
        };
        // Attribute values are raw, as on the wire; the model holds unescaped domains.
        let unescaped = |raw| fedrouter_proto::xml::unescape(raw).expect("we escape what we send");
        let (from, to) = (&*unescaped(from), &*unescaped(to));
        match (self.conn.direction(), el.type_()) {
            (Direction::Outbound, None) => {
                let key = self
                    .cfg
                    .dialback_secret
                    .key(to, from, self.conn.stream_id());
                assert_eq!(el.text(), key, "our dialback key is not XEP-0185's");
                self.requested.push((from.to_owned(), to.to_owned()));
            }
            (Direction::Inbound, Some("valid")) => assert!(
                self.granted.iter().any(|g| same(g, from, to)),
                "db:result valid sent for {from} <- {to} without a Valid verdict"
            ),
            _ => {}
        }
    }

    fn command(&mut self, c: u8) {
        let local = "a.example";
        match c % 8 {
            0 => {
                self.clock.advance(Duration::from_secs(u64::from(c >> 3)));
                let now = self.clock.now();
                self.step(|conn, _| conn.handle_timeout(now));
            }
            1 => {
                if let Some(t) = self.conn.poll_timeout() {
                    self.clock.advance_to(t);
                }
                let now = self.clock.now();
                self.step(|conn, _| conn.handle_timeout(now));
            }
            2 => {
                if self.pending.is_empty() {
                    return;
                }
                let (l, r) = self.pending.remove(0);
                let verdict = match (c >> 3) % 3 {
                    0 => DialbackResult::Valid,
                    1 => DialbackResult::Invalid,
                    _ => DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
                };
                if verdict == DialbackResult::Valid {
                    self.granted.push((l.clone(), r.clone()));
                }
                self.step(|conn, now| conn.handle_dialback_verdict(&l, &r, verdict, now));
            }
            3 => {
                let error = (c & 8 != 0).then_some((StreamCondition::PolicyViolation, "fuzz"));
                self.step(|conn, now| conn.close(error, now));
            }
            4 => {
                let stanza = b"<message from='a.example' to='p.example' id='m'/>";
                let mut result = None;
                self.step(|conn, now| result = Some(conn.send_stanza(local, PEER, stanza, now)));
                if result == Some(Ok(())) {
                    assert!(
                        self.closed.is_none(),
                        "send_stanza accepted on a closed stream"
                    );
                    assert!(
                        self.pairs.iter().any(|p| same(p, local, PEER)),
                        "send_stanza accepted for an unauthenticated pair"
                    );
                }
            }
            5 => self.step(|conn, now| {
                let _ = conn.request_dialback("b.example", now);
            }),
            6 => self.step(|conn, now| {
                let _ = conn.send_db_verify(local, "fuzz-stream", "00ff", now);
            }),
            _ => {
                if c & 8 != 0 {
                    self.step(|conn, _| conn.release_idle_memory());
                } else {
                    self.step(|conn, _| conn.handle_tls_failed("fuzz"));
                }
            }
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        self.step(|conn, now| conn.handle_input(bytes, now));
    }
}

fn setup(state: u8, sm: bool) -> Driver {
    let cfg = s2s_config(sm);
    let clock = Clock::new();
    let conn = match state {
        0..=4 => S2sConnection::inbound(cfg.clone(), 1, None, clock.now()),
        _ => S2sConnection::outbound(cfg.clone(), "a.example", PEER, false, clock.now()),
    };
    let mut d = Driver {
        conn,
        cfg,
        clock,
        out: OutputCheck::new(),
        pairs: Vec::new(),
        granted: Vec::new(),
        requested: Vec::new(),
        external_sent: false,
        pending: Vec::new(),
        closed: None,
    };
    d.drain();
    match state {
        1 => d.input(INBOUND_HEADER),
        2 => {
            d.input(INBOUND_HEADER);
            d.input(STARTTLS);
            assert!(d.conn.is_tls(), "setup: STARTTLS not reached");
            d.input(INBOUND_HEADER);
        }
        3 | 4 => {
            d.input(INBOUND_HEADER);
            d.input(DB_RESULT);
            assert_eq!(d.pending.len(), 1, "setup: no VerifyNeeded");
            if state == 4 {
                d.command(2); // Valid
                assert!(
                    d.conn.is_authenticated("a.example", PEER),
                    "setup: not authenticated"
                );
            }
        }
        6 | 7 => {
            d.input(OUTBOUND_ANSWER);
            assert_eq!(d.requested.len(), 1, "setup: no db:result sent");
            if state == 7 {
                d.input(DB_VALID);
                assert!(
                    d.conn.is_authenticated("a.example", PEER),
                    "setup: not authenticated"
                );
            }
        }
        _ => {}
    }
    assert!(
        d.closed.is_none(),
        "setup closed the stream: {:?}",
        d.closed
    );
    d
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut d = setup(first % 8, first & 8 != 0);
    for step in script(rest, 256) {
        match step {
            Step::Input(bytes) => d.input(bytes),
            Step::Command(c) => d.command(c),
        }
    }
    // The end: a close and a deadline always finish the stream; then it stays finished.
    d.command(3);
    d.input(b"</stream:stream>");
    d.command(1);
    d.command(1);
    assert!(
        d.closed.is_some(),
        "close, the peer's close and a deadline did not end the stream"
    );
    let reason = d.closed.clone();
    d.input(b"<presence from='p.example' to='a.example'/>");
    d.command(0xf8);
    assert_eq!(d.closed, reason);
});
