//! Server Dialback (XEP-0220) on an S2S stream, both ways: on an outbound stream our
//! `db:result` (Originating Server) and `db:verify` (Receiving Server asking the
//! Authoritative Server) and the answers to them; on an inbound stream the peer's
//! `db:result` (we are the Receiving Server: [`Event::VerifyNeeded`]) and `db:verify` (we
//! are the Authoritative Server: the XEP-0185 key check), and their deadlines.

use std::time::Instant;

use super::{AuthMethod, Direction, Event, S2sConnection, S2sError, State};
use crate::condition::{StanzaCondition, StreamCondition};
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::jid::DomainPart;
use crate::stream::policy::TlsPolicy;
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, escape_text_into, ns, Element};

/// A `db:result` waiting for its answer (outbound) or for the runtime's verdict
/// (inbound).
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) local: String,
    pub(super) remote: String,
    pub(super) deadline: Instant,
}

/// Outbound: a `db:verify` we sent, waiting for the authoritative server's answer.
#[derive(Debug, Clone)]
pub(super) struct PendingVerify {
    pub(super) local: String,
    pub(super) remote: String,
    pub(super) stream_id: String,
    pub(super) deadline: Instant,
}

impl S2sConnection {
    // ----- accessors -----

    /// Outbound: our domains whose `db:result` waits for the peer's answer (XEP-0220
    /// §2.1.1), in the order they were sent.
    pub fn pending_dialbacks(&self) -> impl Iterator<Item = &str> {
        self.pending_results
            .iter()
            .filter(|_| self.dir == Direction::Outbound)
            .map(|p| p.local.as_str())
    }

    /// Whether the stream waits for any dialback answer: a `db:result` or `db:verify`
    /// sent and unanswered, or queued until the stream is ready.
    pub fn awaits_dialback_answers(&self) -> bool {
        !(self.pending_results.is_empty()
            && self.pending_verifies.is_empty()
            && self.queued_verifies.is_empty()
            && self.queued_dialbacks.is_empty())
    }

    /// Inbound: how many dialback requests (`db:result` or `db:verify`, XEP-0220 §2.2)
    /// the peer sent on this stream.
    pub fn dialback_requests_received(&self) -> u32 {
        self.dialback_requests
    }

    // ----- inputs -----

    /// Inbound: the authoritative server's verdict on a key from [`Event::VerifyNeeded`]
    /// (XEP-0220 §2.1.3). Sends `<db:result type=.../>` and, when valid, authenticates
    /// the pair. `invalid` closes the stream when it carries no other domain pair; when
    /// other pairs are authenticated on it, the pair is refused with a `<forbidden/>`
    /// dialback error instead and the stream stays up for them (XEP-0220 §2.2.1, §2.1.2:
    /// the Initiating Server may merely be misconfigured for this Sender Domain).
    /// Ignored when no such verification is pending.
    pub fn handle_dialback_verdict(
        &mut self,
        local: &str,
        remote: &str,
        result: DialbackResult,
        now: Instant,
    ) {
        let Some(i) = self
            .pending_results
            .iter()
            .position(|p| p.local == local && p.remote == remote)
        else {
            return;
        };
        self.pending_results.swap_remove(i);
        if result == DialbackResult::Invalid && !self.pairs.is_empty() {
            // Other domain pairs are authenticated on this stream: closing it would
            // throw their state away (XEP-0220 §2.2.1, "MAY ... return an error condition
            // of <forbidden/>"). No stanza from `remote` is accepted for `local`.
            let forbidden = DialbackResult::Error(DialbackErrorCondition::Forbidden);
            return self.write_db_answer("result", local, remote, None, forbidden);
        }
        self.write_db_answer("result", local, remote, None, result);
        match result {
            DialbackResult::Valid => self.authenticate(local, remote, AuthMethod::Dialback, now),
            // XEP-0220 §2.2.1: the Initiating Server is spoofing the Sender Domain, and
            // this was its first pair: the Receiving Server closes the stream.
            DialbackResult::Invalid => self.close(None, now),
            DialbackResult::Error(_) => {}
        }
    }

    // ----- commands -----

