//! RFC 6121 §8.5 (server rules for stanzas to a local user) and §2.3–§2.5 (roster sets)
//! as tables, against the pure functions the runtime executes:
//! [`delivery::decide`], [`delivery::to_unknown_user`], [`delivery::priority`] and
//! [`roster_set::plan`].
//!
//! Every row cites the section it transcribes. Where the RFC lets the server choose, the
//! row says which choice fedrouter makes; where fedrouter departs from RFC 6121 the row's
//! note says so ("RFC 6121: …"), so a change of policy is a visible change of a row.
//!
//! Sessions are written as one string, one token per bound resource:
//!
//! - `home:5`: available, priority 5 (`home:-1`: negative priority);
//! - `tv:off`: connected (bound) but not available: no initial presence yet (§4.2);
//! - `old:9!`: available but not writable: its client stopped reading, so its stream
//!   holds `c2s.send_queue_bytes` its socket has not taken (counts as not there).
//!
//! A stanza is its kind and type (`"message chat"`, `"message"` for no type, `"iq get"`);
//! `to` is `""` for the bare JID and `"/home"` for a full JID.

use fedrouter::condition::StanzaCondition::{
    self, BadRequest, ItemNotFound, NotAcceptable, NotAllowed, ServiceUnavailable,
};
use fedrouter::presence::delivery::{self, Delivery, SessionView};
use fedrouter::presence::roster_set::{self, Held, HeldContact, Plan, SetError};
use fedrouter::presence::{Action, RosterError, RosterLimits, SubState, SubType};
use fedrouter::stanza::StanzaKind;
use fedrouter::xml::parse_stanza;
use fedrouter::xml::tree::Node;

// ---------------------------------------------------------------------------------------
// §8.5 delivery
// ---------------------------------------------------------------------------------------

/// The outcome a row expects.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Delivered to the sessions with these resources, in session order.
    To(&'static [&'static str]),
    /// A stanza error to the sender.
    Bounce(StanzaCondition),
    /// Dropped without an answer.
    Ignore,
    /// An error stanza nobody takes: not answered, counted.
    Lost,
    /// Processed as a subscription stanza (§3, Appendix A.3).
    Sub(SubType),
    /// Answered as a probe (§4.3.2).
    Probe,
    /// Stored offline for later delivery (§8.5.2.2.1, XEP-0160); `service-unavailable`
    /// when storage is off, the user's store is full, or there is no such user.
    Offline,
}
use Want::*;

/// (section, stanza, to, sessions, outcome, note)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Want,
    &'static str,
);

const BARE: &str = "";
const NONE: &str = "";

fn sessions(spec: &str) -> Vec<SessionView<'_>> {
    spec.split_whitespace()
        .map(|tok| {
            let (resource, rest) = tok.split_once(':').expect("resource:priority");
            let (rest, writable) = match rest.strip_suffix('!') {
                Some(r) => (r, false),
                None => (rest, true),
            };
            let (available, priority) = match rest {
                "off" => (false, 0),
                p => (true, p.parse().expect("priority")),
            };
            SessionView {
                resource,
                available,
                priority,
                writable,
            }
        })
        .collect()
}

fn stanza(spec: &str) -> (StanzaKind, Option<&str>) {
    let mut words = spec.split_whitespace();
    let kind = match words.next() {
        Some("message") => StanzaKind::Message,
        Some("presence") => StanzaKind::Presence,
        Some("iq") => StanzaKind::Iq,
        other => panic!("not a stanza kind: {other:?}"),
    };
    (kind, words.next())
}

/// Runs the rows; returns how many were checked.
fn check(rows: &[Row]) -> usize {
    for &(sec, st, to, spec, want, note) in rows {
        let (kind, type_) = stanza(st);
        let resource = to.strip_prefix('/');
        let views = sessions(spec);
        let got = delivery::decide(kind, type_, resource, &views);
        let ctx = format!("{sec}: {st:?} to {to:?} with [{spec}] ({note}): got {got:?}");
        match (want, &got) {
            (To(want), Delivery::Deliver(ix)) => {
                let got: Vec<&str> = ix.iter().map(|&i| views[i].resource).collect();
                assert_eq!(got, want, "{ctx}");
            }
            (Bounce(c), Delivery::Reply(g)) => assert_eq!(g, &c, "{ctx}"),
            (Ignore, Delivery::Ignore)
            | (Lost, Delivery::UndeliverableError)
            | (Probe, Delivery::Probe)
            | (Offline, Delivery::Offline) => {}
            (Sub(t), Delivery::Subscription(g)) => assert_eq!(g, &t, "{ctx}"),
            _ => panic!("{ctx}: want {want:?}"),
        }
    }
    rows.len()
}

