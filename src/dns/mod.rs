//! DNS adapter: SRV and address look-ups for S2S connections (RFC 6120 §3.2, RFC 2782,
//! XEP-0368), over hickory-resolver. (The authoritative zone server that tests, loadgen
//! and labs resolve against is `fedrouter_testkit::zone`, not linked into the server.)
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
mod resolver;

pub use resolver::{DnsConfig, DnsError, S2sResolver, StaticTarget, ATTEMPTS};
