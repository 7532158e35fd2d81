//! XEP-0198 Stream Management on S2S streams, both directions, with the counters and the
//! elements of [`crate::stream::sm`].
//!
//! - **Inbound** (we receive): `<sm xmlns='urn:xmpp:sm:3'/>` is offered in the stream
//!   features when [`S2sConfig::stream_management`] is set (never on a pre-1.0 stream).
//!   An `<enable/>` once a pair is authenticated is answered `<enabled/>` (without
//!   `resume`: S2S sessions are not resumed; what was not acknowledged is sent again on a
//!   new stream instead); before that, or a second time, `<failed><unexpected-request/>`.
//!   From then on every stanza we accept counts toward `h`, and `<r/>` is answered
//!   `<a h='…'/>`.
//! - **Outbound** (we send): when the peer offered the feature and the first pair is
//!   authenticated, we send `<enable/>`; every stanza sent after it counts. The peer's
//!   `<a h='…'/>` becomes [`Event::Acknowledged`] (the runtime releases that many
//!   stanzas, oldest first); `<r/>` goes out after [`AckPolicy::every`] stanzas or when
//!   one has waited [`AckPolicy::after`]. `<failed/>` in answer to `<enable/>` is
//!   [`Event::StreamManagementRefused`]: nothing will be acknowledged on this stream. An
//!   `h` beyond what we sent closes the stream with `undefined-condition` and
//!   `<handled-count-too-high/>` (XEP-0198 §4).
//! - **Both ways on one stream**: XEP-0198's state is per stream and both ends count
//!   what they receive (§4), so once enabled it also covers what travels against the
//!   stream's direction on a bidirectional stream (XEP-0288). Inbound, after our
//!   `<enabled/>` ([`Event::StreamManagementEnabled`]) we count what we send, ask
//!   for acknowledgements on the same policy as an outbound stream, and take the
//!   peer's `<a/>` as [`Event::Acknowledged`]; outbound, we count what the peer sends
//!   from our `<enable/>` on and answer its `<r/>`. A peer may send `<a/>` unasked
//!   (Prosody's `mod_smacks` does before it closes a stream): one for no more than we
//!   sent is taken, on either end.
//!
//! [`S2sConfig::stream_management`]: super::S2sConfig::stream_management
//! [`AckPolicy::every`]: crate::stream::sm::AckPolicy::every
//! [`AckPolicy::after`]: crate::stream::sm::AckPolicy::after

use std::time::Instant;

use super::{Direction, Event, S2sConnection, State};
use crate::condition::StreamCondition;
use crate::stream::sm::{Inbound, Outbound, SmElement};
use crate::xml::Element;

/// Stream management on one S2S stream.
#[derive(Debug, Default)]
pub(super) struct SmState {
    /// Outbound: the peer's features offered `urn:xmpp:sm:3`.
    pub(super) peer_offers: bool,
    /// Counting what we send: outbound from our `<enable/>` (until `<failed/>`); inbound
    /// from our `<enabled/>` (what a bidirectional stream carries for us).
    pub(super) out: Option<Outbound<()>>,
    /// Outbound: the peer answered `<enabled/>`; inbound: we did.
    pub(super) enabled: bool,
    /// Both: counting what we receive (inbound from the peer's `<enable/>`; outbound
    /// from its `<enabled/>`, §4, for a peer that sends on it).
    pub(super) inb: Option<Inbound>,
}

impl S2sConnection {
    /// Whether the stream keeps stanzas until the peer acknowledges them: `<enable/>` was
    /// sent and not refused (outbound), or `<enabled/>` answered the peer's (inbound, for
    /// what we send on a bidirectional stream). While true, a stanza the socket accepted
    /// is not yet delivered: the runtime keeps it until [`Event::Acknowledged`] covers
    /// it, and sends it again on the next stream if this one is lost.
    pub fn acknowledges_stanzas(&self) -> bool {
        self.sm.out.is_some()
    }

    /// Whether stream management is on: the peer answered our `<enable/>` with
    /// `<enabled/>` (outbound), or we answered its `<enable/>` so (inbound, with
    /// [`S2sConfig::stream_management`] set).
    pub fn stream_management_enabled(&self) -> bool {
        self.sm.enabled
    }

    /// Stanzas sent on this stream and not acknowledged yet (0 without stream
    /// management).
    pub fn unacknowledged(&self) -> usize {
        self.sm.out.as_ref().map_or(0, Outbound::unacked)
    }

    /// `h` of what we received and handled on this stream, when counting.
    pub fn handled_count(&self) -> Option<u32> {
        self.sm.inb.map(|i| i.h())
    }

    /// Writes the `<sm/>` stream feature when configured (inbound features).
    pub(super) fn write_sm_feature(&mut self) {
        if self.cfg.stream_management.is_some() {
            self.io
                .out
                .extend_from_slice(b"<sm xmlns='urn:xmpp:sm:3'/>");
        }
    }

