//! Entity capabilities (XEP-0115): the `<c/>` a client puts in its presence
//! ([`parse_caps`]), the `disco#info` answer that says what its `ver` stands for
//! ([`parse_disco_info`]), the §5.1 verification string and its hash ([`verify`], §5.4),
//! and the nodes a client wants notifications for (`<node>+notify`, XEP-0163 §4.3.1,
//! [`notify_nodes`]).

use base64::Engine;
use sha1::Digest;

use super::{NS_CAPS, NS_DATA};
use crate::service::NS_DISCO_INFO;
use crate::xml::tree::Node;
use crate::xml::Element;

/// The XEP-0115 §4 `<c node ver hash/>` of a presence stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// The software's URI (`node`).
    pub node: String,
    /// The verification string's hash, base64 (`ver`).
    pub ver: String,
    /// The hash function (`hash`, e.g. `sha-1`).
    pub hash: String,
}

impl Caps {
    /// `node#ver`: the `node` of the `disco#info` query for this set (§6.2), and the key
    /// of the cache of answers.
    pub fn node_ver(&self) -> String {
        format!("{}#{}", self.node, self.ver)
    }
}

/// The `<c/>` of a presence stanza, if it has one with `node`, `ver` and `hash` (the
/// legacy form without `hash` is ignored, §8.2). Reads the bytes for the namespace
/// first: a presence without caps is not parsed.
pub fn parse_caps(el: &Element) -> Option<Caps> {
    static CAPS: crate::xml::Needle = crate::xml::Needle::new(NS_CAPS);
    CAPS.find_in(el.inner())?;
    let tree = Node::parse(el).ok()?;
    let c = tree.child("c", NS_CAPS)?;
    Some(Caps {
        node: c.attr("node")?.to_owned(),
        ver: c.attr("ver")?.to_owned(),
        hash: c.attr("hash")?.to_owned(),
    })
}

/// What a `disco#info` result says (XEP-0030 §3.1), as XEP-0115 §5 hashes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoInfo {
    /// `(category, type, xml:lang, name)` of each `<identity/>`.
    pub identities: Vec<(String, String, String, String)>,
    /// The `<feature var/>` values.
    pub features: Vec<String>,
    /// Each XEP-0128 extension form: its fields `(var, values)` (`FORM_TYPE` among them).
    pub forms: Vec<Vec<(String, Vec<String>)>>,
}

/// The `<query xmlns='…disco#info'/>` of an `iq` result `el`; `None` without one.
pub fn parse_disco_info(el: &Element) -> Option<DiscoInfo> {
    let tree = Node::parse(el).ok()?;
    let q = tree.child("query", NS_DISCO_INFO)?;
    let mut info = DiscoInfo::default();
    for c in &q.children {
        match (c.name.as_str(), c.ns.as_str()) {
            ("identity", NS_DISCO_INFO) => info.identities.push((
                c.attr("category").unwrap_or_default().to_owned(),
                c.attr("type").unwrap_or_default().to_owned(),
                c.attr("xml:lang").unwrap_or_default().to_owned(),
                c.attr("name").unwrap_or_default().to_owned(),
            )),
            ("feature", NS_DISCO_INFO) => {
                if let Some(v) = c.attr("var") {
                    info.features.push(v.to_owned());
                }
            }
            ("x", NS_DATA) => info.forms.push(
                c.children
                    .iter()
                    .filter(|f| f.name == "field")
                    .map(|f| {
                        let var = f.attr("var").unwrap_or_default().to_owned();
                        let values = f
                            .children
                            .iter()
                            .filter(|v| v.name == "value")
                            .map(|v| v.text.clone())
                            .collect();
                        (var, values)
                    })
                    .collect(),
            ),
            _ => {}
        }
    }
    Some(info)
}

/// The XEP-0115 §5.1 verification string of `info`: identities sorted by category, type
/// and xml:lang as `category/type/lang/name<`, features sorted as `feature<`, then each
/// extension form sorted by `FORM_TYPE` as `FORM_TYPE<` and its other fields sorted by
/// `var` as `var<value<…` (values sorted). `None` when §5.4 says the answer is invalid:
/// a duplicate identity or feature, or a form without exactly one `FORM_TYPE` value.
pub fn verification_string(info: &DiscoInfo) -> Option<String> {
    let mut ids: Vec<&(String, String, String, String)> = info.identities.iter().collect();
    ids.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    if ids
        .windows(2)
        .any(|w| (&w[0].0, &w[0].1, &w[0].2, &w[0].3) == (&w[1].0, &w[1].1, &w[1].2, &w[1].3))
    {
        return None;
    }
    let mut features: Vec<&String> = info.features.iter().collect();
    features.sort();
    if features.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut s = String::new();
    for (c, t, l, n) in ids {
        s.push_str(&format!("{c}/{t}/{l}/{n}<"));
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    let mut forms = Vec::new();
    for form in &info.forms {
        let form_type = form.iter().find(|(v, _)| v == "FORM_TYPE")?;
        let [ft] = form_type.1.as_slice() else {
            return None;
        };
        let mut fields: Vec<&(String, Vec<String>)> =
            form.iter().filter(|(v, _)| v != "FORM_TYPE").collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        forms.push((ft.clone(), fields));
    }
    forms.sort_by(|a, b| a.0.cmp(&b.0));
    for (ft, fields) in forms {
        s.push_str(&ft);
        s.push('<');
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            let mut values: Vec<&String> = values.iter().collect();
            values.sort();
            for v in values {
                s.push_str(v);
                s.push('<');
            }
        }
    }
    Some(s)
}

