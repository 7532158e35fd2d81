//! Fuzz target for JID parsing and normalisation (`fedrouter_proto::jid`, RFC 7622).
//!
//! Input: any bytes; invalid UTF-8 is replaced (`from_utf8_lossy`) so that every input is
//! a string. The string is parsed with [`Jid::new`], [`BareJid::new`], [`FullJid::new`]
//! and each part type. The target panics (a "crash") when:
//!
//! - the three parsers disagree (`BareJid::new` must accept exactly the bare results of
//!   `Jid::new`, with `UnexpectedResource` for the full ones; `FullJid::new` the full
//!   ones, with `MissingResource` for the bare ones; same error otherwise);
//! - normalisation is not idempotent: `Jid::new(j.as_str())` must be `Ok(j)` with the
//!   same string (RFC 7622 §3.1: the normalised form is a fixed point);
//! - a part is empty or longer than [`MAX_PART_LEN`] octets (§3.2.1, §3.3.1, §3.4.1);
//! - the accessors do not rebuild the string (`[node@]domain[/resource]`), or the part
//!   types do not accept each normalised part as it is;
//! - [`domain_of`] of the normalised string is not the domainpart;
//! - the localpart holds one of `" & ' / : < > @` (§3.3.1);
//! - anything panics.

#![no_main]

use fedrouter_proto::jid::{
    domain_of, BareJid, DomainPart, FullJid, Jid, JidError, NodePart, ResourcePart, MAX_PART_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let parsed = Jid::new(&raw);
    check_agreement(&raw, &parsed);
    if let Ok(jid) = &parsed {
        check_normalised(jid);
    }
    // The part types on their own, and idempotence of each.
    let node = NodePart::new(&raw);
    if let Ok(n) = &node {
        check_part(n.as_str());
        assert!(!n
            .as_str()
            .contains(['"', '&', '\'', '/', ':', '<', '>', '@']));
        assert_eq!(
            NodePart::new(n.as_str()).as_ref(),
            Ok(n),
            "localpart not idempotent"
        );
    }
    if let Ok(d) = DomainPart::new(&raw) {
        check_part(d.as_str());
        assert_eq!(
            DomainPart::new(d.as_str()).as_ref(),
            Ok(&d),
            "domainpart not idempotent"
        );
    }
    if let Ok(r) = ResourcePart::new(&raw) {
        check_part(r.as_str());
        assert_eq!(
            ResourcePart::new(r.as_str()).as_ref(),
            Ok(&r),
            "resourcepart not idempotent"
        );
    }
});

fn check_part(p: &str) {
    assert!(!p.is_empty(), "empty part");
    assert!(p.len() <= MAX_PART_LEN, "part of {} octets", p.len());
}

fn check_agreement(raw: &str, parsed: &Result<Jid, JidError>) {
    let bare = BareJid::new(raw);
    let full = FullJid::new(raw);
    match parsed {
        Ok(Jid::Bare(b)) => {
            assert_eq!(bare.as_ref(), Ok(b), "BareJid::new disagrees on {raw:?}");
            assert_eq!(
                full,
                Err(JidError::MissingResource),
                "FullJid::new on {raw:?}"
            );
        }
        Ok(Jid::Full(f)) => {
            assert_eq!(full.as_ref(), Ok(f), "FullJid::new disagrees on {raw:?}");
            assert_eq!(
                bare,
                Err(JidError::UnexpectedResource),
                "BareJid::new on {raw:?}"
            );
        }
        Err(e) => {
            // A part error is the same whichever parser met it.
            assert_eq!(bare.as_ref().err(), Some(e), "BareJid::new on {raw:?}");
            assert_eq!(full.as_ref().err(), Some(e), "FullJid::new on {raw:?}");
        }
    }
}

fn check_normalised(jid: &Jid) {
    let s = jid.as_str();
    // Idempotent: the normalised form parses to itself.
    let again = Jid::new(s).unwrap_or_else(|e| panic!("normalised {s:?} does not parse: {e}"));
    assert_eq!(&again, jid, "normalisation not idempotent");
    assert_eq!(again.as_str(), s);
    assert_eq!(jid.to_string(), s, "Display is not the normalised string");

    // Parts: non-empty, within limits, and accepted as they are by the part types.
    let domain = jid.domain();
    check_part(domain);
    assert_eq!(
        DomainPart::new(domain)
            .map(|d| d.as_str().to_owned())
            .as_deref(),
        Ok(domain)
    );
    assert_eq!(domain_of(s), domain, "domain_of disagrees on {s:?}");
    let mut rebuilt = String::new();
    if let Some(node) = jid.node() {
        check_part(node);
        assert_eq!(
            NodePart::new(node)
                .map(|n| n.as_str().to_owned())
                .as_deref(),
            Ok(node)
        );
        rebuilt.push_str(node);
        rebuilt.push('@');
    }
    rebuilt.push_str(domain);
    assert_eq!(
        jid.to_bare().as_str(),
        rebuilt,
        "to_bare is not node@domain"
    );
    assert_eq!(jid.is_bare(), jid.resource().is_none());
    assert_eq!(jid.is_full(), jid.resource().is_some());
    if let Some(resource) = jid.resource() {
        check_part(resource);
        let r = ResourcePart::new(resource).expect("normalised resourcepart");
        assert_eq!(r.as_str(), resource);
        rebuilt.push('/');
        rebuilt.push_str(resource);
        assert_eq!(jid.to_bare().with_resource(&r).as_str(), s, "with_resource");
    }
    assert_eq!(rebuilt, s, "accessors do not rebuild the JID");
}
