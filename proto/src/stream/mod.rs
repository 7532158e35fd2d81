//! RFC 6120 stream negotiation as sans-IO state machines.
//!
//! - [`s2s`]: server-to-server streams, both directions: STARTTLS, SASL EXTERNAL
//!   (XEP-0178), Server Dialback (XEP-0220), authorisation of received stanzas.
//! - [`c2s`]: client-to-server streams (receiving end): STARTTLS, SASL SCRAM/PLAIN,
//!   resource binding, `from` checks on the client's stanzas.
//! - [`policy`]: per-remote-domain federation policy (TLS, auth method, certificate
//!   checks, allow/deny).
//!
//! Both machines own the same stream plumbing (`plumbing.rs`): the framer, our header and
//! the transmit buffer, the event queue, the deadlines (the peer's first header, each
//! negotiation step, keepalive, the closing handshake) and the close sequence; the
//! public types they share ([`CloseReason`], [`TlsRole`]) are in `common.rs`.

pub mod c2s;
pub mod cert;
mod common;
mod plumbing;
pub mod policy;
pub mod s2s;
pub mod sm;

pub use c2s::{
    BindError, C2sConfig, C2sConnection, C2sError, C2sTimeouts, Event as C2sEvent, Mechanism,
    Password, PasswordCheck, PasswordVerdict,
};
pub use cert::CertError;
pub use policy::{AuthPolicy, FederationPolicy, PeerPolicy, TlsPolicy};
pub use s2s::{
    AuthMethod, CloseReason, Direction, Event, PeerCertVerifier, S2sConfig, S2sConnection,
    S2sError, Timeouts, TlsRole,
};
