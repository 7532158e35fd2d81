//! What crosses from one shard to another over the inbox mesh
//! ([`crate::router::inbox`]).

use std::time::Instant;

use super::conn::{ConnId, Handoff};
use crate::condition::StanzaCondition;
use crate::dialback::DialbackResult;
use crate::router::fanout::SharedStanza;
use crate::stream::c2s::C2sConnection;
use crate::xml::Element;

/// Where a stanza goes, decided once by the shard that read or generated it
/// ([`super::shard::Shard::route`]) and carried with it to the owner. The owner of a
/// remote domain takes the domain from the stanza's `to` again: a borrowed slice, where
/// carrying it would cost an allocation per stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dst {
    /// A local JID (a user's bare JID, or a local domain's own entity) owned by the
    /// receiver.
    Local,
    /// The remote domain of the stanza's `to` ([`crate::router::domain_key`]), owned by
    /// the receiver.
    Remote,
}

/// What crosses from one shard to another.
pub(crate) enum ShardMsg {
    /// A stanza for a local JID or a remote domain the receiver owns, where it goes, and
    /// the time it was read from a socket (for latency metrics). The element is a
    /// refcounted view of the bytes as received: never re-serialised.
    Route {
        /// The stanza.
        el: Element,
        /// Its destination, decided by the sender.
        dst: Dst,
        /// When it was read from a socket, if it was.
        read_at: Option<Instant>,
    },
    /// An inbound stream whose remote domain the receiver owns.
    Adopt(Box<Handoff>),
    /// A client stream whose user (bare JID) the receiver owns, after SASL.
    AdoptC2s(Box<Handoff<C2sConnection>>),
    /// A presence broadcast: the shared stanza and the recipients the receiver owns
    /// (local bare JIDs, or contacts at remote domains it owns).
    Fanout {
        stanza: SharedStanza,
        to: Vec<Box<str>>,
        read_at: Option<Instant>,
    },
    /// Verify a dialback key with `remote`'s authoritative server (XEP-0220 §2.1.3):
    /// the receiver owns `remote`.
    Verify(VerifyRequest),
    /// The authoritative server's answer for a [`ShardMsg::Verify`].
    Verdict {
        conn: ConnId,
        local: String,
        remote: String,
        result: DialbackResult,
    },
    /// An inbound stream from `remote` (owned by the receiver), opened at `opened`, broke
    /// off before it carried a dialback request: see [`super::remote::Remotes::peer_verification_failed`].
    PeerStreamFailed {
        remote: String,
        opened: Instant,
        condition: StanzaCondition,
        what: String,
    },
}

/// A dialback key to verify with `remote`'s authoritative server (XEP-0220 §2.1.3), for
/// inbound stream `conn` on shard `reply_shard`, where the verdict goes back.
pub(crate) struct VerifyRequest {
    /// Our domain, the stream's receiving side (`to` of the `db:result`).
    pub local: String,
    /// The domain that asked to be authenticated (an ownership key).
    pub remote: String,
    /// The id of the inbound stream the key was sent on.
    pub stream_id: String,
    /// The dialback key (XEP-0185).
    pub key: String,
    /// The shard of the inbound stream.
    pub reply_shard: usize,
    /// The inbound stream.
    pub conn: ConnId,
    /// Whether the inbound stream is bidirectional (XEP-0288): it will carry our stanzas
    /// to `remote` once authenticated, so the `db:verify` goes on a verify-only stream
    /// rather than a stream of our own that would also authenticate us.
    pub bidi: bool,
}
