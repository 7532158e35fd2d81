//! XEP-0198 Stream Management, sans-IO, for C2S and S2S streams alike: the two counters
//! (§4), the queue of stanzas sent and not yet acknowledged, the cadence of ack requests,
//! resumption ids (§5), and the elements of `urn:xmpp:sm:3` ([`SmElement`]).
//!
//! # Shape
//!
//! ```text
//!   we send a stanza ──► Outbound::on_sent(item, now) ──► true: also send <r/> now
//!   peer sends <a h=N/> ► Outbound::on_ack(N) ─────────► the items it acknowledged
//!                                                       (Err: h beyond what we sent)
//!   stream lost ───────► Outbound::take_unacked() ─────► resend first on the next stream
//!                                                       (or resume: on_ack(h) then take)
//!   peer sends a stanza ► Inbound::on_handled() ; peer sends <r/> ► <a h=Inbound::h()/>
//! ```
//!
//! `h` counts stanzas (`<message/>`, `<presence/>`, `<iq/>`; never nonzas such as `<r/>`
//! or `<a/>`) modulo 2^32 (§4: "the value of 'h' … wraps around to 0 at 2^32"), from 0
//! when `<enable/>` was answered with `<enabled/>` (§3). The items the outbound queue
//! keeps are the caller's (`T`: the stanza's bytes, or a handle to them); this module only
//! counts and orders them.
//!
//! Time is an argument (`now`); nothing here reads a clock or draws random numbers: the
//! resumption id is an HMAC under the connection's per-process key.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::plumbing::keyed_mac;
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, Element, Namespace};

/// The stream management namespace, version 3 (XEP-0198 §3).
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// When to ask the peer for an acknowledgement (`<r/>`, XEP-0198 §4): after `every`
/// stanzas sent since the last request, or `after` once a stanza has waited that long
/// unrequested, whichever comes first. XEP-0198 leaves the cadence to the sender (§4:
/// "an entity SHOULD … when it has sent a certain number of stanzas or after some time").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// Stanzas sent since the last `<r/>` that trigger the next one (≥ 1; 0 behaves as 1).
    pub every: u32,
    /// Longest a sent stanza waits before an `<r/>` covers it.
    pub after: Duration,
}

impl Default for AckPolicy {
    /// 5 stanzas or 5 s: few requests on a busy stream, a bounded wait on a quiet one.
    fn default() -> Self {
        AckPolicy {
            every: 5,
            after: Duration::from_secs(5),
        }
    }
}

/// The peer acknowledged more stanzas than were sent (XEP-0198 §4): the stream must be
/// closed with `undefined-condition` and this application condition
/// ([`HandledCountTooHigh::write_app_condition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer acknowledged h={h}, but only {send_count} stanzas were sent")]
pub struct HandledCountTooHigh {
    /// The `h` the peer sent.
    pub h: u32,
    /// Stanzas we sent on the stream (mod 2^32).
    pub send_count: u32,
}

impl HandledCountTooHigh {
    /// `<handled-count-too-high xmlns='urn:xmpp:sm:3' h='…' send-count='…'/>`, the
    /// application-specific condition of the `undefined-condition` stream error (§4).
    pub fn write_app_condition(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<handled-count-too-high xmlns='urn:xmpp:sm:3' h='");
        out.extend_from_slice(self.h.to_string().as_bytes());
        out.extend_from_slice(b"' send-count='");
        out.extend_from_slice(self.send_count.to_string().as_bytes());
        out.extend_from_slice(b"'/>");
    }
}

/// The sending half of stream management: stanzas sent and not yet acknowledged, in the
/// order they were sent, and when to ask for an acknowledgement.
#[derive(Debug)]
pub struct Outbound<T> {
    policy: AckPolicy,
    /// Stanzas sent since `<enabled/>`, mod 2^32.
    sent: u32,
    /// The last `h` the peer acknowledged.
    acked: u32,
    /// `sent - acked` items, oldest first.
    unacked: VecDeque<T>,
    /// Stanzas sent since the last `<r/>`.
    since_request: u32,
    /// When the oldest stanza not covered by an `<r/>` must be covered.
    request_due: Option<Instant>,
    /// `<a/>`s whose `h` was behind the last one (ignored; see [`Outbound::on_ack`]).
    stale_acks: u64,
}

