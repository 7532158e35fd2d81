//! XEP-0288 Bidirectional Server-to-Server Connections on an S2S stream, both ends.
//!
//! - **Inbound** (receiving server): `<bidi xmlns='urn:xmpp:features:bidi'/>` is offered
//!   in the stream features (§2.1) while the policy for the peer's domain allows it
//!   ([`PeerPolicy::bidi`]) and it is not negotiated yet; the initiator's
//!   `<bidi xmlns='urn:xmpp:bidi'/>` (§2.2) turns it on. From then on each authenticated
//!   pair also authorises us to send the other way ([`Event::BidiAuthenticated`] with
//!   [`Direction::Outbound`]): never before the peer is authenticated (§2.2), and after
//!   SASL only once the restarted stream is open.
//! - **Outbound** (initiating server): when the peer offered the feature and our policy
//!   allows it, we send `<bidi/>` after TLS and before SASL or dialback (§2.1: STARTTLS
//!   first; §2.2: before authentication). Each pair we authenticate then also lets the
//!   peer send to us from its domain to ours ([`Event::BidiAuthenticated`] with
//!   [`Direction::Inbound`]); a stanza for any other pair is refused as on an inbound
//!   stream (`invalid-from`, `host-unknown`).
//!
//! What authenticates the reverse direction is the XEP's rule (§2.2): with SASL EXTERNAL
//! the stream header's pair; with dialback the inverse of each pair verified by
//! `db:result`. No second dialback runs for it: the initiator reached the receiving
//! server by resolving its domain (and checked its certificate where policy says so),
//! which is the trust it would give a stream of its own to that domain.
//!
//! A stream where bidi was not negotiated behaves as before: a stanza from the peer on
//! our outbound stream closes it with `not-authorized`; a `<bidi/>` we did not offer is
//! an unexpected element (`unsupported-stanza-type`).
//!
//! [`PeerPolicy::bidi`]: crate::stream::policy::PeerPolicy::bidi

use std::time::Instant;

use super::{AuthMethod, Direction, Event, S2sConnection, State};
use crate::xml::{ns, Element, Namespace};

/// XEP-0288 state of one stream.
#[derive(Debug, Default)]
pub(super) struct BidiState {
    /// Inbound: the feature was in our latest features.
    pub(super) offered: bool,
    /// Outbound: the peer's latest features offered it.
    pub(super) peer_offers: bool,
    /// Negotiated (outbound: we sent `<bidi/>`; inbound: we received it).
    pub(super) enabled: bool,
    /// Pairs authorised against the stream's direction: (local, remote, how).
    pub(super) reverse: Vec<(String, String, AuthMethod)>,
}

/// Whether `el` is the XEP-0288 `<bidi xmlns='urn:xmpp:bidi'/>` request.
pub(super) fn is_bidi_request(el: &Element) -> bool {
    el.name() == "bidi" && matches!(el.namespace(), Namespace::Other(n) if n == ns::BIDI)
}

impl S2sConnection {
    // ----- accessors -----

    /// Whether XEP-0288 was negotiated on this stream: it may carry stanzas both ways
    /// once pairs are authenticated ([`Self::bidi_authenticated`]).
    pub fn is_bidi(&self) -> bool {
        self.bidi.enabled
    }

    /// XEP-0288: the (local, remote) pairs this stream carries against its direction, and
    /// how they were authenticated: on an inbound stream, pairs we may send on; on an
    /// outbound stream, pairs the peer may send to us on. Empty without bidi.
    pub fn bidi_authenticated(&self) -> impl Iterator<Item = (&str, &str, AuthMethod)> {
        self.bidi
            .reverse
            .iter()
            .map(|(l, r, m)| (l.as_str(), r.as_str(), *m))
    }

