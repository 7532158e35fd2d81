//! XEP-0092 Software Version (`jabber:iq:version`): what the server answers about itself.
//!
//! Pure: the runtime hands in [`Software`] (the binary's name and version, an operating
//! system only if configured) and [`crate::service::answer_server`] answers a version
//! query to a local domain with [`result`].

use crate::xml::tree::Node;
use crate::xml::{escape_text_into, Element, ElementBuilder};

/// `jabber:iq:version` (XEP-0092 §2).
pub const NS_VERSION: &str = "jabber:iq:version";

/// What the server says about itself (XEP-0092 §2: `name`, `version`, optional `os`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Software {
    /// `<name/>`, e.g. `fedrouter`.
    pub name: String,
    /// `<version/>`, e.g. the crate's `CARGO_PKG_VERSION`.
    pub version: String,
    /// `<os/>`: left out when `None` (XEP-0092 §4 warns it helps attackers).
    pub os: Option<String>,
}

/// Whether `payload` (of an `iq get`) is a version query.
pub fn is_query(payload: &Node) -> bool {
    payload.name == "query" && payload.ns == NS_VERSION
}

/// The answer to the version query `el` (XEP-0092 §2, Example 2): `<iq type='result'
/// from='(el's to)' to='(el's from)' id='(el's id)'><query xmlns='jabber:iq:version'>
/// <name>…</name><version>…</version>[<os>…</os>]</query></iq>`, text escaped.
pub fn result(el: &Element, sw: &Software) -> Element {
    ElementBuilder::with_capacity("iq", 200 + sw.name.len() + sw.version.len())
        .attr("type", "result")
        .raw_attr_opt("from", el.to())
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
        .child_with(|out| {
            out.extend_from_slice(b"<query xmlns='jabber:iq:version'><name>");
            escape_text_into(&sw.name, out);
            out.extend_from_slice(b"</name><version>");
            escape_text_into(&sw.version, out);
            out.extend_from_slice(b"</version>");
            if let Some(os) = &sw.os {
                out.extend_from_slice(b"<os>");
                escape_text_into(os, out);
                out.extend_from_slice(b"</os>");
            }
            out.extend_from_slice(b"</query>");
        })
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    #[test]
    fn answers_name_and_version_and_os_only_if_given() {
        let q = parse_stanza(
            b"<iq type='get' from='a@x/r' to='x' id='v1'><query xmlns='jabber:iq:version'/></iq>",
        )
        .unwrap();
        let mut sw = Software {
            name: "fedrouter".into(),
            version: "0.1.0".into(),
            os: None,
        };
        let r = result(&q, &sw);
        assert_eq!(
            r.as_str(),
            "<iq type='result' from='x' to='a@x/r' id='v1'><query xmlns='jabber:iq:version'>\
             <name>fedrouter</name><version>0.1.0</version></query></iq>"
        );
        sw.os = Some("Linux <6>".into());
        let r = result(&q, &sw);
        assert!(
            r.as_str().contains("<os>Linux &lt;6&gt;</os>"),
            "{}",
            r.as_str()
        );
        assert_eq!(parse_stanza(r.bytes()).unwrap(), r);
    }
}
