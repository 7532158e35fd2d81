//! What a C2S connection reports ([`Event`]), the runtime's errors ([`C2sError`]), its
//! refusals of a bind request ([`BindError`]), and the password a client sent with its
//! answer ([`Password`], [`PasswordVerdict`]).

use std::fmt;
use std::time::Instant;

use super::Mechanism;
use crate::condition::StanzaCondition;
use crate::stanza::StanzaKind;
use crate::stream::common::{CloseReason, TlsRole};
use crate::xml::Element;

#[cfg(doc)]
use super::C2sConnection;

/// Why the runtime refuses a bind request (RFC 6120 §7.6.2, §7.7.2). Each maps to the
/// stanza error the client gets ([`BindError::condition`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The resource is in use and the runtime keeps the existing session (§7.7.2.2):
    /// `<conflict/>`, type `cancel`.
    #[error("resource conflict")]
    Conflict,
    /// The account may not bind more resources (§7.6.2.2): `<not-allowed/>`, `cancel`.
    #[error("no more resources allowed")]
    NotAllowed,
    /// The server cannot bind more resources now (§7.6.2.1): `<resource-constraint/>`,
    /// `wait`.
    #[error("resource constraint")]
    ResourceConstraint,
    /// Something failed on the server: `<internal-server-error/>`, `cancel`.
    #[error("internal server error")]
    Internal,
}

impl BindError {
    /// The stanza error condition sent to the client.
    pub fn condition(self) -> StanzaCondition {
        match self {
            BindError::Conflict => StanzaCondition::Conflict,
            BindError::NotAllowed => StanzaCondition::NotAllowed,
            BindError::ResourceConstraint => StanzaCondition::ResourceConstraint,
            BindError::Internal => StanzaCondition::InternalServerError,
        }
    }
}

/// A password a client sent with SASL `PLAIN` (RFC 4616), for the runtime to check
/// ([`Event::PasswordCheckNeeded`]). [`Debug`](fmt::Debug) does not show it, and its bytes
/// are overwritten with zeros when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps `password` (UTF-8, non-empty as RFC 4616 requires).
    pub fn new(password: &str) -> Password {
        Password(password.to_owned())
    }

    /// The password, to hand to the checker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        std::mem::take(&mut self.0).into_bytes().fill(0);
    }
}