/// Whether `info` hashes to `caps.ver` with `caps.hash` (XEP-0115 §5.4 step 3–5;
/// `sha-1` and `sha-256` are known, other hashes fail).
pub fn verify(caps: &Caps, info: &DiscoInfo) -> bool {
    let Some(s) = verification_string(info) else {
        return false;
    };
    let digest = match caps.hash.as_str() {
        "sha-1" => sha1::Sha1::digest(s.as_bytes()).to_vec(),
        "sha-256" => sha2::Sha256::digest(s.as_bytes()).to_vec(),
        _ => return false,
    };
    base64::engine::general_purpose::STANDARD.encode(digest) == caps.ver
}

/// The nodes `features` asks notifications for: each `<node>+notify` (XEP-0163 §4.3.1).
pub fn notify_nodes(features: &[String]) -> Vec<String> {
    features
        .iter()
        .filter_map(|f| f.strip_suffix("+notify"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    /// XEP-0115 §5.2, the simple example: `QgayPKawpkPSDYmwT/WM94uAlu0=`.
    #[test]
    fn simple_example_of_section_5_2() {
        let info = DiscoInfo {
            identities: vec![(
                "client".into(),
                "pc".into(),
                "".into(),
                "Exodus 0.9.1".into(),
            )],
            features: vec![
                "http://jabber.org/protocol/disco#info".into(),
                "http://jabber.org/protocol/disco#items".into(),
                "http://jabber.org/protocol/muc".into(),
                "http://jabber.org/protocol/caps".into(),
            ],
            forms: vec![],
        };
        assert_eq!(
            verification_string(&info).unwrap(),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<"
        );
        let caps = Caps {
            node: "http://code.google.com/p/exodus".into(),
            ver: "QgayPKawpkPSDYmwT/WM94uAlu0=".into(),
            hash: "sha-1".into(),
        };
        assert!(verify(&caps, &info));
        let mut wrong = info.clone();
        wrong.features.push("urn:x+notify".into());
        assert!(!verify(&caps, &wrong));
        let mut dup = info.clone();
        dup.features.push("http://jabber.org/protocol/muc".into());
        assert_eq!(verification_string(&dup), None);
    }

    /// XEP-0115 §5.3, the complex example (identities in two languages, a form):
    /// `q07IKJEyjvHSyhy//CH0CxmKi8w=`.
    #[test]
    fn complex_example_of_section_5_3() {
        let el = parse_stanza(
            "<iq type='result' from='benvolio@capulet.lit/230193' to='juliet@capulet.lit/chamber' id='disco1'>\
             <query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field>\
             </x></query></iq>"
                .as_bytes(),
        )
        .unwrap();
        let info = parse_disco_info(&el).unwrap();
        let caps = Caps {
            node: "http://psi-im.org".into(),
            ver: "q07IKJEyjvHSyhy//CH0CxmKi8w=".into(),
            hash: "sha-1".into(),
        };
        assert!(verify(&caps, &info), "{:?}", verification_string(&info));
    }

    #[test]
    fn caps_in_presence_and_notify_filter() {
        let p = parse_stanza(
            b"<presence from='bob@b.test/phone'><show>away</show>\
              <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://app' ver='abc='/></presence>",
        )
        .unwrap();
        let c = parse_caps(&p).unwrap();
        assert_eq!(c.node_ver(), "https://app#abc=");
        let legacy = parse_stanza(
            b"<presence><c xmlns='http://jabber.org/protocol/caps' node='n' ver='1.0'/></presence>",
        )
        .unwrap();
        assert_eq!(parse_caps(&legacy), None);
        assert_eq!(parse_caps(&parse_stanza(b"<presence/>").unwrap()), None);
        let f: Vec<String> = [
            "http://jabber.org/protocol/mood",
            "http://jabber.org/protocol/mood+notify",
            "urn:xmpp:avatar:metadata+notify",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            notify_nodes(&f),
            vec![
                "http://jabber.org/protocol/mood",
                "urn:xmpp:avatar:metadata"
            ]
        );
    }
}
