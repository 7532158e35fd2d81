//! Tests of [`super`] (`jid.rs`): pure, without sockets.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn jid(s: &str) -> Jid {
    Jid::new(s).unwrap_or_else(|e| panic!("{s:?} should be a valid JID: {e}"))
}

fn err(s: &str) -> JidError {
    Jid::new(s).expect_err(s)
}

fn parts(s: &str) -> (Option<String>, String, Option<String>) {
    let j = jid(s);
    (
        j.node().map(str::to_owned),
        j.domain().to_owned(),
        j.resource().map(str::to_owned),
    )
}

fn p(
    node: Option<&str>,
    domain: &str,
    res: Option<&str>,
) -> (Option<String>, String, Option<String>) {
    (node.map(Into::into), domain.into(), res.map(Into::into))
}

// RFC 7622 §3.5, examples 1 to 15.

#[test]
fn rfc7622_valid_juliet() {
    assert_eq!(
        parts("juliet@example.com"),
        p(Some("juliet"), "example.com", None)
    );
    assert!(jid("juliet@example.com").is_bare());
    assert_eq!(
        parts("juliet@example.com/foo"),
        p(Some("juliet"), "example.com", Some("foo"))
    );
    assert_eq!(
        parts("juliet@example.com/foo bar"),
        p(Some("juliet"), "example.com", Some("foo bar"))
    );
    assert_eq!(
        parts("juliet@example.com/foo@bar"),
        p(Some("juliet"), "example.com", Some("foo@bar"))
    );
}

#[test]
fn rfc7622_valid_localparts() {
    // XEP-0106 escapes are not undone: the backslash is an ordinary character.
    assert_eq!(jid("foo\\20bar@example.com").node(), Some("foo\\20bar"));
    // ß is not case-folded to ss under UsernameCaseMapped: two different JIDs.
    assert_eq!(jid("fussball@example.com").node(), Some("fussball"));
    assert_eq!(jid("fußball@example.com").node(), Some("fußball"));
    assert_ne!(jid("fussball@example.com"), jid("fußball@example.com"));
    assert_eq!(jid("π@example.com").node(), Some("π"));
    // Σ is lowercased to σ; final sigma ς stays a distinct letter.
    assert_eq!(jid("Σ@example.com/foo").as_str(), "σ@example.com/foo");
    assert_eq!(jid("Σ@example.com/foo"), jid("σ@example.com/foo"));
    assert_eq!(jid("ς@example.com/foo").node(), Some("ς"));
    assert_ne!(jid("ς@example.com/foo"), jid("σ@example.com/foo"));
    assert_eq!(jid("king@example.com/♚").resource(), Some("♚"));
}

#[test]
fn rfc7622_valid_domain_only() {
    assert_eq!(parts("example.com"), p(None, "example.com", None));
    assert_eq!(
        parts("example.com/foobar"),
        p(None, "example.com", Some("foobar"))
    );
    assert_eq!(
        parts("a.example.com/b@example.net"),
        p(None, "a.example.com", Some("b@example.net"))
    );
}

// RFC 7622 §3.6, examples 1 to 6, plus the other empty parts.

#[test]
fn rfc7622_invalid() {
    assert_eq!(err("\"juliet\"@example.com"), JidError::InvalidLocal);
    assert_eq!(err("foo bar@example.com"), JidError::InvalidLocal);
    // U+2163 ROMAN NUMERAL FOUR has a compatibility decomposition: IdentifierClass
    // disallows it (RFC 8264 §9.17), and it is not lowercased to U+2173 first.
    assert_eq!(err("henry\u{2163}@example.com"), JidError::InvalidLocal);
    assert_eq!(err("♚@example.com"), JidError::InvalidLocal);
    // Known limit: U+0D81 (Unicode 13) is unassigned in the Unicode 6.3 PRECIS tables.
    assert_eq!(err("\u{0D81}@example.com"), JidError::InvalidLocal);
    assert_eq!(err("juliet@"), JidError::EmptyDomain);
    assert_eq!(err("/foobar"), JidError::EmptyDomain);
    assert_eq!(err("@example.com"), JidError::EmptyLocal);
    assert_eq!(err("juliet@example.com/"), JidError::EmptyResource);
    assert_eq!(err(""), JidError::EmptyDomain);
    assert_eq!(err("juliet@."), JidError::EmptyDomain);
}

