//! RFC 6121 subscription state machine and roster semantics.
//!
//! Arrives with the local-domain issue (rosters, subscriptions, presence); nothing here
//! yet.