impl<T> Outbound<T> {
    /// A fresh sending half (both counters 0), as after `<enabled/>` (§3).
    pub fn new(policy: AckPolicy) -> Outbound<T> {
        Outbound {
            policy,
            sent: 0,
            acked: 0,
            unacked: VecDeque::new(),
            since_request: 0,
            request_due: None,
            stale_acks: 0,
        }
    }

    /// Records a stanza written to the stream (`item` is kept until acknowledged).
    /// Returns `true` when an `<r/>` should follow it now (the `every` count reached);
    /// the caller then sends `<r/>` and calls [`Outbound::request_sent`].
    pub fn on_sent(&mut self, item: T, now: Instant) -> bool {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(item);
        self.since_request = self.since_request.saturating_add(1);
        if self.request_due.is_none() {
            self.request_due = Some(now + self.policy.after);
        }
        self.since_request >= self.policy.every.max(1)
    }

    /// Records that an `<r/>` was sent: it covers every stanza sent so far.
    pub fn request_sent(&mut self) {
        self.since_request = 0;
        self.request_due = None;
    }

    /// When [`Outbound::handle_timeout`] wants to be called (an `<r/>` is due by time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.request_due
    }

    /// Returns `true` when an `<r/>` is due at `now` (a stanza has waited `after`
    /// unrequested); the caller sends it and calls [`Outbound::request_sent`].
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        self.request_due.is_some_and(|due| now >= due)
    }

    /// The peer's `<a h='…'/>` (or the `h` of `<resume/>`/`<resumed/>`, §5): removes and
    /// returns the stanzas it acknowledged, oldest first.
    ///
    /// An `h` behind the last one acknowledged (within half the counter's range) changes
    /// nothing and is counted ([`Outbound::stale_acks`]): XEP-0198 gives no rule for it,
    /// and nothing it covers is still held. Errors: [`HandledCountTooHigh`] when `h`
    /// acknowledges more than was sent (§4); nothing is removed then.
    pub fn on_ack(
        &mut self,
        h: u32,
    ) -> Result<std::collections::vec_deque::Drain<'_, T>, HandledCountTooHigh> {
        let newly = h.wrapping_sub(self.acked);
        if newly as usize > self.unacked.len() {
            let behind = self.acked.wrapping_sub(h);
            if behind < (1 << 31) {
                self.stale_acks += 1;
                return Ok(self.unacked.drain(..0));
            }
            return Err(HandledCountTooHigh {
                h,
                send_count: self.sent,
            });
        }
        self.acked = h;
        Ok(self.unacked.drain(..newly as usize))
    }

    /// Takes every stanza not acknowledged, oldest first: when the stream is lost, to
    /// send them again (on a resumed stream after [`Outbound::on_ack`] with the peer's
    /// `h`, or on a new stream before anything newer), or to bounce or store them.
    pub fn take_unacked(&mut self) -> VecDeque<T> {
        self.request_due = None;
        self.since_request = 0;
        std::mem::take(&mut self.unacked)
    }

    /// Stanzas sent and not acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The stanzas sent and not acknowledged, oldest first.
    pub fn iter_unacked(&self) -> impl Iterator<Item = &T> {
        self.unacked.iter()
    }

    /// Stanzas sent since `<enabled/>`, mod 2^32 (`send-count` of §4).
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// The last `h` the peer acknowledged.
    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// `<a/>`s ignored because their `h` was behind an earlier one.
    pub fn stale_acks(&self) -> u64 {
        self.stale_acks
    }
}

/// The receiving half of stream management: how many stanzas we handled (`h`, §4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inbound {
    handled: u32,
}

