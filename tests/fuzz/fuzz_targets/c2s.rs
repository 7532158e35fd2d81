//! Fuzz target for the C2S stream core (`fedrouter_proto::stream::c2s::C2sConnection`,
//! RFC 6120 §4–§7), fed arbitrary bytes and runtime calls before, during and after SASL.
//!
//! We host `example.com` (TLS required, certificate held, SCRAM-SHA-256, SCRAM-SHA-1 and
//! PLAIN over TLS). One account exists, `user@example.com` with password `pencil`; the
//! runtime stand-in answers `CredentialsNeeded` at once (`None` for anyone else) and
//! `StartTls` with `handle_tls_established`.
//!
//! Input: `[setup, script...]`. `setup % 6` is the state the connection is brought to
//! first (a panic if it is not reached): 0 nothing received; 1 after the client's header
//! (features: STARTTLS only); 2 after STARTTLS and the restarted header (SASL offered);
//! 3 mid-SASL (SCRAM-SHA-256 client-first answered with a challenge); 4 authenticated
//! with PLAIN and restarted (bind expected); 5 bound as `user@example.com/fuzz`.
//! `setup & 8` enables XEP-0198. The script (see `fedrouter_fuzz::script`) is bytes for
//! `handle_input`, with `0xff c` runtime calls: `c % 8` = 0 advance the clock `c >> 3`
//! seconds and `handle_timeout`; 1 advance to `poll_timeout()`; 2 answer the pending bind
//! request (accept, or refuse with `conflict` when `c & 8`); 3 `close` (with
//! `conflict` when `c & 8`); 4 `send_stanza`; 5 an unasked `handle_credentials` (must
//! be refused); 6 `release_idle_memory` or `handle_tls_failed`; 7 answer a pending
//! `<resume/>` as unknown.
//!
//! Invariants (the target panics when one fails):
//!
//! - sticky end: after `Event::Closed` (exactly one) nothing is transmitted or emitted,
//!   `poll_timeout()` is `None`, `close_reason`-like state stays (`is_closed()`);
//! - what is transmitted is a well-formed stream (no element after `<stream:error/>`,
//!   nothing after `</stream:stream>`);
//! - `Authenticated` only for the account whose credentials the runtime gave;
//!   `BindRequested` only after it; `Bound` only with a full JID of that account;
//! - no stanza before `Bound`: every `Event::Stanza` comes on a bound stream, its `from`
//!   (when present) is the bound full JID or its bare JID, and `stamp` writes an element
//!   that frames again with `from` the full JID (bare for subscription presence);
//! - `send_stanza` succeeds only on a bound, open stream; an unasked
//!   `handle_credentials` is an error.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use fedrouter_fuzz::{script, Clock, OutputCheck, Step};
use fedrouter_proto::condition::StreamCondition;
use fedrouter_proto::jid::{FullJid, Jid};
use fedrouter_proto::scram::{ScramCredentials, ScramHash};
use fedrouter_proto::stanza::StanzaKind;
use fedrouter_proto::stream::c2s::{
    BindError, C2sConfig, C2sConnection, C2sSmConfig, Event, Mechanism,
};
use fedrouter_proto::xml::{parse_stanza, unescape};
use libfuzzer_sys::fuzz_target;

const ACCOUNT: &str = "user@example.com";
const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";
const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const AUTH_SCRAM: &[u8] = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' \
mechanism='SCRAM-SHA-256'>biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM</auth>";
const AUTH_PLAIN: &[u8] = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' \
mechanism='PLAIN'>AHVzZXIAcGVuY2ls</auth>";
const BIND: &[u8] = b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
<resource>fuzz</resource></bind></iq>";

fn credentials(hash: ScramHash) -> ScramCredentials {
    ScramCredentials::derive("pencil", hash, b"c2s-fuzz-salt", 2).expect("derives")
}

struct Driver {
    conn: C2sConnection,
    clock: Clock,
    out: OutputCheck,
    creds_given: bool,
    authenticated: Option<String>,
    bind_pending: Option<Option<String>>,
    bound: Option<FullJid>,
    resume_pending: bool,
    closed: bool,
}

