//! One PEP node ([`PepNode`]): its items, newest last, within its `max_items`, and its
//! access model ([`AccessModel`], XEP-0060 §4.5; XEP-0163 §4.1: `presence` by default).

use std::collections::VecDeque;

use super::request::{MaxItems, PepError, PubsubError};
use crate::condition::StanzaCondition;

/// Who may retrieve items and receive notifications (XEP-0060 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessModel {
    /// `presence`: the owner and contacts with a `from`/`both` subscription (the PEP
    /// default, XEP-0163 §4.1).
    #[default]
    Presence,
    /// `open`: anyone.
    Open,
}

impl AccessModel {
    /// Reads `pubsub#access_model`.
    ///
    /// Errors: `whitelist`, `roster`, `authorize`: `feature-not-implemented` with
    /// `<unsupported feature='access-…'/>`; anything else: `not-acceptable`.
    pub fn parse(v: &str) -> Result<AccessModel, PepError> {
        match v {
            "presence" => Ok(AccessModel::Presence),
            "open" => Ok(AccessModel::Open),
            "whitelist" => Err(PepError::unsupported("access-whitelist")),
            "roster" => Err(PepError::unsupported("access-roster")),
            "authorize" => Err(PepError::unsupported("access-authorize")),
            _ => Err(PepError::new(StanzaCondition::NotAcceptable, None)),
        }
    }

    /// The `pubsub#access_model` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Presence => "presence",
            AccessModel::Open => "open",
        }
    }
}

/// Whether a requester may retrieve a node's items (XEP-0060 §6.5.2, §6.5.9.x):
/// `is_owner` (the account itself), `subscribed_from` (the account's roster gives the
/// requester's bare JID a `from`/`both` subscription).
///
/// Errors: `presence` model and neither: `not-authorized` with
/// `<presence-subscription-required/>`.
pub fn may_retrieve(
    model: AccessModel,
    is_owner: bool,
    subscribed_from: bool,
) -> Result<(), PepError> {
    match model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence if is_owner || subscribed_from => Ok(()),
        AccessModel::Presence => Err(PepError::new(
            StanzaCondition::NotAuthorized,
            Some(PubsubError::PresenceSubscriptionRequired),
        )),
    }
}

/// The item limit of a node: `asked` (publish options), else `default`; never above
/// `cap` (`max` asks for `cap`), never below 1.
pub fn max_items_for(asked: Option<MaxItems>, default: usize, cap: usize) -> usize {
    match asked {
        None => default,
        Some(MaxItems::Max) => cap,
        Some(MaxItems::Count(n)) => n,
    }
    .clamp(1, cap.max(1))
}

/// A node's items (id, serialised payload), oldest first, at most `max_items`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PepNode {
    /// Access model.
    pub access: AccessModel,
    /// Most items kept (at least 1).
    pub max_items: usize,
    /// The items, oldest first.
    pub items: VecDeque<(String, String)>,
}

impl PepNode {
    /// An empty node.
    pub fn new(access: AccessModel, max_items: usize) -> PepNode {
        PepNode {
            access,
            max_items: max_items.max(1),
            items: VecDeque::new(),
        }
    }

    /// Publishes item `id` (XEP-0060 §7.1.2): an item with the same id is replaced and
    /// becomes the newest; the oldest ones beyond `max_items` are dropped. Returns the
    /// ids dropped.
    pub fn publish(&mut self, id: &str, payload: String) -> Vec<String> {
        self.items.retain(|(i, _)| i != id);
        self.items.push_back((id.to_owned(), payload));
        self.trim()
    }

    /// Sets `max_items` (at least 1) and drops what no longer fits; the ids dropped.
    pub fn set_max_items(&mut self, n: usize) -> Vec<String> {
        self.max_items = n.max(1);
        self.trim()
    }

    fn trim(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        while self.items.len() > self.max_items {
            if let Some((id, _)) = self.items.pop_front() {
                dropped.push(id);
            }
        }
        dropped
    }

    /// Deletes item `id` (XEP-0060 §7.2); whether it was there.
    pub fn retract(&mut self, id: &str) -> bool {
        let before = self.items.len();
        self.items.retain(|(i, _)| i != id);
        self.items.len() != before
    }

    /// The last published item (XEP-0163 §4.3.4, XEP-0060 §12.7).
    pub fn last(&self) -> Option<(&str, &str)> {
        self.items.back().map(|(i, p)| (i.as_str(), p.as_str()))
    }

    /// The items a retrieval returns (XEP-0060 §6.5.4, §6.5.7): those named in `ids`
    /// (all when empty), then only the newest `max` of them; oldest first.
    pub fn select(&self, ids: &[String], max: Option<usize>) -> Vec<(&str, &str)> {
        let chosen: Vec<(&str, &str)> = self
            .items
            .iter()
            .filter(|(i, _)| ids.is_empty() || ids.iter().any(|w| w == i))
            .map(|(i, p)| (i.as_str(), p.as_str()))
            .collect();
        let skip = max.map_or(0, |m| chosen.len().saturating_sub(m));
        chosen.into_iter().skip(skip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_kept_within_the_limit_newest_last() {
        let mut n = PepNode::new(AccessModel::Presence, 2);
        assert!(n.publish("a", "1".into()).is_empty());
        assert!(n.publish("b", "2".into()).is_empty());
        assert_eq!(n.publish("c", "3".into()), vec!["a".to_owned()]);
        assert_eq!(n.last(), Some(("c", "3")));
        // Same id: replaced, becomes newest.
        assert!(n.publish("b", "4".into()).is_empty());
        assert_eq!(n.select(&[], None), vec![("c", "3"), ("b", "4")]);
        assert_eq!(n.select(&[], Some(1)), vec![("b", "4")]);
        assert_eq!(n.select(&["c".into()], None), vec![("c", "3")]);
        assert!(n.retract("c"));
        assert!(!n.retract("c"));
        assert_eq!(n.set_max_items(0), Vec::<String>::new());
        assert_eq!(n.max_items, 1);
    }

    #[test]
    fn access_decisions_table() {
        use AccessModel::*;
        // (model, owner, from/both subscription, allowed)
        let table = [
            (Presence, true, false, true),
            (Presence, false, true, true),
            (Presence, false, false, false),
            (Open, false, false, true),
            (Open, true, false, true),
        ];
        for (m, owner, sub, ok) in table {
            let r = may_retrieve(m, owner, sub);
            assert_eq!(r.is_ok(), ok, "{m:?} owner={owner} sub={sub}");
            if let Err(e) = r {
                assert_eq!(e.condition, StanzaCondition::NotAuthorized);
                assert_eq!(e.pubsub, Some(PubsubError::PresenceSubscriptionRequired));
            }
        }
        assert_eq!(AccessModel::parse("open"), Ok(Open));
        assert_eq!(
            AccessModel::parse("roster"),
            Err(PepError::unsupported("access-roster"))
        );
        assert_eq!(
            AccessModel::parse("x").unwrap_err().condition,
            StanzaCondition::NotAcceptable
        );
    }

    #[test]
    fn max_items_table() {
        assert_eq!(max_items_for(None, 1, 100), 1);
        assert_eq!(max_items_for(Some(MaxItems::Count(10)), 1, 100), 10);
        assert_eq!(max_items_for(Some(MaxItems::Count(1000)), 1, 100), 100);
        assert_eq!(max_items_for(Some(MaxItems::Max), 1, 100), 100);
    }
}
