//! A `<pubsub/>` request to an account (XEP-0060 §6.5, §7.1, §7.2 as XEP-0163 uses
//! them) read into a [`PepRequest`], or the [`PepError`] it is answered with.

use super::node::AccessModel;
use super::{NS_DATA, NS_PUBLISH_OPTIONS, NS_PUBSUB, NS_PUBSUB_OWNER};
use crate::condition::StanzaCondition;
use crate::xml::tree::Node;

/// `pubsub#max_items` as asked in publish options (XEP-0060 §7.1.5, §16.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxItems {
    /// A number of items (at least 1).
    Count(usize),
    /// `max`: as many as the server allows.
    Max,
}

/// Publish options (XEP-0060 §7.1.5): the fields of the `#publish-options` form this
/// server acts on; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// `pubsub#max_items`.
    pub max_items: Option<MaxItems>,
    /// `pubsub#access_model` (`presence` or `open`; others are refused while parsing).
    pub access_model: Option<AccessModel>,
}

/// A pubsub request for one of an account's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepRequest {
    /// `set` `<publish node><item id?>payload</item></publish>` (XEP-0060 §7.1).
    Publish {
        /// The node (created on first publish, XEP-0163 §3 auto-create).
        node: String,
        /// The item's `id`; `None` when the publisher left it to the server.
        id: Option<String>,
        /// The item's one payload element, serialised.
        payload: String,
        /// The publish options, if any.
        options: PublishOptions,
    },
    /// `set` `<retract node notify?><item id/></retract>` (XEP-0060 §7.2).
    Retract {
        /// The node.
        node: String,
        /// The item to delete.
        id: String,
        /// `notify='true'|'1'`: send a retraction notification.
        notify: bool,
    },
    /// `get` `<items node max_items?><item id/>*</items>` (XEP-0060 §6.5).
    Items {
        /// The node.
        node: String,
        /// `max_items`: only the newest so many.
        max_items: Option<usize>,
        /// Only these items (none: all).
        ids: Vec<String>,
    },
}

/// The `pubsub#errors` application condition of an error (XEP-0060 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubsubError {
    /// `<unsupported feature='…'/>`: the named feature is not implemented.
    Unsupported(&'static str),
    /// `<nodeid-required/>`.
    NodeIdRequired,
    /// `<item-required/>`.
    ItemRequired,
    /// `<invalid-payload/>`: not exactly one payload element.
    InvalidPayload,
    /// `<payload-too-big/>`.
    PayloadTooBig,
    /// `<presence-subscription-required/>` (access model `presence`, XEP-0060 §6.5.9.x).
    PresenceSubscriptionRequired,
}

impl PubsubError {
    /// The element's local name (the `unsupported` one carries a `feature`).
    pub fn name(self) -> &'static str {
        match self {
            PubsubError::Unsupported(_) => "unsupported",
            PubsubError::NodeIdRequired => "nodeid-required",
            PubsubError::ItemRequired => "item-required",
            PubsubError::InvalidPayload => "invalid-payload",
            PubsubError::PayloadTooBig => "payload-too-big",
            PubsubError::PresenceSubscriptionRequired => "presence-subscription-required",
        }
    }
}

/// Why a pubsub request is refused: the stanza error condition and its `pubsub#errors`
/// detail, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PepError {
    /// The RFC 6120 §8.3.3 condition.
    pub condition: StanzaCondition,
    /// The XEP-0060 application condition.
    pub pubsub: Option<PubsubError>,
}

impl PepError {
    /// `condition` with `pubsub`.
    pub fn new(condition: StanzaCondition, pubsub: Option<PubsubError>) -> PepError {
        PepError { condition, pubsub }
    }

    /// `feature-not-implemented` with `<unsupported feature='feature'/>`.
    pub fn unsupported(feature: &'static str) -> PepError {
        PepError::new(
            StanzaCondition::FeatureNotImplemented,
            Some(PubsubError::Unsupported(feature)),
        )
    }

    fn bad(pubsub: PubsubError) -> PepError {
        PepError::new(StanzaCondition::BadRequest, Some(pubsub))
    }
}

