//! A small owned tree of one element, for negotiation nonzas (stream features, SASL,
//! stream errors, disco) whose children must be inspected. Stanzas on the hot path are
//! never turned into trees: they are routed by the framer's routing view.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::{unescape, Element, XmlError};

/// An element with its namespace, attributes (unescaped, keyed by qualified name as
/// written), children and concatenated character data (unescaped).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Local name.
    pub name: String,
    /// Resolved namespace name; for the root, the framer's resolution.
    pub ns: String,
    /// Attributes other than namespace declarations.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Node>,
    /// Character data directly inside this element.
    pub text: String,
}

impl Node {
    /// Builds the tree of `el`. Prefixes declared on the stream header resolve for the
    /// root (through the framer); below it, elements carry their own `xmlns`, as every
    /// XMPP nonza does.
    ///
    /// Errors: [`XmlError::NotWellFormed`] should the bytes not parse (they were already
    /// checked by the framer, so this does not happen for framer output).
    pub fn parse(el: &Element) -> Result<Node, XmlError> {
        const BAD: XmlError = XmlError::NotWellFormed("malformed element");
        let mut reader = NsReader::from_reader(el.bytes().as_ref());
        reader.config_mut().expand_empty_elements = true;
        let mut stack: Vec<Node> = Vec::new();
        loop {
            let (res, ev) = reader.read_resolved_event().map_err(|_| BAD)?;
            match ev {
                Event::Start(e) => {
                    let ns = match res {
                        ResolveResult::Bound(n) => n.into_inner().to_owned(),
                        _ if stack.is_empty() => {
                            String::from_utf8_lossy(el.namespace().as_bytes()).into_owned()
                        }
                        _ => String::new(),
                    };
                    let mut node = Node {
                        name: String::from_utf8_lossy(e.local_name().into_inner().as_bytes())
                            .into_owned(),
                        ns,
                        ..Node::default()
                    };
                    if stack.is_empty() {
                        node.ns = String::from_utf8_lossy(el.namespace().as_bytes()).into_owned();
                    }
                    for a in e.attributes().with_checks(false) {
                        let a = a.map_err(|_| BAD)?;
                        let key = a.key.into_inner();
                        if key == "xmlns" || key.starts_with("xmlns:") {
                            continue;
                        }
                        node.attrs
                            .push((key.to_owned(), unescape(&a.value)?.into_owned()));
                    }
                    stack.push(node);
                }
                Event::End(_) => {
                    let node = stack.pop().ok_or(BAD)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => return Ok(node),
                    }
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t);
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&unescape(&format!("&{};", &*r))?);
                    }
                }
                Event::CData(c) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&c);
                    }
                }
                Event::Eof => return Err(BAD),
                _ => {}
            }
        }
    }

    /// The first child named `name` in namespace `ns`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name && c.ns == ns)
    }

    /// The value of attribute `name` (qualified name as written, e.g. `"xml:lang"`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Frame, Framer};

    #[test]
    fn features_tree() {
        let mut f = Framer::default();
        f.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
            <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
            <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>\
            <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
        let Ok(Some(Frame::Element(e))) = f.next_frame() else {
            panic!()
        };
        let n = Node::parse(&e).unwrap();
        assert_eq!(
            (n.name.as_str(), n.ns.as_str()),
            ("features", crate::xml::ns::STREAMS)
        );
        let tls = n.child("starttls", crate::xml::ns::TLS).unwrap();
        assert!(tls.child("required", crate::xml::ns::TLS).is_some());
        let mechs = n.child("mechanisms", crate::xml::ns::SASL).unwrap();
        assert_eq!(mechs.children[0].text, "EXTERNAL");
        assert!(n
            .child("dialback", crate::xml::ns::DIALBACK_FEATURE)
            .is_some());
    }
}
