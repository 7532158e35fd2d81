//! Outbound multiplexing by target (XEP-0220 §2.4, "piggybacking"): further remote
//! domains hosted at the same target as the stream's own (header `to`) authenticated on
//! it with their own `db:result` (from our domain, to the further domain), so that one TCP
//! connection serves every domain a Google-Apps-style host carries.
//!
//! The stream carries a pair only once the peer answered `valid` for it
//! ([`S2sConnection::may_send`] checks the pair, so a stanza for a domain not yet
//! authenticated is refused with [`S2sError::NotAuthenticated`]). A further domain the
//! peer refuses (`type='error'` or `invalid`) is an [`Event::AuthFailed`] naming it; the
//! stream and its other pairs stay up (XEP-0220 since 0.6 no longer has the Receiving
//! Server close a stream on an invalid key, "since the stream might be used for multiple
//! domain pairs").

use std::time::Instant;

use super::{Direction, S2sConnection, S2sError, State};
use crate::stream::policy::{PeerPolicy, TlsPolicy};

#[cfg(doc)]
use super::Event;

impl S2sConnection {
    /// The remote domains this outbound stream serves or is authenticating: the stream's
    /// own (header `to`) first, then each further domain (XEP-0220 §2.4) in the order it
    /// was asked for. Lowercase domains, no duplicates.
    pub fn served_remotes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |r: &str| {
            if !r.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(r)) {
                out.push(r.to_owned());
            }
        };
        add(&self.remote);
        for (_, r, _) in &self.pairs {
            add(r);
        }
        for p in &self.pending_results {
            add(&p.remote);
        }
        for (_, r) in &self.queued_dialbacks {
            add(r);
        }
        out
    }

    /// Outbound: the (local, remote) pairs whose `db:result` waits for the peer's answer,
    /// in the order they were sent ([`Self::pending_dialbacks`] with the remote domain).
    pub fn pending_dialback_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pending_results
            .iter()
            .filter(|_| self.dir == Direction::Outbound)
            .map(|p| (p.local.as_str(), p.remote.as_str()))
    }

    /// Whether `remote` may join this outbound stream (XEP-0220 §2.4), and if not, why:
    ///
    /// - the stream is outbound, not verify-only, not closing, and dialback is possible
    ///   on it (after SASL EXTERNAL, only when the peer offered dialback too);
    /// - both policies (`remote`'s and the stream's domain's) allow federation, dialback
    ///   and multiplexing ([`PeerPolicy::multiplex`]) and have the same TLS setting;
    /// - on a stream still negotiating, `remote`'s policy is plain only (`tls =
    ///   "disabled"`): the stream cannot turn to TLS, and the `db:result` waits;
    /// - on a plain stream, `remote`'s policy does not require TLS; on a TLS stream whose
    ///   policy for `remote` verifies certificates, the peer's certificate must also
    ///   cover `remote` (RFC 6120 §13.7.1.2; checked with the configured
    ///   [`super::PeerCertVerifier`] at the time of the handshake).
    pub fn may_multiplex(&self, remote: &str) -> Result<(), &'static str> {
        if self.dir != Direction::Outbound || self.verify_only {
            return Err("only the outbound streams that authenticate carry further domains");
        }
        if matches!(self.state, State::ExpectClose | State::Closed) {
            return Err("the stream is closing");
        }
        if self.sasl_done && !self.peer_dialback {
            return Err(
                "the stream authenticated by SASL EXTERNAL and the peer offers no dialback",
            );
        }
        let mine: PeerPolicy = self.cfg.policy.for_domain(&self.remote);
        let theirs: PeerPolicy = self.cfg.policy.for_domain(remote);
        if !theirs.allow {
            return Err("federation with the domain is not allowed");
        }
        if !mine.multiplex || !theirs.multiplex {
            return Err("multiplexing is off by policy");
        }
        if !theirs.allows_dialback() || !mine.allows_dialback() {
            return Err("policy does not allow dialback for the domain");
        }
        if mine.tls != theirs.tls {
            return Err("the domains' TLS policies differ");
        }
        if !self.tls && self.state != State::Open && theirs.tls != TlsPolicy::Disabled {
            // Still negotiating: the stream may yet turn to TLS, and the certificate is
            // not known. A plain-only (`tls = "disabled"`) domain may join at once (its
            // `db:result` waits until the stream is ready).
            return Err("the stream's TLS is not settled yet");
        }
        if !self.tls {
            if theirs.tls == TlsPolicy::Required {
                return Err("the domain requires TLS and the stream is plain");
            }
            return Ok(());
        }
        if theirs.verify_certificates && !self.cert_covers(remote) {
            return Err("the peer's certificate does not cover the domain");
        }
        Ok(())
    }

    /// Outbound: authenticates (`local`, `remote`) on this stream although `remote` is
    /// not the stream's own domain, because it resolves to the same target (XEP-0220
    /// §2.4): sends `<db:result from=local to=remote>` once the stream is ready. The
    /// outcome is an [`Event::Authenticated`] or [`Event::AuthFailed`] naming `remote`;
    /// a refusal leaves the stream and its other pairs up.
    ///
    /// Errors: [`S2sError::MultiplexRefused`] when [`Self::may_multiplex`] says no
    /// (nothing is sent; the runtime opens a stream of the domain's own);
    /// [`S2sError::InvalidState`] as [`Self::request_dialback`].
    pub fn request_dialback_for(
        &mut self,
        local: &str,
        remote: &str,
        now: Instant,
    ) -> Result<(), S2sError> {
        if remote.eq_ignore_ascii_case(&self.remote) {
            return self.request_dialback(local, now);
        }
        self.may_multiplex(remote)
            .map_err(|why| S2sError::MultiplexRefused {
                remote: remote.to_owned(),
                why,
            })?;
        self.queue_dialback(local, &remote.to_ascii_lowercase(), now)
    }

    /// Whether the peer's chain (TLS) is valid for `domain` at the handshake's time.
    fn cert_covers(&self, domain: &str) -> bool {
        if self.peer_chain.is_empty() {
            return false;
        }
        match (&self.cfg.cert_verifier, self.tls_at) {
            (Some(v), Some(at)) => v.verify(&self.peer_chain, domain, at).is_ok(),
            _ => false,
        }
    }
}