/// Reads the payload `pubsub` of an `iq` (`set` when `is_set`) addressed to an account.
/// `max_payload`: the largest serialised item payload accepted, in bytes.
///
/// Errors (XEP-0060): a request without exactly one action, or an action for the `get`
/// / `set` it is not: `bad-request`; `#owner` requests and the actions not implemented
/// (create, configure, subscribe, …): `feature-not-implemented` naming the feature; a
/// publish without `node`: `bad-request` `<nodeid-required/>` (§7.1.3.x); without an
/// item: `<item-required/>`; an item without exactly one payload: `<invalid-payload/>`;
/// over `max_payload`: `not-acceptable` `<payload-too-big/>`; publish options with an
/// access model other than `presence`/`open`: `feature-not-implemented`; a malformed
/// publish-options form or `max_items`: `bad-request`; a retract without item id:
/// `<item-required/>`.
pub fn parse_request(
    pubsub: &Node,
    is_set: bool,
    max_payload: usize,
) -> Result<PepRequest, PepError> {
    if pubsub.ns == NS_PUBSUB_OWNER {
        let feature = match pubsub.children.first().map(|c| c.name.as_str()) {
            Some("configure" | "default") => "config-node",
            Some("delete") => "delete-nodes",
            Some("purge") => "purge-nodes",
            Some("subscriptions") => "manage-subscriptions",
            Some("affiliations") => "modify-affiliations",
            _ => "config-node",
        };
        return Err(PepError::unsupported(feature));
    }
    debug_assert_eq!(pubsub.ns, NS_PUBSUB);
    let actions: Vec<&Node> = pubsub
        .children
        .iter()
        .filter(|c| c.ns == NS_PUBSUB && c.name != "publish-options")
        .collect();
    let [action] = actions.as_slice() else {
        return Err(PepError::new(StanzaCondition::BadRequest, None));
    };
    match (action.name.as_str(), is_set) {
        ("publish", true) => publish(pubsub, action, max_payload),
        ("retract", true) => {
            let node = node_attr(action)?;
            let id = action
                .child("item", NS_PUBSUB)
                .and_then(|i| i.attr("id"))
                .filter(|id| !id.is_empty())
                .ok_or(PepError::bad(PubsubError::ItemRequired))?;
            Ok(PepRequest::Retract {
                node,
                id: id.to_owned(),
                notify: matches!(action.attr("notify"), Some("true" | "1")),
            })
        }
        ("items", false) => {
            let node = node_attr(action)?;
            let max_items = match action.attr("max_items") {
                None => None,
                Some(v) => Some(
                    v.parse::<usize>()
                        .map_err(|_| PepError::new(StanzaCondition::BadRequest, None))?,
                ),
            };
            let ids = action
                .children
                .iter()
                .filter(|c| c.name == "item" && c.ns == NS_PUBSUB)
                .filter_map(|c| c.attr("id"))
                .map(str::to_owned)
                .collect();
            Ok(PepRequest::Items {
                node,
                max_items,
                ids,
            })
        }
        ("create", true) => Err(PepError::unsupported("create-nodes")),
        ("configure", _) => Err(PepError::unsupported("config-node")),
        ("subscribe", true) => Err(PepError::unsupported("subscribe")),
        ("unsubscribe", true) => Err(PepError::unsupported("subscribe")),
        ("options", _) => Err(PepError::unsupported("subscription-options")),
        ("subscriptions", false) => Err(PepError::unsupported("retrieve-subscriptions")),
        ("affiliations", false) => Err(PepError::unsupported("retrieve-affiliations")),
        ("default", false) => Err(PepError::unsupported("retrieve-default")),
        _ => Err(PepError::new(StanzaCondition::BadRequest, None)),
    }
}

fn node_attr(action: &Node) -> Result<String, PepError> {
    action
        .attr("node")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or(PepError::bad(PubsubError::NodeIdRequired))
}

fn publish(pubsub: &Node, action: &Node, max_payload: usize) -> Result<PepRequest, PepError> {
    let node = node_attr(action)?;
    let items: Vec<&Node> = action
        .children
        .iter()
        .filter(|c| c.name == "item" && c.ns == NS_PUBSUB)
        .collect();
    let item = match items.as_slice() {
        [] => return Err(PepError::bad(PubsubError::ItemRequired)),
        [one] => *one,
        _ => return Err(PepError::bad(PubsubError::InvalidPayload)),
    };
    let [payload] = item.children.as_slice() else {
        return Err(PepError::bad(PubsubError::InvalidPayload));
    };
    let mut xml = String::new();
    write_node(payload, "", &mut xml);
    if xml.len() > max_payload {
        return Err(PepError::new(
            StanzaCondition::NotAcceptable,
            Some(PubsubError::PayloadTooBig),
        ));
    }
    let options = match pubsub.child("publish-options", NS_PUBSUB) {
        Some(po) => publish_options(po)?,
        None => PublishOptions::default(),
    };
    Ok(PepRequest::Publish {
        node,
        id: item.attr("id").filter(|i| !i.is_empty()).map(str::to_owned),
        payload: xml,
        options,
    })
}

