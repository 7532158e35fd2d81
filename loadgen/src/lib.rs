//! loadgen: simulated Gmail-style remote XMPP servers and local clients against a system
//! under test (SUT), with HDR latency histograms.
//!
//! ```text
//!  topology ─► dns (SRV/A zone on loopback) ◄── SUT resolves peers
//!  peers (S2S, dialback / SASL EXTERNAL) ◄══ S2S ══► SUT ◄══ C2S ══► clients (SCRAM)
//!        └──────────── world: tracker (ids, accounting) + recorders ────────────┘
//!                                   │
//!                       run: scenarios, warm-up, progress ─► report
//! ```
//!
//! With `--procs N` the run is split over N processes ([`procs`]): the parent serves the
//! DNS zone and merges what the children measured.
//!
//! loadgen is a black box speaking plain XMPP (RFC 6120/6121, XEP-0220, XEP-0178): it works
//! against fedrouter, Prosody or ejabberd.

#![warn(missing_docs)]

pub mod auth;
pub mod c2s;
pub mod clients;
pub mod cpu;
pub mod dns;
pub mod outcome;
pub mod peers;
pub mod procs;
pub mod report;
pub mod run;
pub mod s2s;
pub mod scenario;
pub mod stanzas;
pub mod sut;
pub mod targets;
pub mod topology;
pub mod track;
pub mod world;
