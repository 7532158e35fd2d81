//! What the store keeps for PEP (XEP-0163): each account's nodes, their configuration
//! (access model, item limit) and their items, oldest first. The rules (limits, access
//! decisions) are [`fedrouter_proto::pep`]'s; the store writes what it is told, trimming
//! a node to its `max_items` in the same transaction as the publish.

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPepNode {
    /// The node name (e.g. `urn:xmpp:avatar:metadata`).
    pub node: String,
    /// `pubsub#access_model`: `presence` or `open`.
    pub access_model: String,
    /// Most items kept (at least 1).
    pub max_items: u32,
    /// `(item id, serialised payload)`, oldest first.
    pub items: Vec<(String, String)>,
}

/// One publish (XEP-0060 §7.1) to make durable: the node is created with this
/// configuration if new, or takes it; item `item_id` is inserted as the newest (or
/// replaces the one with that id); then the oldest beyond `max_items` are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepPublish {
    /// The account (bare JID).
    pub user: String,
    /// The node.
    pub node: String,
    /// `presence` or `open`.
    pub access_model: String,
    /// Most items kept (at least 1).
    pub max_items: u32,
    /// The item id.
    pub item_id: String,
    /// The serialised payload.
    pub payload: String,
}