#[test]
fn localpart_exclusions_of_section_3_3_1() {
    for c in ['"', '&', '\'', ':', '<', '>'] {
        assert_eq!(
            err(&format!("a{c}b@example.com")),
            JidError::InvalidLocal,
            "{c}"
        );
    }
    // Full-width forms are width-mapped to the excluded ASCII characters.
    assert_eq!(err("\u{FF02}x@example.com"), JidError::InvalidLocal);
    assert_eq!(err("a\u{FF20}b@example.com"), JidError::InvalidLocal);
    // ...and to ordinary letters, which are then lowercased.
    assert_eq!(
        jid("ＪＵＬＩＥＴ@example.com").as_str(),
        "juliet@example.com"
    );
    // The first '@' ends the localpart; a second one lands in the domainpart.
    assert_eq!(err("a@b@example.com"), JidError::InvalidDomain);
}

#[test]
fn case_mapping_per_part() {
    let j = jid("Juliet@EXAMPLE.com/Balcony");
    assert_eq!(j.as_str(), "juliet@example.com/Balcony");
    assert_ne!(j, jid("juliet@example.com/balcony"));
}

#[test]
fn resource_opaque_string() {
    // Non-ASCII spaces map to U+0020; NFC composes.
    assert_eq!(jid("a@example.com/x\u{00A0}y").resource(), Some("x y"));
    assert_eq!(jid("a@example.com/e\u{0301}").resource(), Some("\u{00E9}"));
    assert_eq!(jid("a@example.com/a/b").resource(), Some("a/b"));
    assert_eq!(err("a@example.com/bell\u{7}"), JidError::InvalidResource);
    // NFC turns U+0387 into U+00B7, allowed only between two `l`: refused, not stored
    // in a form that would not parse again (jid fuzz target, 2026-12-06).
    assert_eq!(err("a@example.com/x\u{387}y"), JidError::InvalidResource);
}

#[test]
fn domain_normalisation() {
    assert_eq!(jid("EXAMPLE.com").as_str(), "example.com");
    assert_eq!(jid("juliet@EXAMPLE.COM").domain(), "example.com");
    assert_eq!(jid("Bücher.example").as_str(), "bücher.example");
    assert_eq!(jid("xn--bcher-kva.example").as_str(), "bücher.example");
    assert_eq!(jid("XN--BCHER-KVA.example"), jid("bücher.example"));
    assert_eq!(jid("ß.de").domain(), "ß.de");
    // `--` in the third and fourth position is allowed (see "Known limits").
    assert_eq!(jid("ab--cd.example").as_str(), "ab--cd.example");
    // U+3002 IDEOGRAPHIC FULL STOP is a label separator under UTS #46.
    assert_eq!(jid("example\u{3002}com").as_str(), "example.com");
}

#[test]
fn domain_trailing_dot() {
    assert_eq!(jid("example.com.").as_str(), "example.com");
    assert_eq!(jid("example.com."), jid("example.com"));
    assert_eq!(
        jid("juliet@example.com./foo").as_str(),
        "juliet@example.com/foo"
    );
    // Only one dot is stripped (RFC 7622 §3.2).
    assert_eq!(err("example.com.."), JidError::InvalidDomain);
    assert_eq!(err("."), JidError::EmptyDomain);
}

/// The `jid` fuzz target's finding 8 (`tests/fuzz/seeds/jid/finding-8-u-label-hyphens`).
const FINDING_8: &str = concat!(
    "xn--xn--XXXessosuesaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaxn--xn--XXXessaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaeaaaaaae"
);

#[test]
fn domain_invalid() {
    for d in [
        "a..b",
        ".example.com",
        "a_b.example",
        "-a.example",
        "a-.example",
        "exa mple.com",
        "♥.example",
        "♚.example",
        "xn--a.example",
        // Decodes to a U-label with `--` in positions 3-4 (RFC 5891 §4.2.3.1), which
        // would not parse again once normalised (fuzz finding 8).
        FINDING_8,
        "[::1",
        "::1",
        "[fe80::1%eth0]",
        "[1.2.3.4]",
    ] {
        assert_eq!(err(d), JidError::InvalidDomain, "{d:?}");
    }
}