impl Inbound {
    /// Counts one stanza received and handled (routed, delivered, answered or bounced:
    /// from here on its fate is ours, not the peer's).
    pub fn on_handled(&mut self) {
        self.handled = self.handled.wrapping_add(1);
    }

    /// `h`: stanzas handled since `<enabled/>`, mod 2^32.
    pub fn h(&self) -> u32 {
        self.handled
    }

    /// Continues a resumed session's count (§5: the counters carry over).
    pub fn resumed(h: u32) -> Inbound {
        Inbound { handled: h }
    }
}

/// The id a receiving entity gives a resumable session in `<enabled id='…'/>` (§5):
/// `HMAC-SHA256(key, "sm-resume" ‖ stream id)` as 32 hex characters (128 bits), so it is
/// unguessable without the per-process key and needs no random source. §9 asks that it
/// not be guessable: a session is resumed only by an entity authenticated as its owner,
/// which the caller checks too.
pub fn resumption_id(key: &[u8; 32], stream_id: &str) -> String {
    let mac = keyed_mac(key, b"sm-resume", &[stream_id.as_bytes()]);
    hex_lower(&mac[..16])
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// One element of `urn:xmpp:sm:3` (XEP-0198 §3–§5, schema in §12).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmElement {
    /// `<enable resume='…' max='…'/>` (§3): the initiating entity enables stream
    /// management; `max` is its preferred resumption time in seconds.
    Enable {
        /// Whether the session should be resumable (§5).
        resume: bool,
        /// Preferred longest time to resume, in seconds.
        max: Option<u32>,
    },
    /// `<enabled id='…' resume='…' max='…' location='…'/>` (§3).
    Enabled {
        /// The resumption id (present when resumable).
        id: Option<String>,
        /// Whether the session may be resumed.
        resume: bool,
        /// Longest time the session is kept for resumption, in seconds.
        max: Option<u32>,
        /// Where to reconnect to resume (`host:port` or `[ip6]:port`).
        location: Option<String>,
    },
    /// `<r/>` (§4): a request for an acknowledgement.
    Request,
    /// `<a h='…'/>` (§4): stanzas handled.
    Answer {
        /// Stanzas handled, mod 2^32.
        h: u32,
    },
    /// `<resume h='…' previd='…'/>` (§5).
    Resume {
        /// Stanzas the initiating entity handled on the old stream.
        h: u32,
        /// The session's resumption id.
        previd: String,
    },
    /// `<resumed h='…' previd='…'/>` (§5).
    Resumed {
        /// Stanzas the receiving entity handled on the old stream.
        h: u32,
        /// The session's resumption id.
        previd: String,
    },
    /// `<failed h='…'>` with an optional stanza error condition child (§3, §5, §6).
    Failed {
        /// Stanzas handled, when known (§5: lets the client learn what arrived).
        h: Option<u32>,
        /// The condition's element name (`unexpected-request`, `item-not-found`, …).
        condition: Option<String>,
    },
}

