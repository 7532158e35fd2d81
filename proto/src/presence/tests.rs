//! Tests of [`super`] (`presence.rs`): pure, without sockets.

use super::*;
use crate::xml::parse_stanza;

/// The `<query/>` child of a parsed `<iq/>`.
fn query(iq_body: &str) -> Node {
    let el = parse_stanza(format!("<iq type='set' id='r1'>{iq_body}</iq>").as_bytes())
        .expect("well-formed test stanza");
    let iq = Node::parse(&el).expect("tree");
    iq.children.into_iter().next().expect("query child")
}

fn set(item: &str) -> Result<RosterSet, RosterError> {
    parse_roster_set(
        &query(&format!("<query xmlns='jabber:iq:roster'>{item}</query>")),
        &RosterLimits::default(),
    )
}

#[test]
fn item_minimal_is_empty_element() {
    let item = RosterItem::new("juliet@example.com");
    assert_eq!(
        item.to_xml(),
        "<item jid='juliet@example.com' subscription='none'/>"
    );
}

#[test]
fn item_full_with_ask_and_groups() {
    let item = RosterItem {
        jid: "romeo@example.net".into(),
        name: Some("Romeo".into()),
        groups: vec!["Friends".into(), "Lovers".into()],
        state: SubState::FROM_PENDING_OUT,
    };
    assert_eq!(
        item.to_xml(),
        "<item jid='romeo@example.net' name='Romeo' subscription='from' ask='subscribe'>\
         <group>Friends</group><group>Lovers</group></item>"
    );
}

#[test]
fn item_pending_in_is_not_visible_and_approved_is() {
    let item = RosterItem {
        state: SubState::TO_PENDING_IN,
        ..RosterItem::new("a@b")
    };
    assert_eq!(item.to_xml(), "<item jid='a@b' subscription='to'/>");
    let item = RosterItem {
        state: SubState::NONE_PENDING_OUT.pre_approved(),
        ..RosterItem::new("a@b")
    };
    assert_eq!(
        item.to_xml(),
        "<item jid='a@b' subscription='none' ask='subscribe' approved='true'/>"
    );
}

#[test]
fn item_escapes_attributes_and_text() {
    let item = RosterItem {
        jid: "a@b".into(),
        name: Some("O'Neil & <Co> \"x\"".into()),
        groups: vec!["R&D <lab>".into()],
        state: SubState::BOTH,
    };
    let xml = item.to_xml();
    assert_eq!(
        xml,
        "<item jid='a@b' name='O&apos;Neil &amp; &lt;Co&gt; &quot;x&quot;' \
         subscription='both'><group>R&amp;D &lt;lab&gt;</group></item>"
    );
    // What we write parses back to the same item.
    let back = query(&format!("<query xmlns='jabber:iq:roster'>{xml}</query>"));
    assert_eq!(
        parse_roster_items(&back).unwrap(),
        vec![RosterEntry::Item(item)]
    );
}

#[test]
fn query_and_removal_serialisation() {
    let mut out = Vec::new();
    write_query(&[] as &[RosterItem], Some("v1"), &mut out);
    assert_eq!(out, b"<query xmlns='jabber:iq:roster' ver='v1'/>");
    let items = [RosterItem::new("a@b"), RosterItem::new("c@d")];
    let mut out = Vec::new();
    write_query(&items, None, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<query xmlns='jabber:iq:roster'><item jid='a@b' subscription='none'/>\
         <item jid='c@d' subscription='none'/></query>"
    );
    let mut out = Vec::new();
    write_removed_item("a'b@c", &mut out);
    assert_eq!(out, b"<item jid='a&apos;b@c' subscription='remove'/>");
}

#[test]
fn roster_set_update_normalises_and_ignores_state_attributes() {
    let got = set(
        "<item jid='Juliet@Example.COM' name='J' subscription='both' \
                   ask='subscribe' approved='true'><group>Friends</group></item>",
    )
    .unwrap();
    assert_eq!(
        got,
        RosterSet::Update {
            jid: "juliet@example.com".into(),
            name: Some("J".into()),
            groups: vec!["Friends".into()],
        }
    );
    let item = got.into_item(SubState::TO).unwrap();
    assert_eq!(item.state, SubState::TO);
    assert_eq!(
        set("<item jid='a@b' name=''/>").unwrap(),
        RosterSet::Update {
            jid: "a@b".into(),
            name: None,
            groups: vec![]
        }
    );
}