/// §8.5.2.1.1: a message to the bare JID with at least one available resource.
#[rustfmt::skip]
const S8_5_2_1_1_MESSAGE: &[Row] = &[
    // normal
    ("§8.5.2.1.1", "message normal",    BARE, "home:0",                To(&["home"]),             "one non-negative: to it"),
    ("§8.5.2.1.1", "message normal",    BARE, "home:5 work:1",         To(&["home"]),             "most available: the highest priority"),
    ("§8.5.2.1.1", "message normal",    BARE, "home:5 work:5 phone:1", To(&["home", "work"]),     "equal highest priorities: each of them"),
    ("§8.5.2.1.1", "message normal",    BARE, "phone:-1 home:0",       To(&["home"]),             "a negative priority takes no bare-JID message"),
    ("§8.5.2.1.1", "message normal",    BARE, "phone:-1",              Offline,                   "all negative: as if none available (§8.5.2.2.1): stored, XEP-0160"),
    ("§8.5.2.1.1", "message normal",    BARE, "phone:-1 work:-5",      Offline,                   "all negative, several: stored, XEP-0160"),
    ("§8.5.2.1.1", "message",           BARE, "home:1 work:2",         To(&["work"]),             "no type is normal (§5.2.2)"),
    ("§8.5.2.1.1", "message weird",     BARE, "home:1 work:2",         To(&["work"]),             "an unknown type is normal (§5.2.2)"),
    // chat
    ("§8.5.2.1.1", "message chat",      BARE, "home:0",                To(&["home"]),             "the only resource, non-negative"),
    ("§8.5.2.1.1", "message chat",      BARE, "home:1 work:3",         To(&["work"]),             "most available: the highest priority"),
    ("§8.5.2.1.1", "message chat",      BARE, "home:2 work:2",         To(&["home", "work"]),     "equal priorities: both"),
    ("§8.5.2.1.1", "message chat",      BARE, "home:-5",               Offline,                   "the only resource negative: stored, XEP-0160"),
    ("§8.5.2.1.1", "message chat",      BARE, "tv:off home:1",         To(&["home"]),             "a connected, unavailable resource is skipped"),
    ("§8.5.2.1.1", "message chat",      BARE, "old:9! home:1",         To(&["home"]),             "a stalled resource counts as unavailable"),
    ("§8.5.2.1.1", "message chat",      BARE, "old:9!",                Offline,                   "the only available resource is stalled: stored, XEP-0160"),
    // groupchat
    ("§8.5.2.1.1", "message groupchat", BARE, "home:5",                Bounce(ServiceUnavailable), "MUST NOT deliver; SHOULD be service-unavailable"),
    ("§8.5.2.1.1", "message groupchat", BARE, "home:5 work:5",         Bounce(ServiceUnavailable), "several resources: refused all the same"),
    // headline
    ("§8.5.2.1.1", "message headline",  BARE, "home:0",                To(&["home"]),             "one non-negative"),
    ("§8.5.2.1.1", "message headline",  BARE, "home:5 work:0 phone:-1", To(&["home", "work"]),    "all non-negative ones, whatever their priorities"),
    ("§8.5.2.1.1", "message headline",  BARE, "phone:-1",              Ignore,                    "only negative: SHOULD silently ignore"),
    ("§8.5.2.1.1", "message headline",  BARE, "old:5! home:0",         To(&["home"]),             "a stalled resource counts as unavailable"),
    // error
    ("§8.5.2.1.1", "message error",     BARE, "home:1 work:0",         To(&["home"]),             "RFC 6121: MUST silently ignore; fedrouter delivers it as normal"),
    ("§8.5.2.1.1", "message error",     BARE, "phone:-1",              Lost,                      "only negative: not answered (RFC 6120 §8.3.1), counted"),
];

/// §8.5.2.2.1: a message to the bare JID with no available resource.
#[rustfmt::skip]
const S8_5_2_2_1_MESSAGE: &[Row] = &[
    ("§8.5.2.2.1", "message normal",    BARE, NONE,     Offline,                   "MUST store (XEP-0160 §3); service-unavailable when storage is off or full"),
    ("§8.5.2.2.1", "message chat",      BARE, NONE,     Offline,                   "MUST store (XEP-0160 §3); service-unavailable when storage is off or full"),
    ("§8.5.2.2.1", "message chat",      BARE, "tv:off", Offline,                   "connected but not available: stored"),
    ("§8.5.2.2.1", "message normal",    BARE, "old:3!", Offline,                   "the only resource is stalled: stored"),
    ("§8.5.2.2.1", "message groupchat", BARE, NONE,     Bounce(ServiceUnavailable), "MUST return service-unavailable; never stored (XEP-0160 §3)"),
    ("§8.5.2.2.1", "message headline",  BARE, NONE,     Ignore,                    "MUST silently ignore; never stored (XEP-0160 §3)"),
    ("§8.5.2.2.1", "message error",     BARE, NONE,     Lost,                      "MUST silently ignore (counted); never stored (XEP-0160 §3)"),
];