    /// Outbound: authenticates a further local domain to the same remote domain over
    /// this stream (XEP-0220 §2.4 multiplexing, "piggybacking"): sends `db:result` for
    /// (`local`, remote) once the stream is ready. The outcome is an
    /// [`Event::Authenticated`] or [`Event::AuthFailed`].
    pub fn request_dialback(&mut self, local: &str, now: Instant) -> Result<(), S2sError> {
        let remote = self.remote.clone();
        self.queue_dialback(local, &remote, now)
    }

    /// [`Self::request_dialback`] for (`local`, `remote`) without the multiplexing checks
    /// of [`Self::request_dialback_for`] (the runtime calls that one for another remote
    /// domain).
    pub(super) fn queue_dialback(
        &mut self,
        local: &str,
        remote: &str,
        now: Instant,
    ) -> Result<(), S2sError> {
        if self.dir != Direction::Outbound {
            return Err(S2sError::InvalidState(
                "dialback is requested on outbound streams",
            ));
        }
        if self.verify_only {
            return Err(S2sError::InvalidState(
                "a verify-only stream authenticates nothing",
            ));
        }
        if self.is_authenticated(local, remote) {
            return Ok(());
        }
        if self.state == State::Open {
            self.send_db_result(local, remote, now);
        } else if !self
            .queued_dialbacks
            .iter()
            .any(|(l, r)| l == local && r == remote)
        {
            self.queued_dialbacks
                .push((local.to_owned(), remote.to_owned()));
        }
        Ok(())
    }

    /// Outbound: asks the peer, as authoritative server for its domain, whether `key`
    /// is valid for the inbound stream `stream_id` (XEP-0220 §2.1.3 `db:verify`). Sent
    /// once the stream is ready (authentication of this stream is not needed); the answer
    /// is an [`Event::VerifyAnswered`].
    pub fn send_db_verify(
        &mut self,
        local: &str,
        stream_id: &str,
        key: &str,
        now: Instant,
    ) -> Result<(), S2sError> {
        let remote = self.remote.clone();
        self.send_db_verify_for(local, &remote, stream_id, key, now)
    }

    /// [`Self::send_db_verify`] addressed to `remote`, another domain hosted at the
    /// stream's target (XEP-0220 §2.4: a stream that multiplexes `remote`).
    pub fn send_db_verify_for(
        &mut self,
        local: &str,
        remote: &str,
        stream_id: &str,
        key: &str,
        now: Instant,
    ) -> Result<(), S2sError> {
        if self.dir != Direction::Outbound {
            return Err(S2sError::InvalidState(
                "db:verify is sent on outbound streams",
            ));
        }
        let remote = remote.to_owned();
        if self.state == State::Open {
            self.write_db_verify(local, &remote, stream_id, key, now);
        } else {
            self.queued_verifies.push((
                local.to_owned(),
                remote,
                stream_id.to_owned(),
                key.to_owned(),
            ));
        }
        Ok(())
    }

    /// Outbound: stops waiting for the peer's answer to our `db:result` for (`local`,
    /// remote) and reports [`Event::AuthFailed`] with `result`. For the runtime, when it
    /// learns elsewhere that the peer's side of the dialback failed (its verification
    /// connection to our authoritative side broke off, XEP-0220 §2.1.2): §2.1.1 lets the
    /// Initiating Server consider a dialback failed without waiting for its timeout. An
    /// answer arriving later no longer matches a request and is ignored (§3.1). Returns
    /// whether such a `db:result` was pending.
    pub fn fail_dialback(&mut self, local: &str, result: DialbackResult) -> bool {
        let remote = self.remote.clone();
        self.fail_dialback_for(local, &remote, result)
    }

    /// [`Self::fail_dialback`] for the pair (`local`, `remote`): on a stream that
    /// multiplexes several remote domains (XEP-0220 §2.4), the one the runtime learned
    /// about.
    pub fn fail_dialback_for(&mut self, local: &str, remote: &str, result: DialbackResult) -> bool {
        if self.dir != Direction::Outbound {
            return false;
        }
        let Some(i) = self
            .pending_results
            .iter()
            .position(|p| p.local == local && p.remote.eq_ignore_ascii_case(remote))
        else {
            return false;
        };
        let p = self.pending_results.remove(i);
        self.io.push_event(Event::AuthFailed {
            local: p.local,
            remote: p.remote,
            result,
        });
        true
    }

