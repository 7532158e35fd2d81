//! What an S2S connection reports ([`Event`]) and the runtime's errors ([`S2sError`]),
//! with the names they use ([`Direction`], [`AuthMethod`]).

use super::super::common::{CloseReason, TlsRole};
use crate::dialback::DialbackResult;
use crate::stanza::StanzaKind;
use crate::xml::Element;

#[cfg(doc)]
use super::S2sConnection;

/// Which end of the stream we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected (initiating entity).
    Outbound,
    /// The peer connected (receiving entity).
    Inbound,
}

/// How a domain pair was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Server Dialback (XEP-0220).
    Dialback,
    /// SASL EXTERNAL with a certificate (XEP-0178).
    SaslExternal,
}

impl AuthMethod {
    /// The method's name as configured (`federation.*.auth`) and as the `method` label of
    /// `fedrouter_auth_total`: `"dialback"` or `"sasl-external"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Dialback => "dialback",
            AuthMethod::SaslExternal => "sasl-external",
        }
    }
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq)]
// Not `#[non_exhaustive]`: the runtime (another crate of this workspace) matches it
// exhaustively, so a new event is a compile error there until it is handled.
pub enum Event {
    /// The peer's stream header arrived: on inbound streams this names the remote domain
    /// (`from`, when given) so the runtime can hand the connection to its owner shard.
    Opened {
        /// Local domain (inbound: header `to`, empty when a pre-1.0 header has none;
        /// outbound: ours).
        local: String,
        /// Remote domain (inbound: header `from`, if any).
        remote: Option<String>,
        /// The stream id (inbound: ours; outbound: the peer's).
        stream_id: String,
    },
    /// Wrap the socket with TLS now (RFC 6120 §5.4.3.3); then call
    /// [`S2sConnection::handle_tls_established`].
    StartTls(TlsRole),
    /// Stanzas may now flow from `local` to `remote` (outbound) or be accepted from
    /// `remote` to `local` (inbound).
    Authenticated {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
        /// How.
        method: AuthMethod,
        /// Which way stanzas flow.
        direction: Direction,
    },
    /// XEP-0288 §2.2: on this bidirectional stream, stanzas may now also flow against the
    /// stream's direction for a pair the stream authenticated. `direction` is which way
    /// they flow for us: [`Direction::Outbound`] on an inbound stream (we may send from
    /// `local` to `remote` with [`S2sConnection::send_stanza`]),
    /// [`Direction::Inbound`] on an outbound stream (stanzas from `remote` to `local`
    /// are accepted and reported as [`Event::Stanza`]). Follows the pair's
    /// [`Event::Authenticated`] (on an inbound stream authenticated by SASL, once the
    /// restarted stream is open). What authenticates the reverse direction, as the XEP
    /// says: with SASL EXTERNAL, the pair of the stream's header (`to` to `from`); with
    /// dialback, the inverse of each pair verified by `db:result`; the initiating server
    /// trusts the receiving server as it would on a stream of its own to that domain (it
    /// resolved and reached it, and checked its certificate per policy).
    BidiAuthenticated {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
        /// How the pair was authenticated.
        method: AuthMethod,
        /// Which way stanzas now flow for us (against the stream's direction).
        direction: Direction,
    },
    /// Outbound: authentication of a domain pair failed (dialback `invalid` or `error`,
    /// SASL failure with no fallback, no answer in time, the stream ended while our
    /// `db:result` waited, or [`S2sConnection::fail_dialback`]). Stanzas queued for it
    /// should be bounced with [`DialbackResult::bounce_condition`], or, when the stream
    /// has ended ([`S2sConnection::close_reason`]), with
    /// [`CloseReason::bounce_condition`].
    AuthFailed {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
        /// The answer; for a stream that ended or timed out while waiting,
        /// `Error(remote-server-timeout)` (XEP-0220 §2.1.1: the Initiating Server treats
        /// a closed stream as a dialback error).
        result: DialbackResult,
    },
    /// Outbound: TLS is up and our policy would authenticate with SASL EXTERNAL
    /// (XEP-0178) with our certificate for `local`, but the peer's features after TLS
    /// offer no `EXTERNAL` mechanism (RFC 6120 §6.4.1): the peer did not accept our
    /// certificate. Emitted once per stream, before the stream goes on with dialback
    /// ([`Event::Authenticated`] or [`Event::AuthFailed`] follows) or, when
    /// `dialback_fallback` is false, is closed with `policy-violation`
    /// ([`Event::Closed`] follows).
    SaslExternalNotOffered {
        /// Our domain (whose certificate the peer did not accept).
        local: String,
        /// The peer's domain.
        remote: String,
        /// Whether our policy for the peer allows dialback, so the stream falls back to
        /// it (XEP-0220); false: the stream is closed.
        dialback_fallback: bool,
    },
    /// Inbound: the peer claims `remote` with a dialback key; verify it with `remote`'s
    /// authoritative server (`db:verify` on an outbound stream) and answer with
    /// [`S2sConnection::handle_dialback_verdict`].
    VerifyNeeded {
        /// Our domain (the Receiving Server).
        local: String,
        /// The claimed domain (the Originating Server).
        remote: String,
        /// The stream id the key was generated for (ours).
        stream_id: String,
        /// The key.
        key: String,
    },
    /// Outbound: the authoritative server answered a `db:verify` we sent with
    /// [`S2sConnection::send_db_verify`].
    VerifyAnswered {
        /// Our domain (the Receiving Server that asked).
        local: String,
        /// The authoritative domain.
        remote: String,
        /// The stream id the verification was about.
        stream_id: String,
        /// The answer.
        result: DialbackResult,
    },
    /// An authorised stanza arrived (inbound; `from` and `to` checked).
    Stanza {
        /// message, presence or iq.
        kind: StanzaKind,
        /// The stanza as received.
        element: Element,
    },
    /// Inbound, XEP-0198 §3: we answered the peer's `<enable/>` with `<enabled/>`. From
    /// here on the stanzas we send on this stream (a bidirectional one, XEP-0288) are
    /// counted and acknowledged like those of an outbound stream ([`Event::Acknowledged`]):
    /// what the runtime sent on it before this event is not covered. Follows the pair's
    /// [`Event::Authenticated`].
    StreamManagementEnabled,
    /// XEP-0198: the peer acknowledged the `count` oldest stanzas sent on this stream
    /// since stream management was enabled and not acknowledged before (they are
    /// delivered: release them). Outbound, or inbound after
    /// [`Event::StreamManagementEnabled`] (a bidirectional stream).
    Acknowledged {
        /// How many, oldest first (≥ 1).
        count: u32,
    },
    /// Outbound, XEP-0198: the peer answered our `<enable/>` with `<failed/>`; nothing
    /// on this stream will be acknowledged, so a stanza the socket took counts as sent,
    /// as without stream management.
    StreamManagementRefused,
    /// The stream is over; the runtime closes the socket after transmitting what is left.
    Closed(CloseReason),
}

/// Errors from calls the runtime makes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum S2sError {
    /// The domain pair is not authenticated on this stream for sending.
    #[error("{local} -> {remote} is not authenticated on this stream")]
    NotAuthenticated {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
    },
    /// XEP-0220 §2.4: `remote` may not join this stream
    /// ([`S2sConnection::request_dialback_for`]); it needs a stream of its own.
    #[error("{remote} may not share this stream: {why}")]
    MultiplexRefused {
        /// The domain that asked to join.
        remote: String,
        /// Why not.
        why: &'static str,
    },
    /// The call does not fit the stream's direction or state.
    #[error("not possible in this state: {0}")]
    InvalidState(&'static str),
}
