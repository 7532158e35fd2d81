//! XEP-0198 stream management on C2S streams: acknowledgements both ways, and session
//! resumption (§5), over the counters of [`crate::stream::sm`].
//!
//! - `<sm xmlns='urn:xmpp:sm:3'/>` is offered in the features after SASL when
//!   [`C2sConfig::stream_management`] is set.
//! - `<enable/>` is accepted once a resource is bound (§3: "the client MUST NOT attempt to
//!   enable stream management until after it has completed Resource Binding"); before,
//!   or a second time, it gets `<failed><unexpected-request/></failed>`. With
//!   `resume='true'` the session may be resumed for [`C2sSmConfig::max_resume`] at most
//!   (the client's `max` when smaller): `<enabled id='…' resume='true' max='…'/>` and
//!   [`Event::StreamManagementEnabled`] with the resumption id.
//! - Once enabled, every stanza the client sends counts toward `h` (answered on `<r/>`),
//!   and every stanza we send is kept (its bytes) until the client's `<a h='…'/>` covers
//!   it; `<r/>` goes out per [`AckPolicy`]. An `h` beyond what we sent closes the stream
//!   with `undefined-condition` and `<handled-count-too-high/>`.
//! - `<resume previd='…' h='…'/>` after SASL, instead of binding:
//!   [`Event::ResumeRequested`]; the runtime finds the detached session (same
//!   authenticated account), takes its state with
//!   [`C2sConnection::take_resumable_state`] and answers with
//!   [`C2sConnection::handle_resume`]: `<resumed/>`, then the stanzas the client had not
//!   acknowledged, again, in order; or `<failed><item-not-found/></failed>` and the
//!   client binds as usual.
//! - When the stream ends, [`C2sConnection::take_unacknowledged`] gives the bytes of what
//!   the client never acknowledged, for the runtime to deliver elsewhere (RFC 6121 §8.5
//!   and XEP-0198 §5 "the server SHOULD … treat unacknowledged stanzas as undelivered").
//!
//! [`C2sConfig::stream_management`]: super::C2sConfig::stream_management

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{C2sConnection, C2sError, Event, State};
use crate::condition::StreamCondition;
use crate::jid::FullJid;
use crate::stream::sm::{resumption_id, AckPolicy, Inbound, Outbound, SmElement};
use crate::xml::Element;

/// Stream management settings of C2S streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2sSmConfig {
    /// When to ask the client for acknowledgements.
    pub ack: AckPolicy,
    /// Longest a session whose stream dropped is kept for resumption (§5); zero: sessions
    /// are not resumable.
    pub max_resume: Duration,
}

impl Default for C2sSmConfig {
    /// Ask after 5 stanzas or 30 s (mobile clients sleep: few wake-ups); keep a dropped
    /// session 5 minutes.
    fn default() -> Self {
        C2sSmConfig {
            ack: AckPolicy {
                every: 5,
                after: Duration::from_secs(30),
            },
            max_resume: Duration::from_secs(300),
        }
    }
}

/// Stream management on one C2S stream, once enabled.
#[derive(Debug)]
pub(super) struct C2sSm {
    out: Outbound<Bytes>,
    inb: Inbound,
    /// The resumption id, when resumable.
    id: Option<String>,
    /// How long the session may wait for resumption.
    max: Duration,
}

/// What a detached session hands to the stream that resumes it
/// ([`C2sConnection::take_resumable_state`] → [`C2sConnection::handle_resume`]).
#[derive(Debug)]
pub struct ResumableState {
    full: FullJid,
    sm: C2sSm,
}

impl ResumableState {
    /// The session's full JID.
    pub fn jid(&self) -> &str {
        self.full.as_str()
    }

    /// The stanzas sent on the old stream and not acknowledged, oldest first.
    pub fn unacknowledged(&self) -> usize {
        self.sm.out.unacked()
    }
}

impl C2sConnection {
    /// Whether stream management is enabled on this stream.
    pub fn stream_management_enabled(&self) -> bool {
        self.sm.is_some()
    }

