//! A small element tree over `quick-xml`'s namespace-resolving reader: what the XEP-0227
//! reader walks. Whole files are read into memory (one host's users at a time for
//! ejabberd, one user per file for Prosody).
//!
//! Refused: a DTD (`<!DOCTYPE`), an entity other than the five predefined ones and
//! character references, an unbound prefix, nesting deeper than [`MAX_DEPTH`]. Comments,
//! processing instructions and the XML declaration are skipped.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::PieError;

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 256;

/// An element: its namespace, local name, attributes, child elements and text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Namespace name (empty when none).
    pub ns: String,
    /// Local name.
    pub name: String,
    /// Attributes `(namespace, local name, value)`; the namespace of an unprefixed
    /// attribute is empty (XML Namespaces §6.2). `xmlns` declarations are left out.
    pub attrs: Vec<(String, String, String)>,
    /// Child elements, in order.
    pub children: Vec<Element>,
    /// The element's own character data (its text children concatenated).
    pub text: String,
}

impl Element {
    /// The value of unprefixed attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(ns, n, _)| ns.is_empty() && n == name)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether this is `{ns}name`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The first child `{ns}name`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(name, ns))
    }

    /// `{ns}name` for messages.
    pub fn qname(&self) -> String {
        format!("{{{}}}{}", self.ns, self.name)
    }
}

fn ns_of(r: ResolveResult<'_>, offset: u64) -> Result<String, PieError> {
    match r {
        ResolveResult::Bound(ns) => Ok(AsRef::<str>::as_ref(&ns).to_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(PieError::Xml {
            offset,
            reason: format!("unbound namespace prefix {p:?}"),
        }),
    }
}

/// Parses `text` (a whole document) into its root element.
///
/// Errors: [`PieError::Xml`] with the byte offset.
pub fn parse(text: &str) -> Result<Element, PieError> {
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let xml_err = |offset: u64, e: &dyn std::fmt::Display| PieError::Xml {
        offset,
        reason: e.to_string(),
    };
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let offset = reader.buffer_position();
        let (res, ev) = reader
            .read_resolved_event()
            .map_err(|e| xml_err(offset, &e))?;
        let (start, empty) = match &ev {
            Event::Start(e) => (Some(e), false),
            Event::Empty(e) => (Some(e), true),
            _ => (None, false),
        };
        if let Some(e) = start {
            if root.is_some() {
                return Err(xml_err(offset, &"content after the root element"));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(xml_err(offset, &format!("nested deeper than {MAX_DEPTH}")));
            }
            let mut el = Element {
                ns: ns_of(res, offset)?,
                name: AsRef::<str>::as_ref(&e.local_name()).to_owned(),
                ..Element::default()
            };
            for a in e.attributes() {
                let a = a.map_err(|err| xml_err(offset, &err))?;
                let key = a.key;
                let k: &str = key.as_ref();
                if k == "xmlns" || k.starts_with("xmlns:") {
                    continue;
                }
                let (ans, local) = reader.resolver().resolve_attribute(key);
                let ans = ns_of(ans, offset)?;
                let value = a
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|err| xml_err(offset, &err))?
                    .into_owned();
                el.attrs
                    .push((ans, AsRef::<str>::as_ref(&local).to_owned(), value));
            }
            if empty {
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            } else {
                stack.push(el);
            }
            continue;
        }
        match ev {
            Event::End(_) => {
                let el = stack.pop().expect("check_end_names pairs every end");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                } else if !t.xml10_content().trim().is_empty() {
                    return Err(xml_err(offset, &"text outside the root element"));
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let name = r.xml10_content();
                let resolved = quick_xml::escape::unescape(&format!("&{name};"))
                    .map_err(|e| xml_err(offset, &e))?
                    .into_owned();
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => {
                return Err(xml_err(offset, &"a DTD (<!DOCTYPE>) is not accepted"));
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Start(_) | Event::Empty(_) => unreachable!("handled above"),
        }
    }
    if !stack.is_empty() {
        return Err(xml_err(
            reader.buffer_position(),
            &format!(
                "<{}> is not closed",
                stack.last().map(|e| e.name.as_str()).unwrap_or("")
            ),
        ));
    }
    root.ok_or_else(|| xml_err(0, &"no root element"))
}
