//! Subscription request limits (issue 21, `[limits]`): per remote domain, requests per
//! minute (`limits.subscriptions_per_minute_per_domain`) and stored unanswered requests
//! (`limits.pending_subscriptions_per_domain`); per local recipient, stored unanswered
//! requests from anyone (`limits.pending_subscriptions_per_user`). A request beyond a
//! limit is answered with a stanza error — `policy-violation` for the rate (RFC 6120
//! §8.3.3.12), `resource-constraint` for a count (§8.3.3.18) — and is not stored; a WARN
//! names the domain at most once per [`WARN_INTERVAL`], and
//! `fedrouter_flood_refused_total{reason}` counts each refusal (the label set is fixed:
//! never one label per domain).
//!
//! The counts per domain are in [`crate::runtime::floods::Floods`] (shared by the
//! shards); the count per user is read from the user's cached roster, which holds every
//! pending row.

use std::time::Instant;

use tracing::warn;

use super::roster::Roster;
use crate::condition::StanzaCondition;
use crate::runtime::floods::{Refusal, WARN_INTERVAL};
use crate::runtime::shard::Shard;
use crate::xml::Element;

/// A subscription request from `contact` (bare JID) arrived: takes a token from its
/// domain's rate.
///
/// Errors: [`Refusal::Rate`].
pub(super) fn rate(shard: &Shard, contact: &str) -> Result<(), Refusal> {
    let shared = shard.shared();
    shared
        .floods
        .request(contact, &shared.config.limits, Instant::now())
}

/// A request from `contact` would add a pending inbound row to roster `r`: checks the
/// user's and the domain's counts, and counts it for the domain.
///
/// Errors: [`Refusal::UserPending`], [`Refusal::DomainPending`]; nothing counted.
pub(super) fn reserve(shard: &Shard, r: &Roster, contact: &str) -> Result<(), Refusal> {
    let shared = shard.shared();
    let limits = &shared.config.limits;
    let pending = r.items.values().filter(|i| i.pending_in.is_some()).count();
    if pending >= limits.pending_subscriptions_per_user as usize {
        return Err(Refusal::UserPending);
    }
    shared.floods.reserve_pending(contact, limits)
}

/// A row of `contact` held a pending inbound request (`before`) and now does or does not
/// (`after`): the domain's count follows.
pub(super) fn changed(shard: &Shard, contact: &str, before: bool, after: bool) {
    shard
        .shared()
        .floods
        .pending_changed(contact, before, after);
}

/// Refuses subscription request `el` from `contact` to local user `bare`: the error back
/// to the sender, the counter, and a WARN naming the domain unless one was logged within
/// [`WARN_INTERVAL`].
pub(super) fn refuse(shard: &Shard, el: &Element, contact: &str, bare: &str, why: Refusal) {
    crate::runtime::metrics(|m| m.count("flood_refused", &[("reason", why.label())], 1));
    let domain = contact.rsplit_once('@').map_or(contact, |(_, d)| d);
    let limits = shard.shared().config.limits;
    let (condition, text, limit) = match why {
        Refusal::Rate => (
            StanzaCondition::PolicyViolation,
            "too many subscription requests from your domain; try again later",
            limits.subscriptions_per_minute_per_domain,
        ),
        Refusal::DomainPending => (
            StanzaCondition::ResourceConstraint,
            "too many unanswered subscription requests from your domain",
            limits.pending_subscriptions_per_domain,
        ),
        Refusal::UserPending => (
            StanzaCondition::ResourceConstraint,
            "too many unanswered subscription requests to this user",
            limits.pending_subscriptions_per_user,
        ),
    };
    if shard.shared().floods.warn_domain(contact, Instant::now()) {
        warn!(
            %domain,
            user = bare,
            reason = why.label(),
            limit,
            "subscription requests refused by a flood limit (logged at most once per {}s per domain)",
            WARN_INTERVAL.as_secs()
        );
    }
    shard.bounce(el, condition, text);
}
