//! Verify-only outbound streams (XEP-0220 §2.1.3): a connection from the Receiving
//! Server to the Authoritative Server that carries only `db:verify` requests.
//!
//! The Receiving Server may send `db:verify` on a connection to the Authoritative Server
//! without authenticating itself on it: such a stream sends its header, negotiates TLS
//! where the policy asks for it (STARTTLS, RFC 6120 §5), then, once the peer's features
//! are in (or at once on a pre-1.0 stream, XEP-0220 §2.4.1), writes the `db:verify`s and
//! nothing else: no `db:result` of ours (so the peer has nothing to verify back, and no
//! chain of connections follows), no SASL EXTERNAL, no XEP-0288 `<bidi/>`, no XEP-0198.
//! The answers are [`Event::VerifyAnswered`]; the runtime closes the stream
//! ([`S2sConnection::close`]) once no verification waits on it. It never carries stanzas
//! either way (a stanza from the peer is `not-authorized`, as on any outbound stream
//! without bidi).
//!
//! The runtime uses one when the stream that would otherwise carry the `db:verify` is an
//! inbound bidirectional one (XEP-0288 §2.2 forbids verifying on it), or when another
//! cluster node owns the domain.
//!
//! [`Event::VerifyAnswered`]: super::Event::VerifyAnswered

use std::sync::Arc;
use std::time::Instant;

use super::{S2sConfig, S2sConnection};

impl S2sConnection {
    /// A new verify-only outbound stream from `local` to `remote` (both lowercase
    /// domains), on a connected socket as for [`S2sConnection::outbound`] (`direct_tls`
    /// once a XEP-0368 handshake is done). Sends our stream header at once; queue the
    /// requests with [`S2sConnection::send_db_verify`]: they go out once the stream is
    /// ready. [`S2sConnection::request_dialback`] is refused on it
    /// ([`super::S2sError::InvalidState`]).
    ///
    /// A remote domain that policy denies gets no header, as for
    /// [`S2sConnection::outbound`].
    pub fn verify_only(
        cfg: Arc<S2sConfig>,
        local: &str,
        remote: &str,
        direct_tls: bool,
        now: Instant,
    ) -> Self {
        let mut c = Self::outbound(cfg, local, remote, direct_tls, now);
        c.verify_only = true;
        c
    }

    /// Whether this is a verify-only stream ([`S2sConnection::verify_only`]).
    pub fn is_verify_only(&self) -> bool {
        self.verify_only
    }
}