/// §8.5.2.1.2, §8.5.2.2.2: presence to the bare JID.
#[rustfmt::skip]
const S8_5_2_PRESENCE: &[Row] = &[
    ("§8.5.2.1.2", "presence",              BARE, "home:5 phone:-1 tv:off", To(&["home", "phone"]),   "all available resources, negative ones too"),
    ("§8.5.2.1.2", "presence unavailable",  BARE, "home:5 work:1",          To(&["home", "work"]),    "all available resources"),
    ("§8.5.2.1.2", "presence error",        BARE, "home:5",                 To(&["home"]),            "not in §8.5.2.1.2: delivered like unavailable"),
    ("§8.5.2.1.2", "presence",              BARE, "old:1! home:1",          To(&["home"]),            "a stalled resource takes nothing"),
    ("§8.5.2.1.2", "presence subscribe",    BARE, "home:5",                 Sub(SubType::Subscribe),  "§3.1.3"),
    ("§8.5.2.1.2", "presence subscribed",   BARE, "home:5",                 Sub(SubType::Subscribed), "§3.1.6"),
    ("§8.5.2.1.2", "presence unsubscribe",  BARE, "home:5",                 Sub(SubType::Unsubscribe), "§3.3.3"),
    ("§8.5.2.1.2", "presence unsubscribed", BARE, "home:5",                 Sub(SubType::Unsubscribed), "§3.2.3"),
    ("§8.5.2.1.2", "presence probe",        BARE, "home:5",                 Probe,                    "§4.3.2"),
    ("§8.5.2.2.2", "presence",              BARE, NONE,                     Ignore,                   "no available resource: silently ignored"),
    ("§8.5.2.2.2", "presence unavailable",  BARE, "tv:off",                 Ignore,                   "connected only: ignored"),
    ("§8.5.2.2.2", "presence subscribe",    BARE, NONE,                     Sub(SubType::Subscribe),  "§3.1.3: kept until the user is available"),
    ("§8.5.2.2.2", "presence probe",        BARE, NONE,                     Probe,                    "§4.3.2"),
];

/// §8.5.2.1.3, §8.5.2.2.3: an IQ to the bare JID is the server's to answer.
#[rustfmt::skip]
const S8_5_2_IQ: &[Row] = &[
    ("§8.5.2.1.3", "iq get",    BARE, "home:5",        Bounce(ServiceUnavailable), "MUST NOT deliver; no reply defined for the namespace"),
    ("§8.5.2.1.3", "iq set",    BARE, "home:5 work:5", Bounce(ServiceUnavailable), "MUST NOT deliver"),
    ("§8.5.2.1.3", "iq result", BARE, "home:5",        Ignore,                    "RFC 6120 §8.2.3: a response is not answered"),
    ("§8.5.2.1.3", "iq error",  BARE, "home:5",        Lost,                      "RFC 6120 §8.3.1: no error about an error"),
    ("§8.5.2.2.3", "iq get",    BARE, NONE,            Bounce(ServiceUnavailable), "answered on the user's behalf"),
    ("§8.5.2.2.3", "iq result", BARE, NONE,            Ignore,                    "RFC 6120 §8.2.3"),
];

/// §8.5.3.1: a full JID naming a connected resource.
#[rustfmt::skip]
const S8_5_3_1_MATCH: &[Row] = &[
    ("§8.5.3.1", "message normal",        "/work",  "home:5 work:1",   To(&["work"]),             "to the resource, whatever its priority"),
    ("§8.5.3.1", "message chat",          "/phone", "home:5 phone:-1", To(&["phone"]),            "a negative priority: still to the resource"),
    ("§8.5.3.1", "message groupchat",     "/home",  "home:5",          To(&["home"]),             "MUST deliver"),
    ("§8.5.3.1", "message headline",      "/home",  "home:-1",         To(&["home"]),             "MUST deliver"),
    ("§8.5.3.1", "message error",         "/home",  "home:0 work:9",   To(&["home"]),             "to the resource that sent the stanza"),
    ("§8.5.3.1", "message chat",          "/tv",    "tv:off home:5",   To(&["tv"]),               "a connected resource matches too"),
    ("§8.5.3.1", "presence",              "/home",  "home:5 work:5",   To(&["home"]),             "directed presence: to the resource only"),
    ("§8.5.3.1", "presence unavailable",  "/tv",    "tv:off",          To(&["tv"]),               "a connected resource matches too"),
    ("§8.5.3.1", "presence subscribe",    "/home",  "home:5",          Sub(SubType::Subscribe),   "§3: as if to the bare JID"),
    ("§8.5.3.1", "presence unsubscribed", "/home",  "home:5",          Sub(SubType::Unsubscribed), "§3: as if to the bare JID"),
    ("§8.5.3.1", "presence probe",        "/home",  "home:5",          Probe,                     "§4.3.2"),
    ("§8.5.3.1", "iq get",                "/home",  "home:5 work:9",   To(&["home"]),             "MUST deliver"),
    ("§8.5.3.1", "iq set",                "/tv",    "tv:off",          To(&["tv"]),               "MUST deliver, to a connected resource too"),
    ("§8.5.3.1", "iq result",             "/home",  "home:5",          To(&["home"]),             "MUST deliver"),
    ("§8.5.3.1", "iq error",              "/home",  "home:5",          To(&["home"]),             "MUST deliver"),
];