    // ----- deadlines -----

    /// The dialback answers that did not come in time (XEP-0220 §2.5
    /// `remote-server-timeout`): inbound, the `db:result`s the runtime gave no verdict
    /// for are answered `type='error'`; outbound, our `db:result`s fail (and the stream
    /// with them when nothing is left to authenticate) and our `db:verify`s are answered
    /// with the error for the runtime. Returns false when the stream failed.
    pub(super) fn dialback_timeouts(&mut self, now: Instant) -> bool {
        let mut i = 0;
        while i < self.pending_results.len() {
            if now >= self.pending_results[i].deadline {
                let p = self.pending_results.swap_remove(i);
                match self.dir {
                    Direction::Inbound => {
                        let r = DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout);
                        self.write_db_answer("result", &p.local, &p.remote, None, r);
                    }
                    Direction::Outbound => {
                        self.io.push_event(Event::AuthFailed {
                            local: p.local,
                            remote: p.remote,
                            result: DialbackResult::Error(
                                DialbackErrorCondition::RemoteServerTimeout,
                            ),
                        });
                        if self.pairs.is_empty() && self.pending_results.is_empty() {
                            // Nothing authenticated and nothing left to wait for.
                            self.fail(
                                StreamCondition::ConnectionTimeout,
                                "dialback result timed out",
                            );
                            return false;
                        }
                    }
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.pending_verifies.len() {
            if now >= self.pending_verifies[i].deadline {
                let p = self.pending_verifies.swap_remove(i);
                self.io.push_event(Event::VerifyAnswered {
                    local: p.local,
                    remote: p.remote,
                    stream_id: p.stream_id,
                    result: DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
                });
            } else {
                i += 1;
            }
        }
        true
    }

    /// The stream ended: outbound dialback still waiting will not complete on it
    /// (XEP-0220 §2.1.1: the Initiating Server treats a closed stream as a dialback
    /// error), and our `db:verify`s get no answer.
    pub(super) fn fail_pending_dialbacks(&mut self) {
        for p in std::mem::take(&mut self.pending_results) {
            if self.dir == Direction::Outbound {
                self.io.push_event(Event::AuthFailed {
                    local: p.local,
                    remote: p.remote,
                    result: DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
                });
            }
        }
        for p in std::mem::take(&mut self.pending_verifies) {
            self.io.push_event(Event::VerifyAnswered {
                local: p.local,
                remote: p.remote,
                stream_id: p.stream_id,
                result: DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed),
            });
        }
    }

    // ----- outbound requests -----

    /// Sends what was asked for before the stream was ready.
    pub(super) fn flush_queued(&mut self, now: Instant) {
        for (local, remote) in std::mem::take(&mut self.queued_dialbacks) {
            if !self.is_authenticated(&local, &remote) {
                if self.sasl_done && !self.peer_dialback {
                    continue;
                }
                self.send_db_result(&local, &remote, now);
            }
        }
        for (local, remote, id, key) in std::mem::take(&mut self.queued_verifies) {
            self.write_db_verify(&local, &remote, &id, &key, now);
        }
    }

    /// Our `db:result` with the XEP-0185 key for (`local`, `remote`, the peer's stream
    /// id) (XEP-0220 §2.1.1; `remote` other than the stream's header `to`: §2.4
    /// multiplexing).
    pub(super) fn send_db_result(&mut self, local: &str, remote: &str, now: Instant) {
        if self
            .pending_results
            .iter()
            .any(|p| p.local == local && p.remote == remote)
        {
            return;
        }
        let remote = remote.to_owned();
        let key = self
            .cfg
            .dialback_secret
            .key(&remote, local, &self.io.stream_id);
        let out = &mut self.io.out;
        out.extend_from_slice(b"<db:result from='");
        escape_attr_into(local, out);
        out.extend_from_slice(b"' to='");
        escape_attr_into(&remote, out);
        out.extend_from_slice(b"'>");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"</db:result>");
        self.io.last_tx = now;
        self.pending_results.push(Pending {
            local: local.to_owned(),
            remote,
            deadline: now + self.cfg.timeouts.negotiation,
        });
    }

