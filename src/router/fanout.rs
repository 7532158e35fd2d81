//! Presence fan-out (RFC 6121 §4.2.2, §4.4.2, §4.5.2): one stanza for many recipients.
//!
//! A presence broadcast goes to every contact with a `from` or `both` subscription,
//! possibly thousands, on many shards and remote domains. The stanza is stamped and
//! serialised once, without a `to` attribute, into a [`SharedStanza`]: a refcounted view
//! every recipient shares. A recipient then costs only its own ` to='…'` attribute, written
//! when its copy is queued on a stream ([`SharedStanza::parts`]): the body is never copied
//! per recipient before the stream's own transmit buffer.
//!
//! [`plan`] groups the recipients by owner shard (local users by bare JID, remote ones by
//! domain, [`super::shard_of`]) and, within a shard, by domain, so each destination shard
//! gets one message and each remote domain's queue is visited once.

use bytes::Bytes;

use super::{bare_key, domain_key, shard_of};
use crate::jid::domain_of;
use crate::xml::escape_attr_into;
use crate::xml::{parse_stanza, Element, XmlError};

/// A stanza without `to`, shared by all the recipients of a broadcast.
///
/// Cloning is a refcount increment. `Send`: it crosses shards inside
/// [`crate::runtime`]'s messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStanza {
    el: Element,
}

impl SharedStanza {
    /// Wraps `el`, which must carry no `to` attribute (else the recipients' copies would
    /// hold two).
    ///
    /// Errors: `Err(el)` back when `el` has a `to`.
    #[allow(clippy::result_large_err)]
    pub fn new(el: Element) -> Result<SharedStanza, Element> {
        if el.has_to_attribute() {
            return Err(el);
        }
        Ok(SharedStanza { el })
    }

    /// Serialises a stanza written without `to` (e.g. `<presence from='a@b/c'>…`).
    ///
    /// Errors: the framer's error when `bytes` is not one well-formed element, or
    /// [`XmlError::NotWellFormed`] when it has a `to`.
    pub fn parse(bytes: &[u8]) -> Result<SharedStanza, XmlError> {
        SharedStanza::new(parse_stanza(bytes)?)
            .map_err(|_| XmlError::NotWellFormed("a shared stanza has no 'to'"))
    }

    /// The stanza as shared (no `to`).
    pub fn element(&self) -> &Element {
        &self.el
    }

    /// Its `from` attribute.
    pub fn from(&self) -> Option<&str> {
        self.el.from()
    }

    /// Its bytes (no `to`).
    pub fn bytes(&self) -> &Bytes {
        self.el.bytes()
    }

    /// The three slices of one recipient's copy: the bytes up to the element name, the
    /// recipient's ` to='…'` attribute (`to_attr`, from [`write_to_attr`]), the rest.
    /// Writing them in order yields the stanza addressed to that recipient.
    pub fn parts<'a>(&'a self, to_attr: &'a [u8]) -> [&'a [u8]; 3] {
        let b = self.el.bytes();
        let at = self.el.qname_end();
        [&b[..at], to_attr, &b[at..]]
    }

    /// One recipient's copy as a whole [`Element`] (one copy of the body): for the rare
    /// paths that need the element itself, such as a bounce.
    ///
    /// Errors: as [`parse_stanza`] (cannot happen for a valid `to`).
    pub fn to_element(&self, to: &str) -> Result<Element, XmlError> {
        let mut attr = Vec::with_capacity(8 + to.len());
        write_to_attr(to, &mut attr);
        let mut out = Vec::with_capacity(self.el.bytes().len() + attr.len());
        for p in self.parts(&attr) {
            out.extend_from_slice(p);
        }
        parse_stanza(&out)
    }
}

/// Appends ` to='TO'` (escaped for a `'`-quoted attribute) to `out`: the only bytes written
/// anew per recipient of a [`SharedStanza`].
pub fn write_to_attr(to: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b" to='");
    escape_attr_into(to, out);
    out.push(b'\'');
}

/// Recipients grouped by destination: `(shard, recipients)` with each shard once, in
/// shard order, and each shard's recipients sorted by domain (then JID), so that one
/// remote domain's recipients are adjacent.
pub type Plan = Vec<(usize, Vec<Box<str>>)>;

/// Groups `recipients` (bare JIDs) by the shard that owns them among `shards`: a local
/// user's shard is `shard_of(bare_key(jid))`, a remote contact's is
/// `shard_of(domain_key(domain))`; `is_local(domain)` tells which domains are hosted here.
/// Duplicates are removed.
pub fn plan<'a>(
    recipients: impl IntoIterator<Item = &'a str>,
    shards: usize,
    is_local: impl Fn(&str) -> bool,
) -> Plan {
    // Sort keys borrow the recipients (a domain is copied only when it needs folding).
    let mut keyed: Vec<(usize, std::borrow::Cow<'a, str>, &'a str)> = recipients
        .into_iter()
        .map(|jid| {
            let domain = domain_key(domain_of(jid));
            let shard = if is_local(&domain) {
                shard_of(&bare_key(jid), shards)
            } else {
                shard_of(&domain, shards)
            };
            (shard, domain, jid)
        })
        .collect();
    keyed.sort_unstable();
    keyed.dedup();
    let mut out: Plan = Vec::new();
    for (shard, _, jid) in keyed {
        let jid = Box::<str>::from(jid);
        match out.last_mut() {
            Some((s, v)) if *s == shard => v.push(jid),
            _ => out.push((shard, vec![jid])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_address_each_copy() {
        let s =
            SharedStanza::parse(b"<presence from='a@x/r'><show>away</show></presence>").unwrap();
        let mut attr = Vec::new();
        write_to_attr("b@y", &mut attr);
        let whole: Vec<u8> = s.parts(&attr).concat();
        assert_eq!(
            whole,
            b"<presence to='b@y' from='a@x/r'><show>away</show></presence>"
        );
        let el = s.to_element("c@z").unwrap();
        assert_eq!(el.to(), Some("c@z"));
        assert_eq!(el.from(), Some("a@x/r"));
    }

    #[test]
    fn refuses_a_stanza_with_to() {
        assert!(SharedStanza::parse(b"<presence to='b@y'/>").is_err());
    }

    #[test]
    fn plan_groups_by_shard_and_domain() {
        let recipients = [
            "b@r1.test",
            "a@r1.test",
            "c@r2.test",
            "a@r1.test",
            "u@local.test",
        ];
        let p = plan(recipients, 4, |d| d == "local.test");
        let total: usize = p.iter().map(|(_, v)| v.len()).sum();
        assert_eq!(total, 4, "duplicates removed: {p:?}");
        let mut shards: Vec<usize> = p.iter().map(|(s, _)| *s).collect();
        shards.dedup();
        assert_eq!(shards.len(), p.len(), "each shard once: {p:?}");
        for (s, v) in &p {
            for jid in v {
                let d = domain_of(jid);
                let want = if d == "local.test" {
                    shard_of(&bare_key(jid), 4)
                } else {
                    shard_of(d, 4)
                };
                assert_eq!(*s, want, "{jid}");
            }
            let domains: Vec<&str> = v.iter().map(|j| domain_of(j)).collect();
            let mut sorted = domains.clone();
            sorted.sort();
            assert_eq!(domains, sorted, "domains adjacent within a shard");
        }
    }
}
