//! fedrouter: an XMPP federation router.
//!
//! fedrouter is the server-to-server (S2S) edge of a presence deployment: it hosts local
//! domains and carries their subscriptions, presence and messages to thousands of remote
//! domains over RFC 6120 streams.
//!
//! # Data flow
//!
//! ```text
//!  remote servers                                               local clients
//!     │ S2S :5269 / :5270 (direct TLS)                               │ C2S :5222
//!     ▼                                                              ▼
//!  ┌─ shard k (one thread, one core, one io_uring) ─────────────────────────────┐
//!  │ socket ─► TLS ─► xml::Framer ─► stream state machine ─► route              │
//!  │                  (zero-copy: stanzas stay `Bytes` views of the read buffer) │
//!  └────────────────────────────────────┬────────────────────────────────────────┘
//!                                       │ bounded inboxes (full mesh)
//!                                       ▼
//!  shard(owner) ─► presence/roster logic ─► store ─► outbound queue ─► write
//! ```
//!
//! # Layers
//!
//! The pure core does no I/O, reads no clock and starts no thread: it is fed bytes and
//! time and returns events and bytes to send.
//!
//! - [`xml`]: the streaming stanza framer (tokenizer) over borrowed bytes, escaping, writer.
//! - [`jid`]: JIDs (RFC 7622).
//! - [`stanza`]: the routing view of a stanza (kind, to, from, type, id, bytes).
//! - [`condition`]: stream and stanza error conditions (RFC 6120 §4.9.3, §8.3.3).
//! - [`stream`]: RFC 6120 stream negotiation state machines.
//! - [`dialback`]: XEP-0220 Server Dialback keys (XEP-0185) and verification state.
//! - [`srv`]: RFC 2782 ordering of DNS SRV answers for S2S connection attempts.
//! - [`presence`]: RFC 6121 subscription state machine and roster semantics.
//! - [`tls`] (adapter, used by the runtime only): rustls configurations, certificate choice
//!   by SNI, and the peer certificate check after the stream header (RFC 6120 §5, §13.7;
//!   RFC 7590; XEP-0178; XEP-0368).
//! - [`logging`] (adapter, used by the binaries): the log on stderr, text or JSON, and its
//!   filter.

#![warn(missing_docs)]

// The protocol core lives in its own crate (no I/O, no clock, no threads); re-exported so
// that `fedrouter::xml`, `fedrouter::stream` … name the same items as before.
pub use fedrouter_proto::{condition, dialback, jid, presence, service, srv, stanza, stream, xml};

pub mod check;
pub mod config;
pub mod dns;
pub mod logging;
pub mod metrics;
pub mod router;
pub mod runtime;
pub mod store;
pub mod tls;