/// Why an element in the stream management namespace is not a valid [`SmElement`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmParseError {
    /// Not in `urn:xmpp:sm:3`, or an element name the XEP does not define (its name).
    #[error("not a stream management element: {0}")]
    Unknown(String),
    /// A required attribute is missing (its name).
    #[error("missing attribute {0}")]
    Missing(&'static str),
    /// An attribute does not parse (its name and value).
    #[error("attribute {name}: bad value {value:?}")]
    Bad {
        /// The attribute.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

impl SmElement {
    /// Reads an element of the stream management namespace (`el.namespace()` must be
    /// [`Namespace::StreamManagement`]).
    ///
    /// Errors: [`SmParseError`] for another namespace or name, a missing `h` or `previd`,
    /// or an `h`/`max` that is not a `u32`; booleans accept `true`/`1`/`false`/`0`.
    pub fn parse(el: &Element) -> Result<SmElement, SmParseError> {
        if el.namespace() != &Namespace::StreamManagement {
            return Err(SmParseError::Unknown(el.qname().to_owned()));
        }
        let node = Node::parse(el).map_err(|_| SmParseError::Unknown(el.qname().to_owned()))?;
        let number = |name: &'static str| -> Result<Option<u32>, SmParseError> {
            node.attr(name)
                .map(|v| {
                    v.trim().parse::<u32>().map_err(|_| SmParseError::Bad {
                        name,
                        value: v.to_owned(),
                    })
                })
                .transpose()
        };
        let boolean = |name: &'static str| -> Result<bool, SmParseError> {
            match node.attr(name).map(str::trim) {
                None | Some("false" | "0") => Ok(false),
                Some("true" | "1") => Ok(true),
                Some(v) => Err(SmParseError::Bad {
                    name,
                    value: v.to_owned(),
                }),
            }
        };
        let text = |name: &'static str| node.attr(name).map(str::to_owned);
        Ok(match node.name.as_str() {
            "enable" => SmElement::Enable {
                resume: boolean("resume")?,
                max: number("max")?,
            },
            "enabled" => SmElement::Enabled {
                id: text("id"),
                resume: boolean("resume")?,
                max: number("max")?,
                location: text("location"),
            },
            "r" => SmElement::Request,
            "a" => SmElement::Answer {
                h: number("h")?.ok_or(SmParseError::Missing("h"))?,
            },
            "resume" => SmElement::Resume {
                h: number("h")?.ok_or(SmParseError::Missing("h"))?,
                previd: text("previd").ok_or(SmParseError::Missing("previd"))?,
            },
            "resumed" => SmElement::Resumed {
                h: number("h")?.ok_or(SmParseError::Missing("h"))?,
                previd: text("previd").ok_or(SmParseError::Missing("previd"))?,
            },
            "failed" => SmElement::Failed {
                h: number("h")?,
                condition: node
                    .children
                    .iter()
                    .find(|c| c.ns == STANZA_ERRORS)
                    .map(|c| c.name.clone()),
            },
            other => return Err(SmParseError::Unknown(other.to_owned())),
        })
    }

    /// Appends the element's XML (with its `xmlns`) to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let open = |name: &str, out: &mut Vec<u8>| {
            out.push(b'<');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b" xmlns='urn:xmpp:sm:3'");
        };
        let attr = |name: &str, value: &str, out: &mut Vec<u8>| {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr_into(value, out);
            out.push(b'\'');
        };
        match self {
            SmElement::Enable { resume, max } => {
                open("enable", out);
                if *resume {
                    attr("resume", "true", out);
                }
                if let Some(m) = max {
                    attr("max", &m.to_string(), out);
                }
                out.extend_from_slice(b"/>");
            }
            SmElement::Enabled {
                id,
                resume,
                max,
                location,
            } => {
                open("enabled", out);
                if let Some(id) = id {
                    attr("id", id, out);
                }
                if *resume {
                    attr("resume", "true", out);
                }
                if let Some(m) = max {
                    attr("max", &m.to_string(), out);
                }
                if let Some(l) = location {
                    attr("location", l, out);
                }
                out.extend_from_slice(b"/>");
            }
            SmElement::Request => out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>"),
            SmElement::Answer { h } => {
                open("a", out);
                attr("h", &h.to_string(), out);
                out.extend_from_slice(b"/>");
            }
            SmElement::Resume { h, previd } | SmElement::Resumed { h, previd } => {
                let name = if matches!(self, SmElement::Resume { .. }) {
                    "resume"
                } else {
                    "resumed"
                };
                open(name, out);
                attr("h", &h.to_string(), out);
                attr("previd", previd, out);
                out.extend_from_slice(b"/>");
            }
            SmElement::Failed { h, condition } => {
                open("failed", out);
                if let Some(h) = h {
                    attr("h", &h.to_string(), out);
                }
                match condition {
                    Some(c) => {
                        out.push(b'>');
                        out.push(b'<');
                        out.extend_from_slice(c.as_bytes());
                        out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>");
                        out.extend_from_slice(b"</failed>");
                    }
                    None => out.extend_from_slice(b"/>"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    /// The tests' base instant: any will do, every later time is derived from it.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn policy(every: u32, after_ms: u64) -> AckPolicy {
        AckPolicy {
            every,
            after: Duration::from_millis(after_ms),
        }
    }

    #[test]
    fn acks_release_stanzas_in_order() {
        let now = t0();
        let mut out = Outbound::new(policy(100, 1000));
        for i in 0..5 {
            assert!(!out.on_sent(i, now));
        }
        assert_eq!(out.on_ack(2).unwrap().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(out.unacked(), 3);
        assert_eq!(
            out.on_ack(2).unwrap().count(),
            0,
            "the same h again acks nothing"
        );
        assert_eq!(out.on_ack(5).unwrap().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!((out.sent(), out.acked(), out.unacked()), (5, 5, 0));
    }

    #[test]
    fn h_beyond_what_was_sent_is_an_error_and_removes_nothing() {
        let now = t0();
        let mut out = Outbound::new(AckPolicy::default());
        out.on_sent("a", now);
        out.on_sent("b", now);
        let err = out.on_ack(3).err().unwrap();
        assert_eq!(
            err,
            HandledCountTooHigh {
                h: 3,
                send_count: 2
            }
        );
        assert_eq!(out.unacked(), 2);
        let mut xml = Vec::new();
        err.write_app_condition(&mut xml);
        assert_eq!(
            xml,
            b"<handled-count-too-high xmlns='urn:xmpp:sm:3' h='3' send-count='2'/>"
        );
    }

    #[test]
    fn h_going_backwards_is_ignored_and_counted() {
        let now = t0();
        let mut out = Outbound::new(AckPolicy::default());
        for i in 0..4 {
            out.on_sent(i, now);
        }
        assert_eq!(out.on_ack(3).unwrap().count(), 3);
        assert_eq!(out.on_ack(1).unwrap().count(), 0);
        assert_eq!((out.stale_acks(), out.acked(), out.unacked()), (1, 3, 1));
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let now = t0();
        let mut out = Outbound::new(AckPolicy::default());
        // As if 2^32 - 2 stanzas had been sent and acknowledged.
        out.sent = u32::MAX - 1;
        out.acked = u32::MAX - 1;
        for i in 0..4 {
            out.on_sent(i, now);
        }
        assert_eq!(out.sent(), 2);
        assert_eq!(out.on_ack(u32::MAX).unwrap().collect::<Vec<_>>(), [0]);
        assert_eq!(out.on_ack(1).unwrap().collect::<Vec<_>>(), [1, 2]);
        assert!(out.on_ack(3).is_err());
        let mut inb = Inbound::resumed(u32::MAX);
        inb.on_handled();
        assert_eq!(inb.h(), 0);
    }

    #[test]
    fn requests_follow_the_count_or_the_time_whichever_first() {
        let now = t0();
        let mut out = Outbound::new(policy(3, 200));
        assert_eq!(out.poll_timeout(), None);
        assert!(!out.on_sent(1, now));
        assert_eq!(out.poll_timeout(), Some(now + Duration::from_millis(200)));
        assert!(!out.on_sent(2, now + Duration::from_millis(10)));
        assert!(
            out.on_sent(3, now + Duration::from_millis(20)),
            "third stanza"
        );
        out.request_sent();
        assert_eq!(out.poll_timeout(), None);
        // One stanza on a quiet stream: requested when it has waited `after`.
        out.on_sent(4, now + Duration::from_millis(50));
        assert!(!out.handle_timeout(now + Duration::from_millis(249)));
        assert!(out.handle_timeout(now + Duration::from_millis(250)));
        out.request_sent();
        assert!(!out.handle_timeout(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_lost_stream_hands_back_what_was_not_acknowledged() {
        let now = t0();
        let mut out = Outbound::new(AckPolicy::default());
        for i in 0..6 {
            out.on_sent(i, now);
        }
        // Resumption: the peer says it handled 4; the rest go again, in order.
        assert_eq!(out.on_ack(4).unwrap().count(), 4);
        assert_eq!(Vec::from(out.take_unacked()), [4, 5]);
        assert_eq!((out.unacked(), out.poll_timeout()), (0, None));
    }

    #[test]
    fn resumption_ids_are_keyed_and_distinct() {
        let a = resumption_id(&[1; 32], "s1");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, resumption_id(&[1; 32], "s1"));
        assert_ne!(a, resumption_id(&[1; 32], "s2"));
        assert_ne!(a, resumption_id(&[2; 32], "s1"));
    }

    fn parse(xml: &str) -> Result<SmElement, SmParseError> {
        SmElement::parse(&parse_stanza(xml.as_bytes()).unwrap())
    }

    #[test]
    fn elements_parse_and_write_back() {
        let cases = [
            (
                "<enable xmlns='urn:xmpp:sm:3' resume='true' max='300'/>",
                SmElement::Enable {
                    resume: true,
                    max: Some(300),
                },
            ),
            (
                "<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='60'/>",
                SmElement::Enabled {
                    id: Some("abc".into()),
                    resume: true,
                    max: Some(60),
                    location: None,
                },
            ),
            ("<r xmlns='urn:xmpp:sm:3'/>", SmElement::Request),
            ("<a xmlns='urn:xmpp:sm:3' h='4294967295'/>", SmElement::Answer { h: u32::MAX }),
            (
                "<resume xmlns='urn:xmpp:sm:3' h='7' previd='abc'/>",
                SmElement::Resume {
                    h: 7,
                    previd: "abc".into(),
                },
            ),
            (
                "<resumed xmlns='urn:xmpp:sm:3' h='3' previd='abc'/>",
                SmElement::Resumed {
                    h: 3,
                    previd: "abc".into(),
                },
            ),
            (
                "<failed xmlns='urn:xmpp:sm:3' h='2'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
                SmElement::Failed {
                    h: Some(2),
                    condition: Some("item-not-found".into()),
                },
            ),
        ];
        for (xml, want) in cases {
            assert_eq!(parse(xml).unwrap(), want, "{xml}");
            let mut out = Vec::new();
            want.write(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), xml);
        }
        // Booleans as XML Schema writes them; `resume` absent is false.
        assert_eq!(
            parse("<enable xmlns='urn:xmpp:sm:3' resume='1'/>").unwrap(),
            SmElement::Enable {
                resume: true,
                max: None
            }
        );
        assert_eq!(
            parse("<enable xmlns='urn:xmpp:sm:3'/>").unwrap(),
            SmElement::Enable {
                resume: false,
                max: None
            }
        );
    }

    #[test]
    fn bad_elements_are_named() {
        assert_eq!(
            parse("<a xmlns='urn:xmpp:sm:3'/>"),
            Err(SmParseError::Missing("h"))
        );
        assert_eq!(
            parse("<a xmlns='urn:xmpp:sm:3' h='-1'/>"),
            Err(SmParseError::Bad {
                name: "h",
                value: "-1".into()
            })
        );
        assert_eq!(
            parse("<a xmlns='urn:xmpp:sm:3' h='4294967296'/>"),
            Err(SmParseError::Bad {
                name: "h",
                value: "4294967296".into()
            })
        );
        assert_eq!(
            parse("<resume xmlns='urn:xmpp:sm:3' h='1'/>"),
            Err(SmParseError::Missing("previd"))
        );
        assert_eq!(
            parse("<x xmlns='urn:xmpp:sm:3'/>"),
            Err(SmParseError::Unknown("x".into()))
        );
        assert_eq!(
            parse("<a xmlns='urn:xmpp:sm:2' h='1'/>"),
            Err(SmParseError::Unknown("a".into()))
        );
        assert!(matches!(
            parse("<enable xmlns='urn:xmpp:sm:3' resume='yes'/>"),
            Err(SmParseError::Bad { name: "resume", .. })
        ));
    }
}