/// The `#publish-options` data form (XEP-0060 §7.1.5, XEP-0004).
fn publish_options(po: &Node) -> Result<PublishOptions, PepError> {
    let bad = PepError::new(StanzaCondition::BadRequest, None);
    let Some(form) = po.child("x", NS_DATA) else {
        return Ok(PublishOptions::default());
    };
    let mut out = PublishOptions::default();
    let mut form_type = None;
    for f in form
        .children
        .iter()
        .filter(|c| c.name == "field" && c.ns == NS_DATA)
    {
        let value = f.child("value", NS_DATA).map(|v| v.text.trim());
        match f.attr("var") {
            Some("FORM_TYPE") => form_type = value,
            Some("pubsub#max_items") => {
                out.max_items = match value {
                    Some("max") => Some(MaxItems::Max),
                    Some(v) => match v.parse::<usize>() {
                        Ok(n) if n > 0 => Some(MaxItems::Count(n)),
                        _ => return Err(bad),
                    },
                    None => None,
                }
            }
            Some("pubsub#access_model") => {
                out.access_model = match value {
                    Some(v) => Some(AccessModel::parse(v)?),
                    None => None,
                }
            }
            _ => {}
        }
    }
    if form_type != Some(NS_PUBLISH_OPTIONS) {
        return Err(bad);
    }
    Ok(out)
}

