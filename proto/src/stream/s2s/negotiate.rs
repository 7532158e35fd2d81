//! Stream negotiation on an S2S stream (RFC 6120 §4.3, §5, §6; XEP-0178): the answers to
//! the peer's header, the stream features we offer (inbound) or act on (outbound),
//! STARTTLS, and SASL EXTERNAL with the peer's certificate; then dialback is entered
//! (`dialback.rs`).

use std::time::Instant;

use base64::Engine as _;

use super::{AuthMethod, Direction, Event, S2sConnection, State, TlsRole};
use crate::condition::StreamCondition;
use crate::dialback::DialbackResult;
use crate::stream::plumbing::{header_domain, write_starttls_feature};
use crate::stream::policy::TlsPolicy;
use crate::xml::tree::Node;
use crate::xml::{escape_text_into, ns, Element, StreamHeader};

impl S2sConnection {
    pub(super) fn on_header_outbound(&mut self, h: StreamHeader, now: Instant) {
        self.io.stream_id = h.id.unwrap_or_default();
        self.io.push_event(Event::Opened {
            local: self.local.clone(),
            remote: Some(self.remote.clone()),
            stream_id: self.io.stream_id.clone(),
        });
        if self.legacy {
            return self.on_legacy_answer(now);
        }
        self.state = State::ExpectFeatures;
        self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// The initiating server's header (RFC 6120 §4.7). `to` must name a domain we host
    /// (else `host-unknown`, §4.9.3.6), with one exception: a header without `version`
    /// comes from a server that predates XMPP 1.0 (§4.7.5), and the original dialback
    /// protocol (RFC 3920 §4.4 made `to` a SHOULD) let it omit `to` and `from`. Such a
    /// stream is accepted, as Prosody and ejabberd do, with no local domain: each
    /// `db:result` / `db:verify` names its pair and its `to` is checked there (XEP-0220
    /// §2.2), as is every stanza's (§8.1.1.2). Our answering header then has no `from`
    /// (§4.7.1: it would echo the `to` we did not get) and no `version`, and no features
    /// follow (§4.7.5).
    pub(super) fn on_header_inbound(&mut self, h: StreamHeader, now: Instant) {
        self.io.stream_id = self.io.next_stream_id(&self.cfg.stream_id_key, b"");
        let to = h.to.map(|to| header_domain(&to));
        if let Some(from) = h.from {
            self.remote = header_domain(&from);
        }
        match to {
            None if self.legacy => {}
            Some(to) if self.cfg.hosts(&to) => self.local = to,
            _ => {
                self.local = self.cfg.local_domains.first().cloned().unwrap_or_default();
                return self.fail(
                    StreamCondition::HostUnknown,
                    "this server does not host the domain",
                );
            }
        }
        if !self.remote.is_empty() {
            self.policy = self.cfg.policy.for_domain(&self.remote);
            if !self.policy.allow {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "federation with this domain is not allowed",
                );
            }
        }
        if self.legacy && !self.legacy_stream_acceptable() {
            return self.fail(StreamCondition::PolicyViolation, super::legacy::REFUSED);
        }
        self.send_header();
        self.io.push_event(Event::Opened {
            local: self.local.clone(),
            remote: (!self.remote.is_empty()).then(|| self.remote.clone()),
            stream_id: self.io.stream_id.clone(),
        });
        if !self.legacy {
            self.send_features();
        }
        self.state = State::Open;
        // XEP-0288: after the SASL restart the pair may be used the other way now.
        self.grant_reverse(now);
        // A stream that never authenticates must not stay open forever.
        self.io.deadline = self
            .pairs
            .is_empty()
            .then(|| now + self.cfg.timeouts.negotiation);
        self.io.last_tx = now;
    }

    /// Inbound features per policy (RFC 6120 §4.3.2; never on a pre-1.0 stream, §4.7.5):
    /// STARTTLS before TLS; after TLS, SASL EXTERNAL when the peer's certificate is valid
    /// for its claimed domain; dialback when allowed and TLS is not still required.
    fn send_features(&mut self) {
        let offer_tls = !self.tls
            && self.policy.tls != TlsPolicy::Disabled
            && self.cfg.has_certificate(&self.local);
        let tls_pending = !self.tls && self.policy.tls == TlsPolicy::Required;
        self.io.out.extend_from_slice(b"<stream:features>");
        if offer_tls {
            write_starttls_feature(tls_pending, &mut self.io.out);
        }
        if !tls_pending {
            self.write_sm_feature();
        }
        if !tls_pending && !self.sasl_done {
            self.write_bidi_feature();
        }
        if !tls_pending && !self.sasl_done {
            if self.tls && self.policy.allows_external() && self.peer_cert_valid() {
                self.io.out.extend_from_slice(
                    b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>",
                );
            }
            if self.policy.allows_dialback() {
                self.io.out.extend_from_slice(
                    b"<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>",
                );
            }
        }
        self.io.out.extend_from_slice(b"</stream:features>");
    }