/// §8.5.3.2: a full JID naming no connected resource, or one whose client stopped reading.
#[rustfmt::skip]
const S8_5_3_2_NO_MATCH: &[Row] = &[
    // §8.5.3.2.1 message
    ("§8.5.3.2.1", "message chat",         "/gone", "home:1 work:3", To(&["work"]),             "chat: as if to the bare JID"),
    ("§8.5.3.2.1", "message chat",         "/gone", "home:-1",       Offline,                   "chat, as bare JID: only negative: stored"),
    ("§8.5.3.2.1", "message chat",         "/gone", NONE,            Offline,                   "chat, as bare JID: no resource: stored"),
    ("§8.5.3.2.1", "message chat",         "/old",  "old:9! home:1", To(&["home"]),             "the named resource is stalled: no match"),
    ("§8.5.3.2.1", "message normal",       "/gone", "home:1",        To(&["home"]),             "RFC 6121: ignore or service-unavailable; fedrouter (RFC 3921, Prosody): as bare JID"),
    ("§8.5.3.2.1", "message normal",       "/gone", NONE,            Offline,                   "RFC 6121: ignore or service-unavailable; fedrouter: as bare JID, stored"),
    ("§8.5.3.2.1", "message headline",     "/gone", "home:1 work:0", To(&["home", "work"]),     "RFC 6121: ignore or service-unavailable; fedrouter: as bare JID"),
    ("§8.5.3.2.1", "message headline",     "/gone", NONE,            Ignore,                    "option (a): ignored"),
    ("§8.5.3.2.1", "message groupchat",    "/gone", "home:1",        Bounce(ServiceUnavailable), "option (b): service-unavailable"),
    ("§8.5.3.2.1", "message groupchat",    "/old",  "old:1!",        Bounce(ServiceUnavailable), "the named resource is stalled"),
    ("§8.5.3.2.1", "message error",        "/gone", "home:1",        To(&["home"]),             "RFC 6121: MUST silently ignore; fedrouter: as bare JID"),
    ("§8.5.3.2.1", "message error",        "/gone", NONE,            Lost,                      "silently ignored (counted)"),
    // §8.5.3.2.2 presence
    ("§8.5.3.2.2", "presence",             "/gone", "home:1",        Ignore,                    "MUST silently ignore"),
    ("§8.5.3.2.2", "presence unavailable", "/gone", "home:1",        Ignore,                    "MUST silently ignore"),
    ("§8.5.3.2.2", "presence",             "/old",  "old:1!",        Ignore,                    "the named resource is stalled"),
    ("§8.5.3.2.2", "presence subscribe",   "/gone", NONE,            Sub(SubType::Subscribe),   "§3: as if to the bare JID"),
    ("§8.5.3.2.2", "presence subscribed",  "/gone", "home:1",        Sub(SubType::Subscribed),  "§3"),
    ("§8.5.3.2.2", "presence probe",       "/gone", NONE,            Probe,                     "§4.3.2"),
    // §8.5.3.2.3 iq
    ("§8.5.3.2.3", "iq get",               "/gone", "home:1",        Bounce(ServiceUnavailable), "MUST return service-unavailable"),
    ("§8.5.3.2.3", "iq set",               "/gone", NONE,            Bounce(ServiceUnavailable), "MUST return service-unavailable"),
    ("§8.5.3.2.3", "iq get",               "/old",  "old:5! home:5", Bounce(ServiceUnavailable), "the named resource is stalled"),
    ("§8.5.3.2.3", "iq result",            "/gone", "home:1",        Ignore,                    "RFC 6120 §8.2.3: a response is not answered"),
    ("§8.5.3.2.3", "iq error",             "/gone", "home:1",        Lost,                      "RFC 6120 §8.3.1"),
];

/// §8.5.1: the account does not exist. Messages, IQs and presence get what "no available
/// or connected resources" gets (the user has no session), which §8.5.1 allows; a
/// subscription stanza is then answered by [`delivery::to_unknown_user`].
#[rustfmt::skip]
const S8_5_1_NO_SUCH_USER: &[Row] = &[
    ("§8.5.1", "iq get",               BARE,   NONE, Bounce(ServiceUnavailable), "MUST return service-unavailable"),
    ("§8.5.1", "iq set",               "/res", NONE, Bounce(ServiceUnavailable), "MUST return service-unavailable"),
    ("§8.5.1", "message normal",       BARE,   NONE, Offline,                   "the store knows no such user: service-unavailable (option (b))"),
    ("§8.5.1", "message chat",         "/res", NONE, Offline,                   "the store knows no such user: service-unavailable (option (b))"),
    ("§8.5.1", "message groupchat",    BARE,   NONE, Bounce(ServiceUnavailable), "option (b): service-unavailable"),
    ("§8.5.1", "message headline",     BARE,   NONE, Ignore,                    "option (a): ignored"),
    ("§8.5.1", "message error",        BARE,   NONE, Lost,                      "option (a): ignored (counted)"),
    ("§8.5.1", "presence",             BARE,   NONE, Ignore,                    "MUST silently ignore"),
    ("§8.5.1", "presence unavailable", "/res", NONE, Ignore,                    "MUST silently ignore"),
    ("§8.5.1", "presence subscribe",   BARE,   NONE, Sub(SubType::Subscribe),   "then to_unknown_user: unsubscribed"),
    ("§8.5.1", "presence probe",       BARE,   NONE, Probe,                     "answered as for a non-subscriber: nothing"),
];

