//! Personal Eventing Protocol (XEP-0163) on every local account: the pure rules and XML.
//!
//! The runtime keeps, per account, nodes of items (XEP-0060 §7.1 publish, §7.2 retract,
//! §6.5 retrieve) with a per-node item limit and an access model (`presence`, the
//! default, or `open`, XEP-0060 §4.5), and sends each published item to the owner's
//! resources and to the contacts with a `from`/`both` subscription whose entity
//! capabilities (XEP-0115) show `<node>+notify` (XEP-0163 §4.3 filtered notifications).
//! This module has no I/O:
//!
//! | file | what |
//! |---|---|
//! | `request.rs` | [`parse_request`]: a `<pubsub/>` request as a [`PepRequest`], or the [`PepError`] to answer |
//! | `node.rs` | [`PepNode`]: items kept newest last within `max_items`; [`AccessModel`] decisions |
//! | `build.rs` | results, errors, `headline` notifications, the caps `disco#info` query |
//! | `caps.rs` | XEP-0115 `<c/>` in presence, `disco#info` answers, the verification string and hash |
//!
//! What is not implemented (node creation and configuration requests, subscriptions,
//! the `whitelist`/`roster`/`authorize` access models) is answered with
//! `feature-not-implemented` and a `pubsub#errors` `<unsupported feature='…'/>`
//! (XEP-0060 §7.1.3.x, §8.1.1).

mod build;
mod caps;
mod node;
mod request;

pub use build::{
    caps_query, empty_result, items_result, notification, pep_error, publish_result,
    retract_notification,
};
pub use caps::{
    notify_nodes, parse_caps, parse_disco_info, verification_string, verify, Caps, DiscoInfo,
};
pub use node::{max_items_for, may_retrieve, AccessModel, PepNode};
pub use request::{parse_request, MaxItems, PepError, PepRequest, PublishOptions, PubsubError};

/// `http://jabber.org/protocol/pubsub` (XEP-0060 §7).
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// `http://jabber.org/protocol/pubsub#owner` (XEP-0060 §8): owner use cases, none
/// implemented for PEP nodes (`feature-not-implemented`).
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// `http://jabber.org/protocol/pubsub#event` (XEP-0060 §7.1.2.1): notifications.
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// `http://jabber.org/protocol/pubsub#errors` (XEP-0060 §14.2): application errors.
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// `http://jabber.org/protocol/pubsub#publish-options` (XEP-0060 §7.1.5): the
/// `FORM_TYPE` of publish options.
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// `http://jabber.org/protocol/caps` (XEP-0115 §4).
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
/// `jabber:x:data` (XEP-0004).
pub const NS_DATA: &str = "jabber:x:data";

/// The `pubsub#…` features an account advertises in `disco#info` (XEP-0163 §6.1,
/// XEP-0060 §10): only what is implemented.
pub const PEP_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

/// Whether an `iq` payload (name, namespace) is a pubsub request for PEP: `<pubsub/>` in
/// [`NS_PUBSUB`] or [`NS_PUBSUB_OWNER`].
pub fn is_pubsub(name: &str, ns: &str) -> bool {
    name == "pubsub" && (ns == NS_PUBSUB || ns == NS_PUBSUB_OWNER)
}
