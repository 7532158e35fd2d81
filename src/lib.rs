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
//! # Where a stanza goes
//!
//! 1. **Read.** A shard's read loop (`runtime/io.rs`) feeds the socket's bytes, through
//!    TLS, into the stream's sans-IO machine ([`stream::s2s::S2sConnection`],
//!    [`stream::c2s::C2sConnection`]), whose [`xml::Framer`] yields each stanza as an
//!    [`xml::Element`]: a refcounted view of the bytes read, never re-serialised.
//! 2. **Decide, once.** The stream's events (`runtime/s2s.rs` for S2S, `runtime/local/`
//!    for clients) hand the stanza to `Shard::route` (`runtime/shard.rs`): a JID at a
//!    domain we host belongs to the shard of its bare JID, anything else to the shard of
//!    its domain ([`router::shard_of`] over [`router::bare_key`] / [`router::domain_key`]).
//!    If that is another shard, the stanza and its destination cross in one
//!    `ShardMsg::Route` (`runtime/msg.rs`) through the shard's outbox
//!    (`runtime/outbox.rs`) and the bounded inbox mesh ([`router::inbox`]); the owner does
//!    not look at `to` again.
//! 3. **Deliver.** On the owner, a local JID goes to the server's own entity
//!    ([`service`]) or to the user (`runtime/local/`: sessions, roster, RFC 6121 §8
//!    decisions from [`presence::delivery`]); a remote domain's stanza goes to
//!    `Remotes::send_remote` (`runtime/remote.rs`): written at once on its authenticated
//!    outbound stream, or queued ([`router::queue::DomainQueue`], bounded, bounced with
//!    `resource-constraint` when full) while `runtime/connect.rs` resolves SRV and opens
//!    the stream. The writer (`runtime/io.rs`) moves the stream's bytes to the socket,
//!    and closes a stream whose peer stops reading (write-stall timeout).
//! 4. **Answer.** Replies and bounces (RFC 6120 §8.3) are built by the core and routed
//!    like any stanza, from step 2.
//!
//! # Layers
//!
//! The pure core is its own crate, `fedrouter-proto`, re-exported here: it does no I/O,
//! reads no clock and starts no thread; it is fed bytes and time and returns events and
//! bytes to send.
//!
//! - [`xml`]: the streaming stanza framer (tokenizer) over borrowed bytes, escaping, writer.
//! - [`jid`]: JIDs (RFC 7622).
//! - [`stanza`]: the routing view of a stanza (kind, to, from, type, id, bytes).
//! - [`condition`]: stream and stanza error conditions (RFC 6120 §4.9.3, §8.3.3).
//! - [`stream`]: RFC 6120 stream negotiation state machines, S2S and C2S.
//! - [`dialback`]: XEP-0220 Server Dialback keys (XEP-0185) and verification state.
//! - [`srv`]: RFC 2782 ordering of DNS SRV answers for S2S connection attempts.
//! - [`presence`]: RFC 6121 subscription state machine, roster semantics, §8 delivery.
//! - [`service`]: what the server answers itself (XEP-0199 ping, XEP-0030 disco).
//!
//! This crate holds the rest:
//!
//! - adapters: [`tls`] (rustls configurations, certificate choice by SNI, the peer
//!   certificate check: RFC 6120 §5, §13.7; RFC 7590; XEP-0178; XEP-0368), [`dns`]
//!   (hickory), [`store`] (SQLite), [`config`] (TOML), [`logging`];
//! - [`router`]: ownership ([`router::shard_of`]), the inbox mesh, per-destination
//!   queues and their congestion and backoff policy, presence fan-out;
//! - [`runtime`]: shards on io_uring, listeners, sockets, timers, hand-off: the only
//!   place with I/O and the clock;
//! - [`metrics`], and [`check`] (`fedrouter check`: the same cores over blocking sockets).

#![warn(missing_docs)]

// The protocol core lives in its own crate (no I/O, no clock, no threads); re-exported so
// that `fedrouter::xml`, `fedrouter::stream` … name the same items as before.
pub use fedrouter_proto::{
    blocking, carbons, condition, csi, dialback, jid, limits, offline, pep, presence, register,
    service, srv, stanza, stream, version, xml,
};

pub mod auth;
pub mod check;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod logging;
pub mod metrics;
pub mod pie;
pub mod router;
pub mod runtime;
pub mod store;
pub mod tls;
