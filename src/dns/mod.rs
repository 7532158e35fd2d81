//! DNS adapter: SRV and address look-ups for S2S connections (RFC 6120 §3.2, RFC 2782,
//! XEP-0368), over hickory-resolver, and a small authoritative zone server for tests,
//! loadgen and labs, over hickory-server.
//!
//! ```text
//!  runtime (shard k) ──► S2sResolver::resolve_srv(D)
//!                          ├─ static override for D? ──► Targets([host:port])
//!                          ├─ _xmpps-server._tcp.D SRV ─┐ (concurrently, hickory cache
//!                          └─ _xmpp-server._tcp.D  SRV ─┤  positive + negative, by TTL)
//!                                                       ▼
//!                               srv::resolve_targets ──► Targets | Fallback | NoService
//!                   S2sResolver::resolve_host(target) ──► A + AAAA addresses
//! ```
//!
//! Each shard owns one [`S2sResolver`] (DESIGN.md: a shard owns its remote domains' DNS
//! answers), so its cache and name-server connections are never shared across threads.
//!
//! [`zone::ZoneServer`] answers from a fixed record set on loopback (UDP and TCP, one
//! port), authoritatively, with NXDOMAIN/NODATA plus an SOA for anything else, so tests can
//! exercise every branch of RFC 6120 §3.2 and count what reached the server.

mod resolver;
pub mod zone;

pub use resolver::{DnsConfig, DnsError, S2sResolver, StaticTarget, ATTEMPTS};