#[test]
fn ip_literals() {
    assert_eq!(jid("juliet@192.0.2.1/x").domain(), "192.0.2.1");
    assert_eq!(jid("192.0.2.1.").as_str(), "192.0.2.1");
    assert_eq!(jid("[2001:DB8:0::1]").as_str(), "[2001:db8::1]");
    assert_eq!(jid("juliet@[::1]/r").domain(), "[::1]");
    assert_eq!(jid("juliet@[::1]/r").resource(), Some("r"));
}

#[test]
fn length_limits() {
    let max = "a".repeat(MAX_PART_LEN);
    let over = "a".repeat(MAX_PART_LEN + 1);
    assert_eq!(jid(&format!("{max}@example.com")).node(), Some(&*max));
    assert_eq!(err(&format!("{over}@example.com")), JidError::LocalTooLong);
    assert_eq!(jid(&format!("a@example.com/{max}")).resource(), Some(&*max));
    assert_eq!(
        err(&format!("a@example.com/{over}")),
        JidError::ResourceTooLong
    );
    // Limits apply after normalisation: full-width letters take 3 octets raw, 1 after.
    let wide = "Ａ".repeat(MAX_PART_LEN);
    assert_eq!(jid(&format!("{wide}@example.com")).node(), Some(&*max));
    // Far too long: rejected before any normalisation.
    let huge = "a".repeat(10 * MAX_PART_LEN);
    assert_eq!(err(&format!("{huge}@example.com")), JidError::LocalTooLong);
    assert_eq!(
        err(&format!("a@example.com/{huge}")),
        JidError::ResourceTooLong
    );
    assert_eq!(err(&huge), JidError::DomainTooLong);

    // 16 labels of 63 octets plus 15 dots = 1023 octets.
    let label = "a".repeat(63);
    let domain = vec![label.as_str(); 16].join(".");
    assert_eq!(domain.len(), MAX_PART_LEN);
    assert_eq!(jid(&domain).domain(), domain);
    assert_eq!(jid(&format!("{domain}.")).domain(), domain);
    assert_eq!(err(&format!("b{domain}")), JidError::DomainTooLong);
}

#[test]
fn typed_constructors_and_accessors() {
    let full = FullJid::new("Juliet@Example.com/balcony").unwrap();
    assert_eq!(full.node(), Some("juliet"));
    assert_eq!(full.domain(), "example.com");
    assert_eq!(full.resource(), "balcony");
    let bare = full.to_bare();
    assert_eq!(bare.as_str(), "juliet@example.com");
    assert_eq!(bare.node(), Some("juliet"));
    assert_eq!(bare.domain(), "example.com");

    let garden = ResourcePart::new("garden").unwrap();
    assert_eq!(
        bare.with_resource(&garden).as_str(),
        "juliet@example.com/garden"
    );
    assert_eq!(
        full.with_resource(&garden).as_str(),
        "juliet@example.com/garden"
    );
    assert_eq!(
        bare.with_resource_str("x\u{2003}y").unwrap().resource(),
        "x y"
    );
    assert_eq!(bare.with_resource_str(""), Err(JidError::EmptyResource));

    assert_eq!(
        BareJid::new("a@b.example/c"),
        Err(JidError::UnexpectedResource)
    );
    assert_eq!(FullJid::new("a@b.example"), Err(JidError::MissingResource));
    assert_eq!(BareJid::new("@b.example"), Err(JidError::EmptyLocal));

    let server = BareJid::new("Example.COM").unwrap();
    assert_eq!(server.node(), None);
    assert_eq!(server.domain(), "example.com");

    let node = NodePart::new("Σ").unwrap();
    let domain = DomainPart::new("EXAMPLE.com.").unwrap();
    assert_eq!(node.as_str(), "σ");
    assert_eq!(domain.as_str(), "example.com");
    assert_eq!(
        FullJid::from_parts(Some(&node), &domain, &garden).as_str(),
        "σ@example.com/garden"
    );
    assert_eq!(BareJid::from_parts(None, &domain).as_str(), "example.com");
    assert_eq!(NodePart::new("a b"), Err(JidError::InvalidLocal));

    let j: Jid = "juliet@example.com/balcony".parse().unwrap();
    assert!(!j.is_bare());
    assert!(j.is_full());
    assert_eq!(j, full);
    assert_eq!(j.to_bare(), bare);
    assert_eq!(j.with_resource(&garden).resource(), "garden");
    assert_eq!(j.clone().into_bare(), bare);
    assert_eq!(j.try_into_full(), Ok(full.clone()));
    assert_eq!(Jid::from(bare.clone()), bare);
    assert_eq!(Jid::from(bare.clone()).try_into_full(), Err(bare.clone()));
    assert_eq!(Jid::from(bare.clone()).resource(), None);
}