#[test]
fn roster_set_remove() {
    let got = set("<item jid='a@b' subscription='remove'><group>x</group></item>").unwrap();
    assert_eq!(got, RosterSet::Remove { jid: "a@b".into() });
    assert_eq!(got.jid(), "a@b");
    assert_eq!(got.into_item(SubState::BOTH), None);
}

#[test]
fn roster_set_errors_map_to_rfc_conditions() {
    use StanzaCondition::*;
    let cases: &[(&str, RosterError, StanzaCondition)] = &[
        ("", RosterError::ItemCount(0), BadRequest),
        (
            "<item jid='a@b'/><item jid='c@d'/>",
            RosterError::ItemCount(2),
            BadRequest,
        ),
        ("<item name='x'/>", RosterError::MissingJid, BadRequest),
        ("<item jid='@b'/>", RosterError::MalformedJid, BadRequest),
        (
            "<item jid='a@b/res'/>",
            RosterError::MalformedJid,
            BadRequest,
        ),
        (
            "<item jid='a@b'><group>x</group><group>x</group></item>",
            RosterError::DuplicateGroup("x".into()),
            BadRequest,
        ),
        (
            "<item jid='a@b'><group></group></item>",
            RosterError::EmptyGroup,
            NotAcceptable,
        ),
    ];
    for (body, err, cond) in cases {
        let got = set(body).unwrap_err();
        assert_eq!(&got, err, "{body}");
        assert_eq!(got.condition(), *cond, "{body}");
    }
    let q = query("<query xmlns='jabber:iq:private'><item jid='a@b'/></query>");
    assert_eq!(
        parse_roster_set(&q, &RosterLimits::default()),
        Err(RosterError::NotRosterQuery)
    );
}

#[test]
fn roster_set_limits() {
    let limits = RosterLimits {
        max_name_bytes: 4,
        max_group_bytes: 3,
        max_groups: 2,
    };
    let run = |item: &str| {
        parse_roster_set(
            &query(&format!("<query xmlns='jabber:iq:roster'>{item}</query>")),
            &limits,
        )
    };
    assert!(run("<item jid='a@b' name='abcd'><group>abc</group><group>d</group></item>").is_ok());
    assert_eq!(
        run("<item jid='a@b' name='abcde'/>"),
        Err(RosterError::NameTooLong(5))
    );
    // Length is in bytes: "éé" is 4 bytes.
    assert_eq!(
        run("<item jid='a@b'><group>éé</group></item>"),
        Err(RosterError::GroupTooLong(4))
    );
    let err =
        run("<item jid='a@b'><group>a</group><group>b</group><group>c</group></item>").unwrap_err();
    assert_eq!(err, RosterError::TooManyGroups(3));
    assert_eq!(err.condition(), StanzaCondition::NotAcceptable);
}

#[test]
fn roster_result_parsing() {
    let q = query(
        "<query xmlns='jabber:iq:roster' ver='3'>\
         <item jid='a@b' subscription='to' ask='subscribe' approved='true'/>\
         <item jid='c@d' subscription='weird' name='C'><group>g</group></item>\
         <item jid='e@f' subscription='remove'/>\
         <other xmlns='urn:x'/></query>",
    );
    let got = parse_roster_items(&q).unwrap();
    assert_eq!(
        got,
        vec![
            // `ask` cannot hold with `to` and folds away; `approved` stays.
            RosterEntry::Item(RosterItem {
                state: SubState::TO.pre_approved(),
                ..RosterItem::new("a@b")
            }),
            RosterEntry::Item(RosterItem {
                name: Some("C".into()),
                groups: vec!["g".into()],
                ..RosterItem::new("c@d")
            }),
            RosterEntry::Removed("e@f".into()),
        ]
    );
    // `approved` with `from` folds away too.
    let q = query(
        "<query xmlns='jabber:iq:roster'><item jid='a@b' subscription='both' approved='1'/></query>",
    );
    assert_eq!(
        parse_roster_items(&q).unwrap(),
        vec![RosterEntry::Item(RosterItem {
            state: SubState::BOTH,
            ..RosterItem::new("a@b")
        })]
    );
}

#[test]
fn actions_capacity_is_enough() {
    for s in SubState::ALL
        .into_iter()
        .chain([SubState::NONE, SubState::NONE_PENDING_OUT, SubState::TO].map(|s| s.pre_approved()))
    {
        for t in SubType::ALL {
            assert!(outbound(s, t).actions.len() <= Actions::CAPACITY);
            assert!(inbound(s, t).actions.len() <= Actions::CAPACITY);
        }
        assert!(remove(s).actions.len() <= Actions::CAPACITY);
    }
    assert_eq!(remove(SubState::BOTH).actions.len(), 4);
}