    /// Outbound: after an authentication, enables stream management once per stream
    /// when both sides want it.
    pub(super) fn maybe_enable_sm(&mut self) {
        let Some(policy) = self.cfg.stream_management else {
            return;
        };
        if self.dir != Direction::Outbound
            || !self.sm.peer_offers
            || self.sm.out.is_some()
            || self.sm.enabled
            || self.state != State::Open
        {
            return;
        }
        SmElement::Enable {
            resume: false,
            max: None,
        }
        .write(&mut self.io.out);
        self.sm.out = Some(Outbound::new(policy));
        self.sm.inb = Some(Inbound::default());
    }

    /// A stanza was written to the stream (outbound): counts it and asks for an
    /// acknowledgement when one is due.
    pub(super) fn sm_stanza_sent(&mut self, now: Instant) {
        if let Some(out) = self.sm.out.as_mut() {
            if out.on_sent((), now) {
                out.request_sent();
                SmElement::Request.write(&mut self.io.out);
            }
        }
    }

    /// A stanza from the peer was accepted (handed to the runtime as [`Event::Stanza`]).
    pub(super) fn sm_stanza_handled(&mut self) {
        if let Some(inb) = self.sm.inb.as_mut() {
            inb.on_handled();
        }
    }

    /// The deadline of the next time-driven `<r/>`, if any.
    pub(super) fn sm_deadline(&self) -> Option<Instant> {
        self.sm.out.as_ref().and_then(Outbound::poll_timeout)
    }

    /// Sends the time-driven `<r/>` when it is due.
    pub(super) fn sm_timeout(&mut self, now: Instant) {
        if let Some(out) = self.sm.out.as_mut() {
            if out.handle_timeout(now) {
                out.request_sent();
                SmElement::Request.write(&mut self.io.out);
            }
        }
    }

    /// An element of `urn:xmpp:sm:3` on an open stream.
    pub(super) fn on_sm(&mut self, el: &Element) {
        let sm = match SmElement::parse(el) {
            Ok(sm) => sm,
            Err(e) => return self.fail(StreamCondition::BadFormat, &e.to_string()),
        };
        match (self.dir, sm) {
            // After our `</stream:stream>` nothing but whitespace may follow (RFC 6120
            // §4.4): a request that crossed our close goes unanswered.
            (_, SmElement::Request | SmElement::Enable { .. })
                if self.state == super::State::ExpectClose => {}
            (Direction::Inbound, SmElement::Enable { .. }) => {
                if self.pairs.is_empty() || self.sm.inb.is_some() {
                    // §3: not before authentication, and once per stream.
                    return SmElement::Failed {
                        h: None,
                        condition: Some("unexpected-request".to_owned()),
                    }
                    .write(&mut self.io.out);
                }
                SmElement::Enabled {
                    id: None,
                    resume: false,
                    max: None,
                    location: None,
                }
                .write(&mut self.io.out);
                self.sm.inb = Some(Inbound::default());
                // §4: from `<enabled/>` on, what we send counts too (a bidirectional
                // stream carries ours; on another, nothing is ever sent, so nothing is
                // asked).
                if let Some(policy) = self.cfg.stream_management {
                    self.sm.out = Some(Outbound::new(policy));
                    self.sm.enabled = true;
                    self.io.push_event(Event::StreamManagementEnabled);
                }
            }
            (_, SmElement::Request) => match self.sm.inb {
                Some(inb) => SmElement::Answer { h: inb.h() }.write(&mut self.io.out),
                None => self.fail(
                    StreamCondition::UnsupportedStanzaType,
                    "<r/> without stream management enabled",
                ),
            },
            (Direction::Outbound, SmElement::Enabled { .. }) if self.sm.out.is_some() => {
                self.sm.enabled = true;
                // §4: the initiating entity counts what it receives from `<enabled/>` on;
                // a stanza the peer sent before it read our `<enable/>` is not counted
                // there either.
                self.sm.inb = Some(Inbound::default());
            }
            (Direction::Outbound, SmElement::Failed { .. }) if self.sm.out.is_some() => {
                self.sm.out = None;
                self.sm.inb = None;
                self.io.push_event(Event::StreamManagementRefused);
            }
            (_, SmElement::Answer { h }) if self.sm.out.is_some() => {
                let out = self.sm.out.as_mut().expect("checked");
                let acked = out.on_ack(h).map(|drained| drained.count() as u32);
                match acked {
                    Ok(0) => {}
                    Ok(count) => self.io.push_event(Event::Acknowledged { count }),
                    Err(too_high) => {
                        // §4: undefined-condition with the application condition.
                        let mut app = Vec::new();
                        too_high.write_app_condition(&mut app);
                        self.fail_with(
                            StreamCondition::UndefinedCondition,
                            &too_high.to_string(),
                            &app,
                        );
                    }
                }
            }
            (_, other) => self.fail(
                StreamCondition::UnsupportedStanzaType,
                &format!("unexpected stream management element: {other:?}"),
            ),
        }
    }
}
