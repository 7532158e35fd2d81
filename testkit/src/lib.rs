//! Test support for fedrouter's tests, benchmarks and `loadgen` (DESIGN.md "Layers", the
//! test-support crate): nothing here is linked into the `fedrouter` server.
//!
//! - [`zone`]: a small authoritative DNS server on loopback over hickory-server, answering
//!   from a fixed record set (SRV, A, AAAA), so tests and loadgen's simulated peers
//!   exercise every branch of RFC 6120 §3.2 without leaving loopback.

#![warn(missing_docs)]

pub mod zone;
