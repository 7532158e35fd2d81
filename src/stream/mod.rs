//! RFC 6120 stream negotiation as sans-IO state machines.
//!
//! - [`s2s`]: server-to-server streams, both directions: STARTTLS, SASL EXTERNAL
//!   (XEP-0178), Server Dialback (XEP-0220), authorisation of received stanzas.
//! - [`policy`]: per-remote-domain federation policy (TLS, auth method, certificate
//!   checks, allow/deny).
//!
//! C2S streams arrive with the local-domain issue.

pub mod policy;
pub mod s2s;

pub use policy::{AuthPolicy, FederationPolicy, PeerPolicy, TlsPolicy};
pub use s2s::{
    AuthMethod, CloseReason, Direction, Event, PeerCertVerifier, S2sConfig, S2sConnection,
    S2sError, Timeouts, TlsRole,
};
