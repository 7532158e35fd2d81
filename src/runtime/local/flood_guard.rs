//! Client address limits on C2S streams (`limits.c2s_unauthenticated_per_address`,
//! `limits.c2s_auth_failures_per_address`; issue 21): a connection is counted against its
//! source IP address until it authenticates or ends, and SASL failures are counted per
//! address in a window ([`crate::runtime::floods::Floods`]). A connection over either
//! limit gets the stream error `policy-violation` (RFC 6120 §4.9.3.14) and is closed;
//! a WARN names the address at most once per [`WARN_INTERVAL`], and
//! `fedrouter_flood_refused_total{reason}` counts each refusal.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::warn;

use crate::condition::StreamCondition;
use crate::runtime::conn::{Conn, ConnState};
use crate::runtime::floods::{AddressRefusal, WARN_INTERVAL};
use crate::runtime::shard::Shard;
use crate::stream::c2s::C2sConnection;

/// Counts a new client connection from `peer` against its address, or closes it with a
/// stream error when the address is over a limit (the stream header and the error are
/// written once the connection runs).
pub(super) fn admit(shard: &Shard, peer: SocketAddr, st: &mut ConnState<C2sConnection>) {
    let shared = shard.shared();
    let now = Instant::now();
    match shared.floods.connect(peer.ip(), &shared.config.limits, now) {
        Ok(slot) => st.address_slot = Some(slot),
        Err(refusal) => {
            refused(shard, peer.ip(), refusal, now);
            st.proto.close(
                Some((StreamCondition::PolicyViolation, refusal.text())),
                now,
            );
        }
    }
}

/// A SASL failure on `conn`: counted against its address; when that reaches
/// `limits.c2s_auth_failures_per_address` the stream is closed with `policy-violation`.
pub(super) fn auth_failed(shard: &Shard, conn: &Conn<C2sConnection>) {
    let shared = shard.shared();
    let now = Instant::now();
    let mut st = conn.st.borrow_mut();
    let (blocked, ip) = match &st.address_slot {
        Some(slot) => (slot.auth_failed(&shared.config.limits, now), slot.ip()),
        None => return,
    };
    if blocked {
        let refusal = AddressRefusal::AuthFailures;
        refused(shard, ip, refusal, now);
        st.proto.close(
            Some((StreamCondition::PolicyViolation, refusal.text())),
            now,
        );
        st.collect_events();
    }
}

/// The connection authenticated or ended: its address slot is given back.
pub(super) fn release(conn: &Conn<C2sConnection>) {
    let slot = conn.st.borrow_mut().address_slot.take();
    drop(slot);
}

fn refused(shard: &Shard, ip: std::net::IpAddr, refusal: AddressRefusal, now: Instant) {
    crate::runtime::metrics(|m| m.count("flood_refused", &[("reason", refusal.label())], 1));
    if shard.shared().floods.warn_address(ip, now) {
        warn!(
            address = %ip,
            reason = refusal.label(),
            "client address over a flood limit: its connections get the stream error policy-violation (logged at most once per {}s per address)",
            WARN_INTERVAL.as_secs()
        );
    }
}
