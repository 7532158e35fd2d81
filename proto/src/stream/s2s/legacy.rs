//! What differs for a peer that predates XMPP 1.0 (RFC 6120 §4.7.5): its header has no
//! `version`, so no stream features flow either way, hence neither STARTTLS nor SASL:
//! only dialback (XEP-0220 §2.4.1), which starts right after the headers. Policy that
//! needs TLS (on a plain socket) or SASL EXTERNAL for the peer refuses such a stream.

use std::time::Instant;

use super::S2sConnection;
use crate::condition::StreamCondition;
use crate::stream::policy::{PeerPolicy, TlsPolicy};

/// The stream error text for a pre-1.0 stream that policy cannot accept.
pub(super) const REFUSED: &str =
    "policy requires TLS or SASL EXTERNAL, which a stream without version='1.0' cannot negotiate";

/// Whether policy `p` can accept a peer on a stream without stream features (a header
/// without `version`, RFC 6120 §4.7.5): dialback must be allowed, and TLS must not be
/// required unless the socket already is TLS (XEP-0368 direct TLS).
fn acceptable(p: &PeerPolicy, tls: bool) -> bool {
    p.allow && p.allows_dialback() && (tls || p.tls != TlsPolicy::Required)
}

/// Whether a `db:result` on a pre-1.0 stream claiming a domain with policy `p` refuses
/// the stream (`policy-violation`, RFC 6120 §4.9.3.14). A denied domain is not refused
/// here: it gets the dialback error, as on any stream.
pub(super) fn refuses_claim(p: &PeerPolicy, tls: bool) -> bool {
    p.allow && !acceptable(p, tls)
}

impl S2sConnection {
    /// Inbound, a header without `version`: no features follow (RFC 6120 §4.7.5, §4.3.2),
    /// hence no STARTTLS and no SASL, and only dialback can authenticate the stream.
    /// Whether policy accepts that for the peer the header names or, when it names none,
    /// for any peer at all.
    pub(super) fn legacy_stream_acceptable(&self) -> bool {
        if self.remote.is_empty() {
            let p = &self.cfg.policy;
            std::iter::once(&p.default)
                .chain(p.domains.values())
                .any(|p| acceptable(p, self.tls))
        } else {
            acceptable(&self.policy, self.tls)
        }
    }

    /// Outbound, a response header without `version`: the peer predates XMPP 1.0 and
    /// sends no features (RFC 6120 §4.7.5), so nothing is waited for: dialback (announced
    /// by its xmlns:db, XEP-0220 §2.4.1) starts at once (§2.1.1), unless policy needs TLS
    /// or SASL, which such a stream cannot negotiate.
    pub(super) fn on_legacy_answer(&mut self, now: Instant) {
        if self.policy.tls == TlsPolicy::Required && !self.tls {
            return self.fail(
                StreamCondition::PolicyViolation,
                "TLS is required but the peer does not support it",
            );
        }
        if !self.policy.allows_dialback() {
            return self.fail(
                StreamCondition::PolicyViolation,
                "the peer supports only dialback, which policy forbids",
            );
        }
        self.peer_dialback = true;
        self.enter_open(now);
    }
}
