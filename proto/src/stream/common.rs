//! Public types both stream machines use: how a stream ended ([`CloseReason`]) and the
//! TLS role the runtime takes on STARTTLS ([`TlsRole`]).

use crate::condition::{StanzaCondition, StreamCondition};

/// Our role in the TLS handshake the runtime must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRole {
    /// We are the TLS client; `sni` is the remote domain.
    Client {
        /// The server name to send and verify.
        sni: String,
    },
    /// We are the TLS server (request, never require, a client certificate).
    Server,
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its stream without an error.
    PeerClosed,
    /// We closed it ([`S2sConnection::close`](super::S2sConnection::close) without an
    /// error, or idle timeout).
    Local,
    /// We sent a stream error (RFC 6120 §4.9) with an explanation.
    SentError(StreamCondition, String),
    /// The peer sent a stream error.
    ReceivedError(StreamCondition, Option<String>),
    /// The peer did not complete the closing handshake in time.
    CloseTimeout,
    /// The runtime reported that the TLS handshake failed.
    TlsFailed(String),
}

impl CloseReason {
    /// The RFC 6120 §8.3.3 condition with which stanzas that waited for a stream that
    /// ended this way (before it could carry them) are bounced to their senders:
    ///
    /// - `remote-server-timeout` (§8.3.3.16, type `wait`) when the stream timed out
    ///   (ours: a negotiation step or the closing handshake; the peer's
    ///   `<connection-timeout/>`) or the peer went away for a passing reason
    ///   (`<system-shutdown/>`, `<resource-constraint/>`, `<reset/>`);
    /// - `remote-server-not-found` (§8.3.3.15, type `cancel`) otherwise: the peer refused
    ///   us (a stream error such as `<not-authorized/>` or `<policy-violation/>`, or it
    ///   closed the stream before authenticating us), or the stream broke.
    pub fn bounce_condition(&self) -> StanzaCondition {
        match self {
            CloseReason::CloseTimeout
            | CloseReason::SentError(StreamCondition::ConnectionTimeout, _)
            | CloseReason::ReceivedError(
                StreamCondition::ConnectionTimeout
                | StreamCondition::SystemShutdown
                | StreamCondition::ResourceConstraint
                | StreamCondition::Reset,
                _,
            ) => StanzaCondition::RemoteServerTimeout,
            _ => StanzaCondition::RemoteServerNotFound,
        }
    }
}