#[test]
fn display_debug_and_hash() {
    let j = jid("Juliet@EXAMPLE.com/Balcony");
    assert_eq!(j.to_string(), "juliet@example.com/Balcony");
    assert_eq!(format!("{j:?}"), "Jid(\"juliet@example.com/Balcony\")");
    assert_eq!(
        format!("{:?}", j.to_bare()),
        "BareJid(\"juliet@example.com\")"
    );
    assert_eq!(
        format!("{:?}", NodePart::new("A").unwrap()),
        "NodePart(\"a\")"
    );

    let set: HashSet<Jid> = [
        "juliet@example.com",
        "JULIET@Example.COM.",
        "juliet@example.com/r",
    ]
    .into_iter()
    .map(jid)
    .collect();
    assert_eq!(set.len(), 2);

    let mut sorted = vec![jid("b.example"), jid("a.example/r"), jid("a.example")];
    sorted.sort();
    assert_eq!(
        sorted,
        vec![jid("a.example"), jid("a.example/r"), jid("b.example")]
    );
}

#[test]
fn domain_of_shapes() {
    assert_eq!(domain_of("juliet@example.com"), "example.com");
    assert_eq!(domain_of("juliet@example.com/foo@bar"), "example.com");
    assert_eq!(domain_of("example.com/a@b"), "example.com");
    assert_eq!(domain_of("example.com"), "example.com");
    assert_eq!(domain_of("EXAMPLE.com."), "EXAMPLE.com");
    assert_eq!(domain_of("a@b@c/d"), "b@c");
    assert_eq!(domain_of("juliet@"), "");
    assert_eq!(domain_of(""), "");
    assert_eq!(domain_of("/foo"), "");
}

proptest! {
    /// Normalisation is idempotent: the normalised form parses back to itself, and
    /// `domain_of` on it agrees with the parsed domainpart.
    #[test]
    fn normalised_form_is_stable(
        node in proptest::option::of("[a-zA-Zß0-9ΣσςπÄäé\u{FF21}-\u{FF3A}\\\\._-]{1,12}"),
        domain in "[a-zA-Z0-9Üü]{1,10}(\\.[a-zA-Zäöü-]{1,8}){0,3}\\.?",
        resource in proptest::option::of("\\PC{1,16}"),
    ) {
        let mut raw = String::new();
        if let Some(node) = &node {
            raw.push_str(node);
            raw.push('@');
        }
        raw.push_str(&domain);
        if let Some(resource) = &resource {
            raw.push('/');
            raw.push_str(resource);
        }
        if let Ok(j) = Jid::new(&raw) {
            let again = Jid::new(j.as_str()).expect("normalised form must parse");
            prop_assert_eq!(&again, &j);
            prop_assert_eq!(again.as_str(), j.as_str());
            prop_assert_eq!(domain_of(j.as_str()), j.domain());
            prop_assert_eq!(j.resource().is_some(), resource.is_some());
        }
    }

    /// Parsing never panics, whatever the input.
    #[test]
    fn parse_never_panics(raw in "\\PC{0,40}") {
        let _ = Jid::new(&raw);
    }
}