impl Driver {
    fn step(&mut self, call: impl FnOnce(&mut C2sConnection, std::time::Instant)) {
        let was_closed = self.closed;
        call(&mut self.conn, self.clock.now());
        self.drain();
        if was_closed {
            assert!(self.conn.is_closed());
        }
    }

    fn drain(&mut self) {
        // Bounded: each round answers one StartTls or credential request, or ends.
        for _ in 0..16 {
            let mut bytes = Vec::new();
            self.conn.poll_transmit(&mut bytes);
            if self.closed {
                assert!(
                    bytes.is_empty(),
                    "transmitted after Closed: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            self.out.feed(&bytes);
            let mut tls = false;
            let mut creds = None;
            while let Some(ev) = self.conn.poll_event() {
                assert!(!self.closed, "event after Closed: {ev:?}");
                match ev {
                    Event::StartTls(_) => tls = true,
                    Event::CredentialsNeeded { jid, mechanism } => {
                        creds =
                            Some((jid == ACCOUNT).then(|| {
                                credentials(mechanism.hash().unwrap_or(ScramHash::Sha256))
                            }));
                    }
                    other => self.on_event(other),
                }
            }
            if self.closed {
                assert!(self.conn.is_closed());
                assert_eq!(self.conn.poll_timeout(), None, "a deadline after Closed");
            }
            let now = self.clock.now();
            if tls {
                self.conn.handle_tls_established(Vec::new(), now);
            } else if let (Some(c), false) = (creds, self.closed) {
                self.creds_given |= c.is_some();
                self.conn
                    .handle_credentials(c, now)
                    .expect("credentials were asked for");
            } else {
                return;
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Authenticated { jid, mechanism } => {
                assert!(
                    self.creds_given && jid == ACCOUNT,
                    "{jid} authenticated ({mechanism:?})"
                );
                assert!(self.authenticated.is_none(), "authenticated twice");
                self.authenticated = Some(jid);
            }
            Event::BindRequested { jid, requested } => {
                assert_eq!(
                    self.authenticated.as_deref(),
                    Some(jid.as_str()),
                    "bind before auth"
                );
                assert!(
                    self.bound.is_none(),
                    "second bind request reached the runtime"
                );
                self.bind_pending = Some(requested);
            }
            Event::Bound { jid } => {
                let full = FullJid::new(&jid).expect("bound to a full JID");
                assert_eq!(Some(full.to_bare().as_str()), self.authenticated.as_deref());
                assert_eq!(self.conn.bound_jid(), Some(&full));
                self.bound = Some(full);
            }
            Event::Stanza { kind, element } => {
                let full = self
                    .bound
                    .clone()
                    .expect("a stanza before a resource was bound");
                assert_eq!(StanzaKind::of(&element), Some(kind));
                if let Some(from) = element.from() {
                    let from = unescape(from).expect("framed attribute");
                    let j = Jid::new(&from).expect("a stanza with an invalid from got through");
                    assert!(
                        j == full || j == full.to_bare(),
                        "from {from} is not the session's {full}"
                    );
                }
                self.check_stamp(&element, &full);
            }
            Event::RegistrationRequested { .. } => panic!("registration is off"),
            Event::ResumeRequested { .. } => self.resume_pending = true,
            Event::Closed(_) => {
                assert!(
                    self.conn.is_closed(),
                    "Closed polled but is_closed() is false"
                );
                self.closed = true;
            }
            _ => {}
        }
    }

    fn check_stamp(&self, element: &fedrouter_proto::xml::Element, full: &FullJid) {
        let mut out = Vec::new();
        self.conn
            .stamp(element, &mut out)
            .expect("bound, so stamp works");
        if element.uses_header_prefix() {
            return; // Documented: such payloads are not rewritten.
        }
        let el = parse_stanza(&out).unwrap_or_else(|e| {
            panic!(
                "stamped stanza does not frame ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        });
        let subscription = el.name() == "presence"
            && matches!(
                el.type_(),
                Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
            );
        let from = unescape(el.from().expect("stamped from"))
            .expect("escaped")
            .into_owned();
        if subscription {
            assert_eq!(from, full.to_bare().as_str());
        } else {
            assert_eq!(from, full.as_str());
        }
        assert_eq!(StanzaKind::of(&el), StanzaKind::of(element));
    }

    fn command(&mut self, c: u8) {
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
                let Some(requested) = self.bind_pending.take() else {
                    return;
                };
                let jid = format!(
                    "{ACCOUNT}/{}",
                    requested.unwrap_or_else(|| "generated".into())
                );
                let answer = if c & 8 != 0 {
                    Err(BindError::Conflict)
                } else {
                    Ok(jid.as_str())
                };
                let closing = self.conn.is_closing();
                let mut result = None;
                self.step(|conn, now| result = Some(conn.handle_bind(answer, now)));
                // After our own close (the runtime's, or a stream error) nothing is
                // written: the answer is refused, and that is right.
                if !self.closed && !closing {
                    result.expect("called").expect("a pending bind request");
                }
            }
            3 => {
                let error = (c & 8 != 0).then_some((StreamCondition::Conflict, "fuzz"));
                self.step(|conn, now| conn.close(error, now));
            }
            4 => {
                let stanza = b"<message from='x@y.example' to='user@example.com/fuzz'/>";
                let mut result = None;
                self.step(|conn, now| result = Some(conn.send_stanza(stanza, now)));
                if result == Some(Ok(())) {
                    assert!(self.bound.is_some(), "send_stanza accepted before bind");
                    assert!(!self.closed, "send_stanza accepted after Closed");
                }
            }
            5 => {
                let mut result = None;
                self.step(|conn, now| result = Some(conn.handle_credentials(None, now)));
                assert!(
                    result.expect("called").is_err(),
                    "unasked credentials accepted"
                );
            }
            6 => {
                if c & 8 != 0 {
                    self.step(|conn, _| conn.release_idle_memory());
                } else {
                    self.step(|conn, _| conn.handle_tls_failed("fuzz"));
                }
            }
            _ => {
                if std::mem::take(&mut self.resume_pending) {
                    self.step(|conn, now| {
                        let _ = conn.handle_resume(None, now);
                    });
                }
            }
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        self.step(|conn, now| conn.handle_input(bytes, now));
    }
}

fn setup(state: u8, sm: bool) -> Driver {
    let mut cfg = C2sConfig::new(vec!["example.com".into()], [9; 32]);
    cfg.stream_management = sm.then(C2sSmConfig::default);
    cfg.mechanisms = vec![
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];
    let clock = Clock::new();
    let mut d = Driver {
        conn: C2sConnection::new(Arc::new(cfg), 1, false, clock.now()),
        clock,
        out: OutputCheck::new(),
        creds_given: false,
        authenticated: None,
        bind_pending: None,
        bound: None,
        resume_pending: false,
        closed: false,
    };
    d.drain();
    if state >= 1 {
        d.input(HEADER);
    }
    if state >= 2 {
        d.input(STARTTLS);
        d.input(HEADER);
        assert!(d.conn.is_tls(), "setup: no TLS");
    }
    if state == 3 {
        d.input(AUTH_SCRAM);
        assert!(d.creds_given, "setup: no SCRAM exchange");
    }
    if state >= 4 {
        d.input(AUTH_PLAIN);
        assert!(d.authenticated.is_some(), "setup: PLAIN failed");
        d.input(HEADER);
    }
    if state >= 5 {
        d.input(BIND);
        d.command(2);
        assert!(d.bound.is_some(), "setup: not bound");
    }
    assert!(!d.closed, "setup closed the stream");
    d
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut d = setup(first % 6, first & 8 != 0);
    for step in script(rest, 256) {
        match step {
            Step::Input(bytes) => d.input(bytes),
            Step::Command(c) => d.command(c),
        }
    }
    // The end: a close, the client's close and deadlines always finish the stream.
    d.command(3);
    d.input(b"</stream:stream>");
    for _ in 0..4 {
        d.command(1);
    }
    assert!(
        d.closed,
        "close, the client's close and deadlines did not end the stream"
    );
    d.input(b"<presence/>");
    d.command(0xf8);
});