#[test]
fn s8_5_1_no_such_user() {
    assert_eq!(check(S8_5_1_NO_SUCH_USER), 11);
    // A subscription request is refused with `unsubscribed` (option (b); §3.1.3); the
    // other subscription types are ignored.
    let rows: [(SubType, Option<SubType>); 4] = [
        (SubType::Subscribe, Some(SubType::Unsubscribed)),
        (SubType::Subscribed, None),
        (SubType::Unsubscribe, None),
        (SubType::Unsubscribed, None),
    ];
    for (t, want) in rows {
        assert_eq!(delivery::to_unknown_user(t), want, "§8.5.1 {t}");
    }
}

#[test]
fn s8_5_2_1_1_message_to_bare_jid_available() {
    assert_eq!(check(S8_5_2_1_1_MESSAGE), 23);
}

#[test]
fn s8_5_2_2_1_message_to_bare_jid_none_available() {
    assert_eq!(check(S8_5_2_2_1_MESSAGE), 7);
}

#[test]
fn s8_5_2_presence_to_bare_jid() {
    assert_eq!(check(S8_5_2_PRESENCE), 13);
}

#[test]
fn s8_5_2_iq_to_bare_jid() {
    assert_eq!(check(S8_5_2_IQ), 6);
}

#[test]
fn s8_5_3_1_full_jid_resource_matches() {
    assert_eq!(check(S8_5_3_1_MATCH), 15);
}

#[test]
fn s8_5_3_2_full_jid_no_resource_matches() {
    assert_eq!(check(S8_5_3_2_NO_MATCH), 23);
}

/// Every kind, type, address and session set: the decision is one of the rows' kinds of
/// outcome, deliveries name only sessions that can take the stanza, and nothing goes to
/// a stalled session.
#[test]
fn invariants_over_every_case() {
    let kinds = [
        "message",
        "message chat",
        "message groupchat",
        "message headline",
        "message error",
        "presence",
        "presence unavailable",
        "presence error",
        "presence subscribe",
        "presence probe",
        "iq get",
        "iq set",
        "iq result",
        "iq error",
    ];
    let sets = [
        NONE,
        "home:0",
        "home:-1",
        "tv:off",
        "old:5!",
        "home:5 work:5 phone:-1 tv:off old:9!",
        "home:1 work:2",
    ];
    for st in kinds {
        for to in [BARE, "/home", "/tv", "/old", "/gone"] {
            for spec in sets {
                let (kind, type_) = stanza(st);
                let views = sessions(spec);
                let got = delivery::decide(kind, type_, to.strip_prefix('/'), &views);
                let ctx = format!("{st:?} to {to:?} with [{spec}]: {got:?}");
                match &got {
                    Delivery::Deliver(ix) => {
                        assert!(!ix.is_empty(), "{ctx}");
                        assert!(ix.windows(2).all(|w| w[0] < w[1]), "{ctx}: in order");
                        for &i in ix {
                            assert!(views[i].writable, "{ctx}: to a stalled session");
                            if let Some(r) = to.strip_prefix('/') {
                                // A full JID gets the resource, or bare-JID rules.
                                assert!(views[i].resource == r || views[i].available, "{ctx}");
                            } else {
                                assert!(views[i].available, "{ctx}: bare JID, unavailable");
                            }
                        }
                        if kind == StanzaKind::Iq {
                            assert!(to.starts_with('/'), "{ctx}: an IQ to the bare JID");
                        }
                    }
                    Delivery::Reply(c) => {
                        assert_eq!(*c, ServiceUnavailable, "{ctx}");
                        assert_ne!(type_, Some("error"), "{ctx}: error about an error");
                        assert_ne!(kind, StanzaKind::Presence, "{ctx}");
                    }
                    Delivery::UndeliverableError => assert_eq!(type_, Some("error"), "{ctx}"),
                    Delivery::Offline => {
                        // XEP-0160 §3: only normal and chat messages are stored.
                        assert!(matches!(st, "message" | "message chat"), "{ctx}");
                    }
                    Delivery::Subscription(_) | Delivery::Probe => {
                        assert_eq!(kind, StanzaKind::Presence, "{ctx}")
                    }
                    Delivery::Ignore => {}
                }
            }
        }
    }
}

/// After a stalled session is closed, what it never received is handled again, except a
/// message to the bare JID that another available, non-negative resource already got.
#[test]
fn s8_5_2_1_1_redelivery_after_a_write_stall() {
    // (stanza kind, to, the user's remaining sessions, handled again?)
    let rows: &[(&str, &str, &str, bool)] = &[
        ("message", BARE, "home:0", false),
        ("message", BARE, "home:-1", true),
        ("message", BARE, "tv:off", true),
        ("message", BARE, NONE, true),
        ("message", "/old", "home:5", true),
        ("iq", "/old", "home:5", true),
        ("iq", BARE, "home:5", true),
    ];
    for &(st, to, spec, want) in rows {
        let (kind, _) = stanza(st);
        let got = delivery::redeliver_after_stall(kind, to.strip_prefix('/'), &sessions(spec));
        assert_eq!(got, want, "{st} to {to:?} with [{spec}]");
    }
}