    /// The resumption id, when the session is resumable (§5).
    pub fn resumption_id(&self) -> Option<&str> {
        self.sm.as_ref().and_then(|s| s.id.as_deref())
    }

    /// How long a dropped session may wait for resumption (zero when not resumable).
    pub fn resumption_timeout(&self) -> Duration {
        self.sm
            .as_ref()
            .filter(|s| s.id.is_some())
            .map_or(Duration::ZERO, |s| s.max)
    }

    /// Stanzas sent and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.sm.as_ref().map_or(0, |s| s.out.unacked())
    }

    /// Takes the bytes of every stanza sent and not acknowledged, oldest first (empty
    /// without stream management): for the runtime to deliver elsewhere when the session
    /// ends without being resumed.
    pub fn take_unacknowledged(&mut self) -> Vec<Bytes> {
        self.sm
            .as_mut()
            .map(|s| s.out.take_unacked().into())
            .unwrap_or_default()
    }

    /// Takes what a resuming stream needs from this (dropped, resumable) session: its
    /// full JID, counters and unacknowledged stanzas. `None` when it is not resumable.
    pub fn take_resumable_state(&mut self) -> Option<ResumableState> {
        let full = self.full.clone()?;
        if self.sm.as_ref().is_none_or(|s| s.id.is_none()) {
            return None;
        }
        let sm = self.sm.take()?;
        Some(ResumableState { full, sm })
    }

    /// The answer to [`Event::ResumeRequested`]: `Some` resumes that session on this
    /// stream (it must belong to the authenticated account): `<resumed h='…'/>`, the
    /// stanzas the client had not acknowledged sent again, and [`Event::Resumed`];
    /// `None` answers `<failed><item-not-found/></failed>` and the client may bind.
    ///
    /// Errors: [`C2sError::InvalidState`] when no resumption was requested;
    /// [`C2sError::InvalidJid`] when the state belongs to another account (answered
    /// `item-not-found` too).
    pub fn handle_resume(
        &mut self,
        state: Option<ResumableState>,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitResume {
            return Err(C2sError::InvalidState("no resumption was requested"));
        }
        let (previd, h) = self.resume_request.take().unwrap_or_default();
        let mut outcome = Ok(());
        let state = match state {
            Some(s) if Some(&s.full.to_bare()) == self.jid.as_ref() => Some(s),
            Some(s) => {
                outcome = Err(C2sError::InvalidJid(s.full.as_str().to_owned()));
                None
            }
            None => None,
        };
        let Some(ResumableState { full, mut sm }) = state else {
            SmElement::Failed {
                h: None,
                condition: Some("item-not-found".to_owned()),
            }
            .write(&mut self.io.out);
            self.state = State::ExpectBind;
            self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
            self.process(now);
            return outcome;
        };
        // §5: acknowledge with the client's h, answer with ours, then send again what is
        // still unacknowledged, in order.
        if let Err(too_high) = sm.out.on_ack(h) {
            let mut app = Vec::new();
            too_high.write_app_condition(&mut app);
            self.fail_with(
                StreamCondition::UndefinedCondition,
                &too_high.to_string(),
                &app,
            );
            return outcome;
        }
        SmElement::Resumed {
            h: sm.inb.h(),
            previd,
        }
        .write(&mut self.io.out);
        for b in sm.out.iter_unacked() {
            self.io.out.extend_from_slice(b);
        }
        if sm.out.unacked() > 0 {
            sm.out.request_sent();
            SmElement::Request.write(&mut self.io.out);
        }
        self.io.push_event(Event::Resumed {
            jid: full.as_str().to_owned(),
        });
        self.full = Some(full);
        self.sm = Some(sm);
        self.state = State::Open;
        self.io.deadline = None;
        self.io.last_tx = now;
        self.process(now);
        outcome
    }

    /// The `<sm/>` feature, after SASL.
    pub(super) fn write_sm_feature(&mut self) {
        if self.cfg.stream_management.is_some() {
            self.io
                .out
                .extend_from_slice(b"<sm xmlns='urn:xmpp:sm:3'/>");
        }
    }

    /// A stanza from the client was handled.
    pub(super) fn sm_handled(&mut self) {
        if let Some(sm) = self.sm.as_mut() {
            sm.inb.on_handled();
        }
    }

    /// A stanza was written to the client from `start` in the transmit buffer: kept until
    /// acknowledged, and an `<r/>` follows when due.
    pub(super) fn sm_sent_from(&mut self, start: usize, now: Instant) {
        let Some(sm) = self.sm.as_mut() else { return };
        let bytes = Bytes::copy_from_slice(&self.io.out[start..]);
        if sm.out.on_sent(bytes, now) {
            sm.out.request_sent();
            SmElement::Request.write(&mut self.io.out);
        }
    }

    /// When the next time-driven `<r/>` is due.
    pub(super) fn sm_deadline(&self) -> Option<Instant> {
        self.sm.as_ref().and_then(|s| s.out.poll_timeout())
    }

    /// Sends the time-driven `<r/>` when due.
    pub(super) fn sm_timeout(&mut self, now: Instant) {
        if let Some(sm) = self.sm.as_mut() {
            if sm.out.handle_timeout(now) {
                sm.out.request_sent();
                SmElement::Request.write(&mut self.io.out);
            }
        }
    }

    /// An element of `urn:xmpp:sm:3` after SASL (before or after binding).
    pub(super) fn on_sm(&mut self, el: &Element, now: Instant) {
        let Some(cfg) = self.cfg.stream_management else {
            return self.fail(
                StreamCondition::UnsupportedStanzaType,
                "stream management is not offered",
            );
        };
        let parsed = match SmElement::parse(el) {
            Ok(p) => p,
            Err(e) => return self.fail(StreamCondition::BadFormat, &e.to_string()),
        };
        let unexpected = |this: &mut Self| {
            SmElement::Failed {
                h: None,
                condition: Some("unexpected-request".to_owned()),
            }
            .write(&mut this.io.out)
        };
        match parsed {
            SmElement::Enable { resume, max } => {
                if self.state != State::Open || self.sm.is_some() {
                    return unexpected(self);
                }
                let mut limit = cfg.max_resume;
                if let Some(m) = max {
                    limit = limit.min(Duration::from_secs(u64::from(m)));
                }
                let resumable = resume && !limit.is_zero();
                let id =
                    resumable.then(|| resumption_id(&self.cfg.stream_id_key, &self.io.stream_id));
                SmElement::Enabled {
                    id: id.clone(),
                    resume: resumable,
                    max: resumable.then(|| u32::try_from(limit.as_secs()).unwrap_or(u32::MAX)),
                    location: None,
                }
                .write(&mut self.io.out);
                self.sm = Some(C2sSm {
                    out: Outbound::new(cfg.ack),
                    inb: Inbound::default(),
                    id: id.clone(),
                    max: if resumable { limit } else { Duration::ZERO },
                });
                self.io
                    .push_event(Event::StreamManagementEnabled { resumption_id: id });
            }
            SmElement::Resume { h, previd } => {
                if self.state != State::ExpectBind {
                    return unexpected(self);
                }
                self.resume_request = Some((previd.clone(), h));
                self.state = State::AwaitResume;
                self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
                self.io.push_event(Event::ResumeRequested { previd, h });
            }
            SmElement::Request => match self.sm.as_ref() {
                Some(sm) => SmElement::Answer { h: sm.inb.h() }.write(&mut self.io.out),
                None => unexpected(self),
            },
            SmElement::Answer { h } => {
                let Some(sm) = self.sm.as_mut() else {
                    return unexpected(self);
                };
                if let Err(too_high) = sm.out.on_ack(h).map(|d| d.count()) {
                    let mut app = Vec::new();
                    too_high.write_app_condition(&mut app);
                    self.fail_with(
                        StreamCondition::UndefinedCondition,
                        &too_high.to_string(),
                        &app,
                    );
                }
            }
            _ => self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected stream management element",
            ),
        }
    }
}