/// The runtime's answer to [`Event::PasswordCheckNeeded`], given to
/// [`C2sConnection::handle_password_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordVerdict {
    /// The password is the user's: `<success/>` (RFC 6120 §6.4.6).
    Accepted,
    /// Wrong password, unknown user, or a user the directory does not let in:
    /// `<failure><not-authorized/></failure>` (§6.5.10), counted and delayed like any
    /// failure.
    Rejected,
    /// The password could not be checked now (the directory is unreachable, busy or timed
    /// out): `<failure><temporary-auth-failure/></failure>` (§6.5.12). Not counted towards
    /// [`super::C2sConfig::max_auth_failures`] and not delayed: the client did nothing
    /// wrong and may try again.
    TemporaryFailure,
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq)]
// Not `#[non_exhaustive]`: the runtime (another crate of this workspace) matches it
// exhaustively, so a new event is a compile error there until it is handled.
pub enum Event {
    /// The client's stream header was accepted (once per header: initial, after TLS,
    /// after SASL).
    Opened {
        /// The local domain the client addressed.
        domain: String,
        /// Our stream id for this header.
        stream_id: String,
    },
    /// Wrap the socket with TLS now, as the TLS server (always [`TlsRole::Server`]; RFC
    /// 6120 §5.4.3.3); then call [`C2sConnection::handle_tls_established`].
    StartTls(TlsRole),
    /// Look up the stored credentials of `jid` and answer with
    /// [`C2sConnection::handle_credentials`] (`None` when the user does not exist or has
    /// none for the hash). For SCRAM pass the credentials of `mechanism.hash()`; for
    /// `PLAIN` any of the user's credentials will do (SHA-256 first).
    CredentialsNeeded {
        /// The normalised bare JID `localpart@domain` (the store's key).
        jid: String,
        /// The mechanism the client chose.
        mechanism: Mechanism,
    },
    /// With [`super::PasswordCheck::External`]: check `password` for `username` and answer
    /// with [`C2sConnection::handle_password_verdict`]. Only `PLAIN` over TLS gets here;
    /// the authzid, if any, was already checked to be the same user.
    PasswordCheckNeeded {
        /// The normalised bare JID `localpart@domain` (the store's key).
        jid: String,
        /// The normalised localpart (RFC 7622 §3.3): the directory's user name.
        username: String,
        /// The password as the client sent it.
        password: Password,
    },
    /// A SASL attempt failed (RFC 6120 §6.4.5); the runtime may delay or refuse further
    /// attempts from the same address or for the same account.
    AuthFailed {
        /// The username the client gave, when it got that far (normalised when valid).
        username: Option<String>,
        /// Failures so far on this stream.
        failures: u32,
        /// Until when further input is held; `None` when the stream is being closed.
        retry_after: Option<Instant>,
    },
    /// SASL succeeded; the stream restarts. Stanzas flow only after binding.
    Authenticated {
        /// The authenticated bare JID.
        jid: String,
        /// How.
        mechanism: Mechanism,
    },
    /// The client asks to bind a resource (RFC 6120 §7.5); answer with
    /// [`C2sConnection::handle_bind`].
    BindRequested {
        /// The authenticated bare JID.
        jid: String,
        /// The requested resourcepart, enforced (RFC 7622 §3.4); `None`: generate one.
        requested: Option<String>,
    },
    /// A resource is bound: stanzas now flow both ways.
    Bound {
        /// The session's full JID.
        jid: String,
    },
    /// A stanza from the bound client (`from` checked, not stamped: see
    /// [`C2sConnection::stamp`]).
    Stanza {
        /// message, presence or iq.
        kind: StanzaKind,
        /// The stanza as received (`jabber:client`).
        element: Element,
    },
    /// The bound client reported its state with an XEP-0352 nonza (`<active/>` or
    /// `<inactive/>` in `urn:xmpp:csi:0`, §3): hold presence updates while inactive, send
    /// them when active again ([`crate::csi`]).
    ClientState(crate::csi::ClientState),
    /// XEP-0198 enabled on the bound stream; with a resumption id when the session may
    /// be resumed after its stream drops (keep it detached, findable by that id, for
    /// [`C2sConnection::resumption_timeout`]).
    StreamManagementEnabled {
        /// The id the client resumes with (`previd`), if resumable.
        resumption_id: Option<String>,
    },
    /// The authenticated client asks to resume a session (XEP-0198 §5) instead of
    /// binding; answer with [`C2sConnection::handle_resume`].
    ResumeRequested {
        /// The session's resumption id.
        previd: String,
        /// Stanzas the client handled on the old stream.
        h: u32,
    },
    /// A session was resumed on this stream: it is bound to `jid` again, and the
    /// stanzas the client had not acknowledged were sent again.
    Resumed {
        /// The session's full JID.
        jid: String,
    },
    /// XEP-0077 §3.1: the (unauthenticated) client asks to create the account `jid` with
    /// `password`; create it (SCRAM credentials derived from the password) and answer
    /// with [`C2sConnection::handle_registration`]. Only when
    /// [`super::C2sConfig::registration`] is on.
    RegistrationRequested {
        /// The new account's normalised bare JID.
        jid: String,
        /// The password as sent (redacted in `Debug`).
        password: Password,
    },
    /// The stream is over; the runtime closes the socket after transmitting what is left.
    Closed(CloseReason),
}

/// Errors from calls the runtime makes.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2sError {
    /// The call does not fit the stream's state (e.g. credentials nobody asked for).
    #[error("not possible in this state: {0}")]
    InvalidState(&'static str),
    /// No resource is bound yet.
    #[error("no resource is bound on this stream")]
    NotBound,
    /// [`C2sConnection::handle_bind`] got something that is not a full JID of the
    /// authenticated user; the client was answered `internal-server-error`.
    #[error("not a full JID of the authenticated user: {0}")]
    InvalidJid(String),
}