// ---------------------------------------------------------------------------------------
// §4.7.2.3 priority
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// §4.7.2.3 priority
// ---------------------------------------------------------------------------------------

/// (presence as received, its priority)
#[rustfmt::skip]
const S4_7_2_3_PRIORITY: &[(&str, i8)] = &[
    ("<presence/>",                                                                  0),
    ("<presence><show>away</show></presence>",                                       0),
    ("<presence><priority>5</priority></presence>",                                  5),
    ("<presence><priority>0</priority></presence>",                                  0),
    ("<presence><priority>-1</priority></presence>",                                -1),
    ("<presence><priority> 10 </priority></presence>",                              10),
    ("<presence><priority>127</priority></presence>",                              127),
    ("<presence><priority>-128</priority></presence>",                            -128),
    // Out of range: clamped; not an integer at all (or not an i32): 0.
    ("<presence><priority>200</priority></presence>",                              127),
    ("<presence><priority>-200</priority></presence>",                            -128),
    ("<presence><priority>99999999999</priority></presence>",                        0),
    ("<presence><priority>abc</priority></presence>",                                0),
    ("<presence><priority/></presence>",                                             0),
    ("<presence><show>dnd</show><priority>7</priority><status>x</status></presence>", 7),
    ("<presence><priority >3</priority></presence>",                                 3),
    ("<presence><priority xmlns='jabber:client'>4</priority></presence>",            4),
    ("<presence xmlns='jabber:client'><priority>6</priority></presence>",            6),
    ("<presence><priority><![CDATA[8]]></priority></presence>",                      8),
    ("<presence><priority>&#45;2</priority></presence>",                            -2),
    // Not the presence's own child: not its priority.
    ("<presence><x xmlns='urn:example'><priority>9</priority></x></presence>",       0),
    ("<presence><priority xmlns='urn:example'>9</priority></presence>",              0),
    ("<presence><status>&lt;priority&gt;9</status><priority>2</priority></presence>", 2),
];

#[test]
fn s4_7_2_3_priority() {
    for &(xml, want) in S4_7_2_3_PRIORITY {
        let el = parse_stanza(xml.as_bytes()).unwrap_or_else(|e| panic!("{xml}: {e}"));
        assert_eq!(delivery::priority(&el), want, "§4.7.2.3 {xml}");
    }
    assert_eq!(S4_7_2_3_PRIORITY.len(), 22);
}

// ---------------------------------------------------------------------------------------
// §2.3–§2.5 roster sets
// ---------------------------------------------------------------------------------------

