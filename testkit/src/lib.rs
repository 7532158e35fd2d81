//! Test support for fedrouter's tests, benchmarks and `loadgen` (DESIGN.md "Layers", the
//! test-support crate): nothing here is linked into the `fedrouter` server.
//!
//! - [`zone`]: a small authoritative DNS server on loopback over hickory-server, answering
//!   from a fixed record set (SRV, A, AAAA), so tests and loadgen's simulated peers
//!   exercise every branch of RFC 6120 §3.2 without leaving loopback.
//! - [`ca`]: a throw-away certificate authority ([`TestCa`]) issuing leaf certificates the
//!   way public CAs do (dNSName, serverAuth only; RFC 6120 §13.7.1.2, XEP-0178) as plain
//!   `rustls-pki-types` values ([`Leaf`]), for fedrouter's `CertifiedDomain::new` via
//!   [`Leaf::assemble`].

#![warn(missing_docs)]

pub mod ca;
pub mod zone;

pub use ca::{unix_ymd, CaError, Leaf, LeafOptions, TestCa};
