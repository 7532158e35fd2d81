//! fedrouter's protocol core: everything about XMPP that can be decided from bytes and
//! time alone (DESIGN.md "Layers", crate 1). No sockets, no clock reads, no threads, no
//! hidden randomness: callers feed bytes and `now`, and get back events and bytes to send
//! (the shape of rustls's `ConnectionCommon` and quinn-proto's `Connection`). The
//! `fedrouter` crate (adapters, router, io_uring runtime) drives it; `loadgen`'s simulated
//! peers drive the very same machines.
//!
//! # Where a stanza goes
//!
//! Bytes read from a socket go into a stream machine ([`stream::s2s::S2sConnection`] or
//! [`stream::c2s::C2sConnection`]), whose [`xml::Framer`] cuts them into stanzas without
//! copying ([`xml::Element`] is a view of the bytes as received). The machine negotiates
//! the stream (RFC 6120: TLS, SASL with [`scram`], [`dialback`]) and checks each
//! stanza's addressing; what it lets through comes out as an event carrying the
//! element. The runtime then asks [`stanza`] for the routing view (kind, `to`, `from`)
//! and sends it to the owner of the destination; for local users, [`presence`] decides
//! subscription transitions (RFC 6121) and [`service`] what the server answers itself.
//! Errors are [`condition`]s (RFC 6120 §4.9.3, §8.3.3). Outbound, [`srv`] orders the DNS
//! SRV answers (RFC 2782) the runtime looked up.
//!
//! # Modules
//!
//! - [`xml`]: the streaming stanza framer (tokenizer) over borrowed bytes, escaping, writer.
//! - [`jid`]: JIDs (RFC 7622).
//! - [`stanza`]: the routing view of a stanza (kind, to, from, type, id, bytes).
//! - [`condition`]: stream and stanza error conditions (RFC 6120 §4.9.3, §8.3.3).
//! - [`stream`]: RFC 6120 stream negotiation state machines (S2S both ways, C2S).
//! - [`dialback`]: XEP-0220 Server Dialback keys (XEP-0185) and verification state.
//! - [`scram`]: SASL SCRAM (RFC 5802, RFC 7677) and PLAIN credentials.
//! - [`srv`]: RFC 2782 ordering of DNS SRV answers for S2S connection attempts.
//! - [`presence`]: RFC 6121 subscription state machine, roster semantics and the §8.5
//!   delivery rules for local users ([`presence::delivery`]).
//! - [`offline`]: offline messages (XEP-0160): which are stored, and the XEP-0203 delay
//!   stamp they are delivered with.
//! - [`service`]: what the server answers itself (disco, ping, version).
//! - [`version`]: XEP-0092 software version; [`register`]: XEP-0077 password change.
//! - [`carbons`]: XEP-0280 message carbons; [`blocking`]: XEP-0191 blocking command;
//!   [`csi`]: XEP-0352 client state indication.

#![warn(missing_docs)]

pub mod blocking;
pub mod carbons;
pub mod condition;
pub mod csi;
pub mod dialback;
pub mod jid;
pub mod limits;
pub mod offline;
pub mod pep;
pub mod presence;
pub mod register;
pub mod scram;
pub mod service;
pub mod srv;
pub mod stanza;
pub mod stream;
pub mod version;
pub mod xml;