    /// Whether the peer's certificate is valid for the domain its header claims
    /// (XEP-0178 §3; checked only once the header names the domain).
    fn peer_cert_valid(&mut self) -> bool {
        if let Some((domain, ok)) = &self.peer_cert_verdict {
            if *domain == self.remote {
                return *ok;
            }
        }
        let ok = self.check_peer_cert();
        self.peer_cert_verdict = Some((self.remote.clone(), ok));
        ok
    }

    fn check_peer_cert(&self) -> bool {
        if !self.policy.verify_certificates || self.remote.is_empty() || self.peer_chain.is_empty()
        {
            return false;
        }
        match &self.cfg.cert_verifier {
            Some(v) => self
                .tls_at
                .is_some_and(|at| v.verify(&self.peer_chain, &self.remote, at).is_ok()),
            None => false,
        }
    }

    /// Outbound: the peer's features (RFC 6120 §4.3.2). STARTTLS when offered and
    /// allowed; else SASL EXTERNAL when possible; else dialback, after an
    /// [`Event::SaslExternalNotOffered`] when policy wanted EXTERNAL over TLS.
    pub(super) fn on_features(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let starttls = node.child("starttls", ns::TLS).is_some();
        let external = node.child("mechanisms", ns::SASL).is_some_and(|m| {
            m.children
                .iter()
                .any(|c| c.name == "mechanism" && c.text.trim() == "EXTERNAL")
        });
        let dialback = node.child("dialback", ns::DIALBACK_FEATURE).is_some();
        self.sm.peer_offers = node.child("sm", crate::stream::sm::NS_SM).is_some();
        self.bidi.peer_offers = node.child("bidi", ns::BIDI_FEATURE).is_some();
        if !self.tls {
            if starttls && self.policy.tls != TlsPolicy::Disabled {
                self.io
                    .out
                    .extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                self.state = State::ExpectProceed;
                self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
                return;
            }
            if self.policy.tls == TlsPolicy::Required {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "TLS is required but the peer does not offer it",
                );
            }
        }
        self.peer_dialback = dialback;
        if self.sasl_done {
            // Features after the SASL restart: nothing more to negotiate, and stanzas
            // may now be sent for the pair SASL authenticated.
            self.state = State::Open;
            self.io.deadline = None;
            if self.dir == Direction::Outbound {
                let (local, remote) = (self.local.clone(), self.remote.clone());
                self.authenticate(&local, &remote, AuthMethod::SaslExternal, now);
            }
            return self.flush_queued(now);
        }
        if self.verify_only {
            // XEP-0220 §2.1.3: only `db:verify`s follow; nothing is authenticated.
            return self.enter_open(now);
        }
        // XEP-0288 §2.1, §2.2: after TLS, before SASL or dialback.
        self.maybe_request_bidi();
        let want_external = self.tls
            && self.dir == Direction::Outbound
            && self.policy.allows_external()
            && self.cfg.has_certificate(&self.local);
        if want_external && !external {
            // XEP-0178 §3: a receiving server that accepted our certificate offers
            // EXTERNAL after TLS; without it the certificate was refused.
            self.io.push_event(Event::SaslExternalNotOffered {
                local: self.local.clone(),
                remote: self.remote.clone(),
                dialback_fallback: self.policy.allows_dialback(),
            });
        }
        if want_external && external {
            // XEP-0178 §3: authzid is our domain.
            let b64 = base64::engine::general_purpose::STANDARD.encode(self.local.as_bytes());
            self.io.out.extend_from_slice(
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>",
            );
            self.io.out.extend_from_slice(b64.as_bytes());
            self.io.out.extend_from_slice(b"</auth>");
            self.state = State::ExpectSaslResult;
            self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
            return;
        }
        self.enter_open(now);
    }

    /// Outbound: negotiation is over without SASL; authenticate by dialback if we can.
    pub(super) fn enter_open(&mut self, now: Instant) {
        if self.verify_only {
            // XEP-0220 §2.1.3: the Receiving Server's `db:verify`s, and no `db:result`.
            self.state = State::Open;
            self.io.deadline = None;
            return self.flush_queued(now);
        }
        let can_dialback = self.policy.allows_dialback() && self.peer_dialback;
        // A peer that offers no dialback feature but declared xmlns:db may still do it;
        // XEP-0220 §2.1 lets us try. Without either we cannot authenticate.
        if !can_dialback {
            if !self.policy.allows_dialback() {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "no authentication method allowed by policy is available",
                );
            }
            self.peer_dialback = true;
        }
        self.state = State::Open;
        self.io.deadline = None;
        let (local, remote) = (self.local.clone(), self.remote.clone());
        self.send_db_result(&local, &remote, now);
        self.flush_queued(now);
    }

    /// Inbound `<starttls/>` (RFC 6120 §5.4.2); refused when we did not offer it (never
    /// on a pre-1.0 stream, which has no features).
    pub(super) fn on_starttls(&mut self, now: Instant) {
        let offered = !self.legacy
            && !self.tls
            && self.policy.tls != TlsPolicy::Disabled
            && self.cfg.has_certificate(&self.local);
        if !offered {
            let reason = self.io.refuse_starttls();
            return self.finish(reason);
        }
        self.io.proceed_tls(now, self.cfg.timeouts.negotiation);
        self.state = State::ExpectTls;
        self.io.push_event(Event::StartTls(TlsRole::Server));
    }

    /// Inbound SASL `<auth mechanism='EXTERNAL'>` (RFC 6120 §6.4, XEP-0178 §3).
    pub(super) fn on_sasl_auth(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let failure = |c: &mut Self, cond: &str, text: &str| {
            let out = &mut c.io.out;
            out.extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
            out.extend_from_slice(cond.as_bytes());
            out.extend_from_slice(b"/><text>");
            escape_text_into(text, out);
            out.extend_from_slice(b"</text></failure>");
        };
        if node.attr("mechanism") != Some("EXTERNAL") {
            return failure(self, "invalid-mechanism", "only EXTERNAL is offered");
        }
        if self.legacy || !(self.tls && self.policy.allows_external() && self.peer_cert_valid()) {
            return failure(
                self,
                "not-authorized",
                "the certificate is not valid for the claimed domain",
            );
        }
        let payload = node.text.trim();
        let authzid = if payload.is_empty() || payload == "=" {
            self.remote.clone()
        } else {
            match base64::engine::general_purpose::STANDARD.decode(payload) {
                Ok(b) => String::from_utf8_lossy(&b).to_ascii_lowercase(),
                Err(_) => return failure(self, "incorrect-encoding", "authzid is not base64"),
            }
        };
        if authzid != self.remote {
            return failure(
                self,
                "invalid-authzid",
                "authzid differs from the stream's from domain",
            );
        }
        self.io
            .out
            .extend_from_slice(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        self.sasl_done = true;
        // RFC 6120 §6.4.6: the stream restarts after <success/> (before the pair is
        // recorded, so that XEP-0288 grants the other direction only once the restarted
        // stream is open: `on_header_inbound`).
        self.restart(now);
        let (local, remote) = (self.local.clone(), self.remote.clone());
        self.authenticate(&local, &remote, AuthMethod::SaslExternal, now);
    }

    /// Outbound SASL outcome (RFC 6120 §6.4.5, §6.4.6). On failure, fall back to
    /// dialback on the same stream where policy allows (as Prosody does).
    pub(super) fn on_sasl_result(&mut self, el: &Element, now: Instant) {
        match el.name() {
            "success" => {
                self.sasl_done = true;
                // The pair is authenticated now, but stanzas can flow only once the
                // restarted stream is open again (RFC 6120 §6.4.6): the event waits for
                // the post-SASL features (see `on_features`).
                if !self.is_authenticated(&self.local, &self.remote) {
                    self.pairs.push((
                        self.local.clone(),
                        self.remote.clone(),
                        AuthMethod::SaslExternal,
                    ));
                }
                self.restart(now);
            }
            _ => {
                if self.policy.allows_dialback() && self.peer_dialback {
                    self.enter_open(now);
                } else {
                    self.io.push_event(Event::AuthFailed {
                        local: self.local.clone(),
                        remote: self.remote.clone(),
                        result: DialbackResult::Invalid,
                    });
                    self.fail(
                        StreamCondition::NotAuthorized,
                        "SASL EXTERNAL failed and dialback is not allowed",
                    );
                }
            }
        }
    }
}