/// What the server holds for the user before the set.
#[derive(Debug, Clone, Copy)]
enum Before {
    /// No roster for the user (an account the store does not know).
    NoRoster,
    /// This many roster items, and nothing for the contact.
    Absent(usize),
    /// This many roster items, the contact among them, in this Appendix A.1 state
    /// (`"+pre"` appended: pre-approved, §3.4).
    Item(usize, &'static str),
    /// This many roster items, and a record for the contact that is not a roster item (a
    /// request the user has not answered), in this state.
    Record(usize, &'static str),
}
use Before::{Absent, Item, NoRoster, Record};

/// The plan a row expects.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Stored and pushed: name, groups, the state kept, whether the item is new.
    Store(
        Option<&'static str>,
        &'static [&'static str],
        &'static str,
        bool,
    ),
    /// Removed: the actions once it is stored, in order.
    Remove(&'static [Action]),
    /// Refused with this condition.
    Refuse(StanzaCondition),
}
use Outcome::{Refuse, Remove, Store};

/// (section, the `<item/>`s of the query, before, outcome)
type SetRow = (&'static str, &'static str, Before, Outcome);

/// `c2s.max_roster_items` in these rows.
const MAX: usize = 3;

fn state(name: &str) -> SubState {
    match name.strip_suffix("+pre") {
        Some(n) => SubState::from_name(n).expect("A.1 state").pre_approved(),
        None => SubState::from_name(name).unwrap_or_else(|| panic!("not an A.1 state: {name}")),
    }
}

fn query(items: &str) -> Node {
    let xml = format!("<iq type='set' id='s'><query xmlns='jabber:iq:roster'>{items}</query></iq>");
    let el = parse_stanza(xml.as_bytes()).expect("well-formed row");
    Node::parse(&el).expect("tree").children.remove(0)
}

/// Runs the rows; returns how many were checked.
fn check_sets(rows: &[SetRow]) -> usize {
    for &(sec, items, before, want) in rows {
        let contact = |in_roster, s| HeldContact {
            in_roster,
            state: state(s),
        };
        let held = match before {
            NoRoster => None,
            Absent(items) => Some(Held {
                contact: None,
                items,
            }),
            Item(items, s) => Some(Held {
                contact: Some(contact(true, s)),
                items,
            }),
            Record(items, s) => Some(Held {
                contact: Some(contact(false, s)),
                items,
            }),
        };
        let got = roster_set::plan(&query(items), &RosterLimits::default(), MAX, |_| held);
        let ctx = format!("{sec}: {items} with {before:?}: got {got:?}");
        match (want, &got) {
            (Store(name, groups, st, added), Plan::Store { item, added: a }) => {
                assert_eq!(item.jid, "juliet@example.com", "{ctx}");
                assert_eq!(item.name.as_deref(), name, "{ctx}");
                assert_eq!(item.groups, groups, "{ctx}");
                assert_eq!(item.state, state(st), "{ctx}: a roster set keeps the state");
                assert_eq!(*a, added, "{ctx}");
            }
            (Remove(actions), Plan::Remove { jid, transition }) => {
                assert_eq!(jid, "juliet@example.com", "{ctx}");
                assert_eq!(&*transition.actions, actions, "{ctx}");
                assert_eq!(transition.state, SubState::NONE, "{ctx}");
            }
            (Refuse(c), Plan::Refuse(e)) => assert_eq!(e.condition(), c, "{ctx}"),
            _ => panic!("{ctx}: want {want:?}"),
        }
    }
    rows.len()
}

const J: &str = "<item jid='juliet@example.com'/>";
const R: &str = "<item jid='juliet@example.com' subscription='remove'/>";

/// §2.3: adding an item. The subscription state is the server's: a new contact is
/// "None", a contact whose request is pending keeps it (§2.1.2.5: a roster set never
/// changes the state; `subscription`, `ask`, `approved` in it are ignored, §2.1.2.1,
/// §2.1.2.2).
#[rustfmt::skip]
const S2_3_ADD: &[SetRow] = &[
    ("§2.3.2",   J, Absent(0), Store(None, &[], "None", true)),
    ("§2.3.2",   "<item jid='Juliet@Example.COM' name='Juliet'><group>Friends</group><group>Lovers</group></item>",
                    Absent(2), Store(Some("Juliet"), &["Friends", "Lovers"], "None", true)),
    ("§2.3.2",   J, Record(1, "None + Pending In"), Store(None, &[], "None + Pending In", true)),
    ("§2.1.2.5", "<item jid='juliet@example.com' subscription='both' ask='subscribe' approved='true'/>",
                    Absent(0), Store(None, &[], "None", true)),
    // The server's limit on a roster's length (c2s.max_roster_items): not-allowed.
    ("§2.3.3",   J, Absent(MAX), Refuse(NotAllowed)),
    ("§2.3.3",   J, Record(MAX, "None + Pending In"), Refuse(NotAllowed)),
    // Not in the RFC: a user the store does not know has no roster to add to.
    ("§2.3.3",   J, NoRoster, Refuse(ItemNotFound)),
];

/// §2.4: updating an item's name and groups; the state is kept.
#[rustfmt::skip]
const S2_4_UPDATE: &[SetRow] = &[
    ("§2.4.2",   "<item jid='juliet@example.com' name='Jules'/>",                  Item(1, "To"),   Store(Some("Jules"), &[], "To", false)),
    ("§2.4.2",   "<item jid='juliet@example.com'><group>Work</group></item>",       Item(2, "Both"), Store(None, &["Work"], "Both", false)),
    ("§2.4.2",   "<item jid='juliet@example.com' name=''/>",                       Item(1, "From + Pending Out"), Store(None, &[], "From + Pending Out", false)),
    ("§2.4.2",   J,                                                                 Item(1, "None+pre"), Store(None, &[], "None+pre", false)),
    ("§2.1.2.5", "<item jid='juliet@example.com' subscription='none'/>",            Item(1, "Both"), Store(None, &[], "Both", false)),
    // Updating is not adding: a full roster takes it.
    ("§2.4.2",   "<item jid='juliet@example.com' name='J'/>",                       Item(MAX, "From"), Store(Some("J"), &[], "From", false)),
];

const PUSH: Action = Action::RosterPush;
const UNAVAIL: Action = Action::SendUnavailable;
const UNSUB: Action = Action::AutoReply(SubType::Unsubscribe);
const UNSUBD: Action = Action::AutoReply(SubType::Unsubscribed);

/// §2.5: deleting an item, in each subscription state (Appendix A.1), with the stanzas
/// in the order they go out once the removal is stored: unavailable presence to a contact
/// that had `from` (§3.2.2), `unsubscribe` if the user had `to` or asked, `unsubscribed`
/// if the contact had `from` or asked (§2.5.2), then the IQ result and the push of the
/// removal (PUSH).
#[rustfmt::skip]
const S2_5_REMOVE: &[SetRow] = &[
    ("§2.5.2", R, Item(1, "None"),                  Remove(&[PUSH])),
    ("§2.5.2", R, Item(1, "None + Pending Out"),    Remove(&[UNSUB, PUSH])),
    ("§2.5.2", R, Item(1, "None + Pending In"),     Remove(&[UNSUBD, PUSH])),
    ("§2.5.2", R, Item(1, "None + Pending Out/In"), Remove(&[UNSUB, UNSUBD, PUSH])),
    ("§2.5.2", R, Item(1, "To"),                    Remove(&[UNSUB, PUSH])),
    ("§2.5.2", R, Item(1, "To + Pending In"),       Remove(&[UNSUB, UNSUBD, PUSH])),
    ("§2.5.2", R, Item(1, "From"),                  Remove(&[UNAVAIL, UNSUBD, PUSH])),
    ("§2.5.2", R, Item(1, "From + Pending Out"),    Remove(&[UNAVAIL, UNSUB, UNSUBD, PUSH])),
    ("§2.5.2", R, Item(1, "Both"),                  Remove(&[UNAVAIL, UNSUB, UNSUBD, PUSH])),
    ("§3.4",   R, Item(1, "None+pre"),              Remove(&[PUSH])),
    ("§3.4",   R, Item(1, "To+pre"),                Remove(&[UNSUB, PUSH])),
    // Not an item, but the contact's request is pending: removing it denies the request.
    ("§2.5.2", R, Record(0, "None + Pending In"),   Remove(&[UNSUBD, PUSH])),
    // Name and groups do not matter on a removal.
    ("§2.5.2", "<item jid='juliet@example.com' name='x' subscription='remove'><group>g</group></item>",
                  Item(1, "To"),                    Remove(&[UNSUB, PUSH])),
    // §2.5.3: nothing to remove.
    ("§2.5.3", R, Absent(2),                        Refuse(ItemNotFound)),
    ("§2.5.3", R, Record(0, "None"),                Refuse(ItemNotFound)),
    ("§2.5.3", R, NoRoster,                         Refuse(ItemNotFound)),
];

/// §2.3.3 and §2.1.5: invalid sets, refused before anything is read or stored.
#[rustfmt::skip]
const S2_3_3_INVALID: &[SetRow] = &[
    ("§2.1.5",   "",                                                                          Absent(0), Refuse(BadRequest)),
    ("§2.1.5",   "<item jid='juliet@example.com'/><item jid='romeo@example.net'/>",            Absent(0), Refuse(BadRequest)),
    ("§2.1.5",   "<item jid='juliet@example.com' subscription='remove'/><item jid='a@b'/>",     Item(1, "Both"), Refuse(BadRequest)),
    ("§2.1.2.3", "<item name='no jid'/>",                                                     Absent(0), Refuse(BadRequest)),
    ("§2.3.3",   "<item jid='@example.com'/>",                                                Absent(0), Refuse(BadRequest)),
    ("§2.3.3",   "<item jid='juliet@example.com/balcony'/>",                                  Absent(0), Refuse(BadRequest)),
    ("§2.3.3",   "<item jid='juliet@example.com'><group>A</group><group>A</group></item>",    Absent(0), Refuse(BadRequest)),
    ("§2.3.3",   "<item jid='juliet@example.com'><group></group></item>",                     Absent(0), Refuse(NotAcceptable)),
    // Invalid first: even with no roster, or a full one.
    ("§2.3.3",   "",                                                                          NoRoster,  Refuse(BadRequest)),
    ("§2.3.3",   "<item jid='juliet@example.com'><group></group></item>",                     Absent(MAX), Refuse(NotAcceptable)),
];

#[test]
fn s2_3_roster_set_add() {
    assert_eq!(check_sets(S2_3_ADD), 7);
}

#[test]
fn s2_4_roster_set_update() {
    assert_eq!(check_sets(S2_4_UPDATE), 6);
}

#[test]
fn s2_5_roster_set_remove_each_state() {
    assert_eq!(check_sets(S2_5_REMOVE), 16);
}

#[test]
fn s2_3_3_roster_set_invalid() {
    assert_eq!(check_sets(S2_3_3_INVALID), 10);
}

/// §2.3.3: the server's limits on names and groups: `not-acceptable`.
#[test]
fn s2_3_3_roster_set_limits() {
    let limits = RosterLimits::default();
    let long = "x".repeat(limits.max_name_bytes + 1);
    let groups: String = (0..=limits.max_groups)
        .map(|i| format!("<group>g{i}</group>"))
        .collect();
    let rows: [(String, RosterError); 3] = [
        (
            format!("<item jid='juliet@example.com' name='{long}'/>"),
            RosterError::NameTooLong(long.len()),
        ),
        (
            format!("<item jid='juliet@example.com'><group>{long}</group></item>"),
            RosterError::GroupTooLong(long.len()),
        ),
        (
            format!("<item jid='juliet@example.com'>{groups}</item>"),
            RosterError::TooManyGroups(limits.max_groups + 1),
        ),
    ];
    for (items, err) in rows {
        let got = roster_set::plan(&query(&items), &limits, MAX, |_| Some(Held::default()));
        let Plan::Refuse(e) = got else {
            panic!("§2.3.3: {got:?}")
        };
        assert_eq!(e, SetError::Invalid(err), "§2.3.3");
        assert_eq!(e.condition(), NotAcceptable, "§2.3.3");
    }
    // What the client reads in the error's text.
    assert_eq!(
        SetError::Full(3).to_string(),
        "the roster is limited to 3 items"
    );
    assert_eq!(SetError::NotFound.to_string(), "no such roster item");
}