    /// Whether a stanza from `local` to `remote` may be sent on this stream now
    /// ([`Self::send_stanza`]): an outbound stream's authenticated pair, or on a
    /// bidirectional inbound stream a pair authorised the other way (XEP-0288 §2.2).
    pub fn may_send(&self, local: &str, remote: &str) -> bool {
        if self.state != State::Open {
            return false;
        }
        match self.dir {
            Direction::Outbound => self.is_authenticated(local, remote),
            Direction::Inbound => self.bidi_may_send(local, remote),
        }
    }

    pub(super) fn bidi_may_send(&self, local: &str, remote: &str) -> bool {
        self.bidi
            .reverse
            .iter()
            .any(|(l, r, _)| l.eq_ignore_ascii_case(local) && r.eq_ignore_ascii_case(remote))
    }

    // ----- negotiation -----

    /// Inbound features: the bidi feature when policy allows it (XEP-0288 §2.1).
    pub(super) fn write_bidi_feature(&mut self) {
        self.bidi.offered = !self.bidi.enabled && self.policy.bidi;
        if self.bidi.offered {
            self.io
                .out
                .extend_from_slice(b"<bidi xmlns='urn:xmpp:features:bidi'/>");
        }
    }

    /// Whether an inbound `<bidi/>` is one we offered (else it is an unexpected element).
    pub(super) fn bidi_request_expected(&self, el: &Element) -> bool {
        self.dir == Direction::Inbound && self.bidi.offered && is_bidi_request(el)
    }

    /// Inbound `<bidi xmlns='urn:xmpp:bidi'/>` (XEP-0288 §2.2): the stream is
    /// bidirectional; pairs already authenticated are authorised the other way now.
    pub(super) fn on_bidi_request(&mut self, now: Instant) {
        self.bidi.enabled = true;
        self.bidi.offered = false;
        self.grant_reverse(now);
    }

    /// Outbound, after TLS and before authentication: requests bidi when the peer
    /// offered it and our policy allows it (XEP-0288 §2.1, §2.2).
    pub(super) fn maybe_request_bidi(&mut self) {
        if self.dir != Direction::Outbound
            || self.bidi.enabled
            || !self.bidi.peer_offers
            || !self.policy.bidi
        {
            return;
        }
        self.io
            .out
            .extend_from_slice(b"<bidi xmlns='urn:xmpp:bidi'/>");
        self.bidi.enabled = true;
    }

    /// Authorises every authenticated pair against the stream's direction, once the
    /// stream is bidirectional and open (XEP-0288 §2.2).
    pub(super) fn grant_reverse(&mut self, _now: Instant) {
        if !self.bidi.enabled || self.state != State::Open {
            return;
        }
        let direction = match self.dir {
            Direction::Outbound => Direction::Inbound,
            Direction::Inbound => Direction::Outbound,
        };
        for i in 0..self.pairs.len() {
            let (local, remote, method) = self.pairs[i].clone();
            let known = self
                .bidi
                .reverse
                .iter()
                .any(|(l, r, _)| *l == local && *r == remote);
            if known {
                continue;
            }
            self.bidi
                .reverse
                .push((local.clone(), remote.clone(), method));
            self.io.push_event(Event::BidiAuthenticated {
                local,
                remote,
                method,
                direction,
            });
        }
    }

    /// Outbound: whether a stanza from `from_d` to `to_d` (domains) is one the peer may
    /// send us on this bidirectional stream: the inverse of a pair we authenticated.
    pub(super) fn bidi_accepts(&self, to_d: &str, from_d: &str) -> bool {
        self.bidi
            .reverse
            .iter()
            .any(|(l, r, _)| l.eq_ignore_ascii_case(to_d) && r.eq_ignore_ascii_case(from_d))
    }

    /// TLS restarts the stream and discards what was negotiated before it (RFC 6120
    /// §5.4.3.3); bidi is negotiated again after it (XEP-0288 §2.1).
    pub(super) fn reset_bidi(&mut self) {
        self.bidi = BidiState::default();
    }
}