    fn write_db_verify(&mut self, local: &str, remote: &str, id: &str, key: &str, now: Instant) {
        let out = &mut self.io.out;
        out.extend_from_slice(b"<db:verify from='");
        escape_attr_into(local, out);
        out.extend_from_slice(b"' to='");
        escape_attr_into(remote, out);
        out.extend_from_slice(b"' id='");
        escape_attr_into(id, out);
        out.extend_from_slice(b"'>");
        escape_text_into(key, out);
        out.extend_from_slice(b"</db:verify>");
        self.io.last_tx = now;
        self.pending_verifies.push(PendingVerify {
            local: local.to_owned(),
            remote: remote.to_owned(),
            stream_id: id.to_owned(),
            deadline: now + self.cfg.timeouts.verify,
        });
    }

    /// `<db:result/>` or `<db:verify/>` answer with `type` (XEP-0220 §2.1.3, §2.5).
    fn write_db_answer(
        &mut self,
        name: &str,
        from: &str,
        to: &str,
        id: Option<&str>,
        result: DialbackResult,
    ) {
        // Nothing follows our `</stream:stream>` (RFC 6120 §4.4): a verdict or a timeout
        // that comes after it answers nothing (fuzz finding 7).
        if matches!(self.state, State::ExpectClose | State::Closed) {
            return;
        }
        let out = &mut self.io.out;
        out.extend_from_slice(b"<db:");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b" from='");
        escape_attr_into(from, out);
        out.extend_from_slice(b"' to='");
        escape_attr_into(to, out);
        if let Some(id) = id {
            out.extend_from_slice(b"' id='");
            escape_attr_into(id, out);
        }
        out.extend_from_slice(b"' type='");
        out.extend_from_slice(result.type_str().as_bytes());
        match result {
            DialbackResult::Error(c) => {
                out.extend_from_slice(b"'><error type='");
                out.extend_from_slice(c.error_type().as_bytes());
                out.extend_from_slice(b"'><");
                out.extend_from_slice(c.as_str().as_bytes());
                out.extend_from_slice(
                    b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:",
                );
                out.extend_from_slice(name.as_bytes());
                out.push(b'>');
            }
            _ => out.extend_from_slice(b"'/>"),
        }
    }

    // ----- the peer's elements -----

    pub(super) fn on_dialback(&mut self, el: &Element, now: Instant) {
        let node = match Node::parse(el) {
            Ok(n) => n,
            Err(_) => return self.fail(StreamCondition::BadFormat, "malformed dialback element"),
        };
        let from = node.attr("from").map(|s| s.to_ascii_lowercase());
        let to = node.attr("to").map(|s| s.to_ascii_lowercase());
        let (Some(from), Some(to)) = (from, to) else {
            return self.fail(
                StreamCondition::ImproperAddressing,
                "dialback element without from or to",
            );
        };
        let condition = node
            .child("error", "")
            .or_else(|| node.children.iter().find(|c| c.name == "error"))
            .and_then(|e| {
                e.children
                    .iter()
                    .find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text")
            })
            .map(|c| c.name.as_str());
        let answer = DialbackResult::from_type(node.attr("type"), condition);
        if self.dir == Direction::Inbound && answer.is_none() {
            self.dialback_requests = self.dialback_requests.saturating_add(1);
            // The sender domain must be a domainpart (RFC 7622 §3.2): a request for
            // anything else is answered by nobody, it is a stream error (RFC 6120
            // §4.9.3.9), never a `db:result`/`db:verify` naming it.
            if DomainPart::new(&from).is_err() {
                return self.fail(
                    StreamCondition::InvalidFrom,
                    "the dialback 'from' is not a valid domain",
                );
            }
        }
        match (self.dir, el.name(), answer) {
            // Inbound request: the Originating Server's key (XEP-0220 §2.1.2).
            (Direction::Inbound, "result", None) => {
                self.on_db_result_request(from, to, node.text, now)
            }
            // Inbound request: we are the Authoritative Server (§2.1.3).
            (Direction::Inbound, "verify", None) => {
                let id = node.attr("id").unwrap_or_default().to_owned();
                let result = if !self.cfg.hosts(&to) {
                    DialbackResult::Error(DialbackErrorCondition::ItemNotFound)
                } else if self
                    .cfg
                    .dialback_secret
                    .verify(&from, &to, &id, node.text.trim())
                {
                    DialbackResult::Valid
                } else {
                    DialbackResult::Invalid
                };
                self.write_db_answer("verify", &to, &from, Some(&id), result);
            }
            // Outbound answer to our db:result (§2.1.4).
            (Direction::Outbound, "result", Some(result)) => {
                let Some(i) = self
                    .pending_results
                    .iter()
                    .position(|p| p.local == to && p.remote == from)
                else {
                    return; // Not ours to care about; XEP-0220 says ignore.
                };
                self.pending_results.swap_remove(i);
                if result == DialbackResult::Valid {
                    self.authenticate(&to, &from, AuthMethod::Dialback, now);
                } else {
                    self.io.push_event(Event::AuthFailed {
                        local: to,
                        remote: from,
                        result,
                    });
                }
            }
            // Outbound answer to our db:verify.
            (Direction::Outbound, "verify", Some(result)) => {
                let id = node.attr("id").unwrap_or_default();
                let Some(i) = self
                    .pending_verifies
                    .iter()
                    .position(|p| p.local == to && p.remote == from && p.stream_id == id)
                else {
                    return;
                };
                let p = self.pending_verifies.swap_remove(i);
                self.io.push_event(Event::VerifyAnswered {
                    local: p.local,
                    remote: p.remote,
                    stream_id: p.stream_id,
                    result,
                });
            }
            _ => self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected dialback element",
            ),
        }
    }

    /// Inbound `db:result` carrying a key: checks addressing and policy, then asks the
    /// runtime to verify it (XEP-0220 §2.1.2, errors per §2.5).
    ///
    /// On a pre-1.0 stream (no features, so no STARTTLS or SASL ever) the policy checked
    /// is the claimed domain's, and one that needs TLS or SASL EXTERNAL for it refuses
    /// the stream with `policy-violation` (RFC 6120 §4.9.3.14), as at the header.
    fn on_db_result_request(&mut self, from: String, to: String, key: String, now: Instant) {
        let policy = self.cfg.policy.for_domain(&from);
        if self.legacy {
            if super::legacy::refuses_claim(&policy, self.tls) {
                return self.fail(StreamCondition::PolicyViolation, super::legacy::REFUSED);
            }
        } else if !self.tls && self.policy.tls == TlsPolicy::Required {
            return self.fail(
                StreamCondition::PolicyViolation,
                "TLS is required before authentication",
            );
        }
        if !self.cfg.hosts(&to) {
            let r = DialbackResult::Error(DialbackErrorCondition::ItemNotFound);
            return self.write_db_answer("result", &to, &from, None, r);
        }
        if !policy.allow
            || !policy.allows_dialback()
            || (policy.tls == TlsPolicy::Required && !self.tls)
        {
            let r = DialbackResult::Error(DialbackErrorCondition::from_stanza_condition(
                StanzaCondition::PolicyViolation,
            ));
            return self.write_db_answer("result", &to, &from, None, r);
        }
        if self.is_authenticated(&to, &from)
            || self
                .pending_results
                .iter()
                .any(|p| p.local == to && p.remote == from)
        {
            return; // Already done or under way: nothing new to verify.
        }
        if self.remote.is_empty() {
            self.remote = from.clone();
        }
        self.pending_results.push(Pending {
            local: to.clone(),
            remote: from.clone(),
            deadline: now + self.cfg.timeouts.verify,
        });
        if self.pairs.is_empty() {
            // Leave the authoritative server its time before the stream times out.
            let until = now + self.cfg.timeouts.verify + self.cfg.timeouts.negotiation;
            self.io.deadline = Some(self.io.deadline.map_or(until, |d| d.max(until)));
        }
        self.io.push_event(Event::VerifyNeeded {
            local: to,
            remote: from,
            stream_id: self.io.stream_id.clone(),
            key: key.trim().to_owned(),
        });
    }
}