/// Serialises `n` (an element of a parsed tree) as XML, declaring its namespace where it
/// differs from `parent_ns`; attribute and text values escaped. The tree keeps an
/// element's character data as one string, so mixed content comes out with the text
/// before the child elements (no PEP payload in use mixes them); prefixed attributes
/// other than `xml:` ones lose their namespace declaration.
pub(super) fn write_node(n: &Node, parent_ns: &str, out: &mut String) {
    use crate::xml::{escape_attr, escape_text};
    out.push('<');
    out.push_str(&n.name);
    if n.ns != parent_ns {
        out.push_str(" xmlns='");
        out.push_str(&escape_attr(&n.ns));
        out.push('\'');
    }
    for (k, v) in &n.attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        out.push_str(&escape_attr(v));
        out.push('\'');
    }
    if n.children.is_empty() && n.text.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    out.push_str(&escape_text(&n.text));
    for c in &n.children {
        write_node(c, &n.ns, out);
    }
    out.push_str("</");
    out.push_str(&n.name);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    fn pubsub(inner: &str) -> Node {
        let iq = parse_stanza(
            format!("<iq type='set' id='1'><pubsub xmlns='{NS_PUBSUB}'>{inner}</pubsub></iq>")
                .as_bytes(),
        )
        .unwrap();
        Node::parse(&iq).unwrap().children.remove(0)
    }

    const MOOD: &str =
        "<mood xmlns='http://jabber.org/protocol/mood'><happy/><text>yay</text></mood>";

    #[test]
    fn publish_with_options() {
        let p = pubsub(&format!(
            "<publish node='http://jabber.org/protocol/mood'><item id='current'>{MOOD}</item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{NS_PUBLISH_OPTIONS}</value></field>\
             <field var='pubsub#access_model'><value>open</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x></publish-options>"
        ));
        let r = parse_request(&p, true, 1000).unwrap();
        assert_eq!(
            r,
            PepRequest::Publish {
                node: "http://jabber.org/protocol/mood".into(),
                id: Some("current".into()),
                payload: MOOD.into(),
                options: PublishOptions {
                    max_items: Some(MaxItems::Max),
                    access_model: Some(AccessModel::Open)
                },
            }
        );
    }

    /// The kind of request, or the error (condition, pubsub error name).
    type Expected = Result<&'static str, (StanzaCondition, Option<&'static str>)>;

    #[test]
    fn requests_table() {
        use StanzaCondition::*;
        // (inner xml, is_set, Ok(kind) or Err((condition, pubsub error name)))
        let table: &[(&str, bool, Expected)] = &[
            ("<publish node='n'><item>{MOOD}</item></publish>", true, Ok("publish")),
            ("<publish node='n'><item>{MOOD}</item></publish>", false, Err((BadRequest, None))),
            ("<publish><item>{MOOD}</item></publish>", true, Err((BadRequest, Some("nodeid-required")))),
            ("<publish node='n'/>", true, Err((BadRequest, Some("item-required")))),
            ("<publish node='n'><item/></publish>", true, Err((BadRequest, Some("invalid-payload")))),
            ("<publish node='n'><item>{MOOD}{MOOD}</item></publish>", true, Err((BadRequest, Some("invalid-payload")))),
            ("<publish node='n'><item>{BIG}</item></publish>", true, Err((NotAcceptable, Some("payload-too-big")))),
            ("<retract node='n'><item id='a'/></retract>", true, Ok("retract")),
            ("<retract node='n'><item/></retract>", true, Err((BadRequest, Some("item-required")))),
            ("<items node='n'/>", false, Ok("items")),
            ("<items node='n' max_items='x'/>", false, Err((BadRequest, None))),
            ("<items/>", false, Err((BadRequest, Some("nodeid-required")))),
            ("<create node='n'/>", true, Err((FeatureNotImplemented, Some("unsupported")))),
            ("<subscribe node='n' jid='a@b'/>", true, Err((FeatureNotImplemented, Some("unsupported")))),
            ("<subscriptions/>", false, Err((FeatureNotImplemented, Some("unsupported")))),
            ("", true, Err((BadRequest, None))),
            ("<items node='n'/><items node='m'/>", false, Err((BadRequest, None))),
            (
                "<publish node='n'><item>{MOOD}</item></publish><publish-options><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options>",
                true,
                Err((FeatureNotImplemented, Some("unsupported"))),
            ),
            (
                "<publish node='n'><item>{MOOD}</item></publish><publish-options><x xmlns='jabber:x:data' type='submit'>\
                 <field var='pubsub#max_items'><value>3</value></field></x></publish-options>",
                true,
                Err((BadRequest, None)),
            ),
        ];
        let big = format!("<big xmlns='x'>{}</big>", "a".repeat(200));
        for (inner, is_set, want) in table {
            let inner = inner.replace("{MOOD}", MOOD).replace("{BIG}", &big);
            let got = parse_request(&pubsub(&inner), *is_set, 100);
            match (want, got) {
                (Ok(kind), Ok(r)) => {
                    let k = match r {
                        PepRequest::Publish { .. } => "publish",
                        PepRequest::Retract { .. } => "retract",
                        PepRequest::Items { .. } => "items",
                    };
                    assert_eq!(k, *kind, "{inner}");
                }
                (Err((c, p)), Err(e)) => {
                    assert_eq!(e.condition, *c, "{inner}");
                    assert_eq!(e.pubsub.map(PubsubError::name), *p, "{inner}");
                }
                (w, g) => panic!("{inner}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn owner_namespace_is_not_implemented() {
        let iq = parse_stanza(
            format!("<iq type='set' id='1'><pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='n'/></pubsub></iq>")
                .as_bytes(),
        )
        .unwrap();
        let p = Node::parse(&iq).unwrap().children.remove(0);
        let e = parse_request(&p, true, 100).unwrap_err();
        assert_eq!(e, PepError::unsupported("config-node"));
    }

    #[test]
    fn payload_is_reserialised_with_its_namespaces() {
        let p = pubsub(
            "<publish node='urn:xmpp:avatar:metadata'><item id='abc'>\
             <metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='12' id='abc' type='image/png' width='1' height='1'/></metadata>\
             </item></publish>",
        );
        let PepRequest::Publish { payload, .. } = parse_request(&p, true, 1000).unwrap() else {
            panic!()
        };
        assert_eq!(
            payload,
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='12' id='abc' type='image/png' width='1' height='1'/></metadata>"
        );
        let p = pubsub("<publish node='n'><item><t xmlns='x' a='&apos;&lt;'>&amp;<u xmlns='y'/></t></item></publish>");
        let PepRequest::Publish { payload, .. } = parse_request(&p, true, 1000).unwrap() else {
            panic!()
        };
        assert_eq!(
            payload,
            "<t xmlns='x' a='&apos;&lt;'>&amp;<u xmlns='y'/></t>"
        );
    }
}
