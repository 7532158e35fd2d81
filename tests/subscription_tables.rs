//! RFC 6121 Appendix A as tables: every row of A.2 (server processing of outbound
//! subscription stanzas) and A.3 (inbound), the §3.4 pre-approval rows, invariants over
//! every state × type, and end-to-end sequences between two servers' views.
//!
//! Rows are written as the RFC prints them: existing state, ROUTE?/DELIVER?, new state
//! ("no state change" where the RFC says so).

use fedrouter::presence::{
    inbound, outbound, remove, Action, SubState, SubType, Subscription, Transition,
};

const SAME: &str = "no state change";

/// (existing state, ROUTE? or DELIVER?, new state)
type Row = (&'static str, bool, &'static str);

fn state(name: &str) -> SubState {
    SubState::from_name(name).unwrap_or_else(|| panic!("not an Appendix A.1 state: {name:?}"))
}

/// Runs one Appendix A table; returns the number of rows checked.
fn check_table(
    table: &str,
    f: fn(SubState, SubType) -> Transition,
    t: SubType,
    rows: &[Row],
    outbound_dir: bool,
) -> usize {
    assert_eq!(rows.len(), 9, "{table}: one row per defined state");
    for &(existing, flag, new) in rows {
        let old = state(existing);
        let got = f(old, t);
        let want = if new == SAME { old } else { state(new) };
        let ctx = format!("{table} {existing:?} {t}: {got:?}");
        assert_eq!(got.state, want, "{ctx}: new state");
        assert_eq!(
            got.state.name(),
            if new == SAME { existing } else { new },
            "{ctx}"
        );
        if outbound_dir {
            assert_eq!(got.route(), flag, "{ctx}: ROUTE?");
            assert!(!got.deliver(), "{ctx}: outbound never delivers");
        } else {
            assert_eq!(got.deliver(), flag, "{ctx}: DELIVER?");
            assert!(!got.route(), "{ctx}: inbound never routes the stanza");
        }
        assert_eq!(
            got.stored_changed,
            got.state != old,
            "{ctx}: stored_changed"
        );
    }
    rows.len()
}

// ---------------------------------------------------------------------------------------
// A.2 Server processing of outbound presence subscription stanzas
// ---------------------------------------------------------------------------------------

const A21_OUT_SUBSCRIBE: [Row; 9] = [
    ("None", true, "None + Pending Out"),
    ("None + Pending Out", true, SAME),
    ("None + Pending In", true, "None + Pending Out/In"),
    ("None + Pending Out/In", true, SAME),
    ("To", true, SAME),
    ("To + Pending In", true, SAME),
    ("From", true, "From + Pending Out"),
    ("From + Pending Out", true, SAME),
    ("Both", true, SAME),
];

const A22_OUT_UNSUBSCRIBE: [Row; 9] = [
    ("None", true, SAME),
    ("None + Pending Out", true, "None"),
    ("None + Pending In", true, SAME),
    ("None + Pending Out/In", true, "None + Pending In"),
    ("To", true, "None"),
    ("To + Pending In", true, "None + Pending In"),
    ("From", true, SAME),
    ("From + Pending Out", true, "From"),
    ("Both", true, "From"),
];

/// A.2.3 with the rows the RFC marks "pre-approved" left out (they are in
/// `a23_pre_approval_rows`).
const A23_OUT_SUBSCRIBED: [Row; 6] = [
    ("None + Pending In", true, "From"),
    ("None + Pending Out/In", true, "From + Pending Out"),
    ("To + Pending In", true, "Both"),
    ("From", false, SAME),
    ("From + Pending Out", false, SAME),
    ("Both", false, SAME),
];

const A24_OUT_UNSUBSCRIBED: [Row; 9] = [
    ("None", false, SAME),
    ("None + Pending Out", false, SAME),
    ("None + Pending In", true, "None"),
    ("None + Pending Out/In", true, "None + Pending Out"),
    ("To", false, SAME),
    ("To + Pending In", true, "To"),
    ("From", true, "None"),
    ("From + Pending Out", true, "None + Pending Out"),
    ("Both", true, "To"),
];

#[test]
fn a21_outbound_subscribe() {
    check_table(
        "A.2.1",
        outbound,
        SubType::Subscribe,
        &A21_OUT_SUBSCRIBE,
        true,
    );
}

#[test]
fn a22_outbound_unsubscribe() {
    check_table(
        "A.2.2",
        outbound,
        SubType::Unsubscribe,
        &A22_OUT_UNSUBSCRIBE,
        true,
    );
}

#[test]
fn a23_outbound_subscribed() {
    for &(existing, route, new) in &A23_OUT_SUBSCRIBED {
        let old = state(existing);
        let got = outbound(old, SubType::Subscribed);
        let want = if new == SAME { old } else { state(new) };
        assert_eq!(got.state, want, "A.2.3 {existing}");
        assert_eq!(got.route(), route, "A.2.3 {existing}");
        if route {
            // §3.1.5: route, push, then the contact's current presence to the user.
            assert_eq!(
                &*got.actions,
                &[
                    Action::RouteToContact,
                    Action::RosterPush,
                    Action::SendCurrentPresence
                ],
                "A.2.3 {existing}"
            );
        } else {
            assert!(got.ignored(), "A.2.3 {existing}: {got:?}");
        }
    }
}

#[test]
fn a23_pre_approval_rows() {
    // RFC 6121 A.2.3: "None", "None + Pending Out", "To" → not routed, "pre-approved"
    // (§3.4.1): the item gets approved='true' and is pushed.
    for existing in ["None", "None + Pending Out", "To"] {
        let old = state(existing);
        let got = outbound(old, SubType::Subscribed);
        assert!(!got.route(), "{existing}");
        assert_eq!(got.state, old.pre_approved(), "{existing}");
        assert_eq!(
            got.state.name(),
            existing,
            "the A.1 state itself is unchanged"
        );
        assert!(got.state.approved());
        assert!(got.stored_changed);
        assert_eq!(&*got.actions, &[Action::RosterPush], "{existing}");
        // Pre-approving twice changes nothing.
        let again = outbound(got.state, SubType::Subscribed);
        assert!(
            again.ignored() && !again.stored_changed,
            "{existing}: {again:?}"
        );
        assert_eq!(again.state, got.state);
    }
}

#[test]
fn a24_outbound_unsubscribed() {
    check_table(
        "A.2.4",
        outbound,
        SubType::Unsubscribed,
        &A24_OUT_UNSUBSCRIBED,
        true,
    );
}

// ---------------------------------------------------------------------------------------
// A.3 Server processing of inbound presence subscription stanzas
// ---------------------------------------------------------------------------------------

/// "no *" rows: not delivered, the server auto-replies `subscribed` (§3.1.3).
const A31_IN_SUBSCRIBE: [Row; 9] = [
    ("None", true, "None + Pending In"),
    ("None + Pending Out", true, "None + Pending Out/In"),
    ("None + Pending In", false, SAME),
    ("None + Pending Out/In", false, SAME),
    ("To", true, "To + Pending In"),
    ("To + Pending In", false, SAME),
    ("From", false, SAME),
    ("From + Pending Out", false, SAME),
    ("Both", false, SAME),
];

const A32_IN_UNSUBSCRIBE: [Row; 9] = [
    ("None", false, SAME),
    ("None + Pending Out", false, SAME),
    ("None + Pending In", true, "None"),
    ("None + Pending Out/In", true, "None + Pending Out"),
    ("To", false, SAME),
    ("To + Pending In", true, "To"),
    ("From", true, "None"),
    ("From + Pending Out", true, "None + Pending Out"),
    ("Both", true, "To"),
];

const A33_IN_SUBSCRIBED: [Row; 9] = [
    ("None", false, SAME),
    ("None + Pending Out", true, "To"),
    ("None + Pending In", false, SAME),
    ("None + Pending Out/In", true, "To + Pending In"),
    ("To", false, SAME),
    ("To + Pending In", false, SAME),
    ("From", false, SAME),
    ("From + Pending Out", true, "Both"),
    ("Both", false, SAME),
];

const A34_IN_UNSUBSCRIBED: [Row; 9] = [
    ("None", false, SAME),
    ("None + Pending Out", true, "None"),
    ("None + Pending In", false, SAME),
    ("None + Pending Out/In", true, "None + Pending In"),
    ("To", true, "None"),
    ("To + Pending In", true, "None + Pending In"),
    ("From", false, SAME),
    ("From + Pending Out", true, "From"),
    ("Both", true, "From"),
];

#[test]
fn a31_inbound_subscribe() {
    check_table(
        "A.3.1",
        inbound,
        SubType::Subscribe,
        &A31_IN_SUBSCRIBE,
        false,
    );
    for (existing, deliver, _) in A31_IN_SUBSCRIBE {
        let got = inbound(state(existing), SubType::Subscribe);
        let from = state(existing).subscription.has_from();
        // The starred rows: the contact already has a subscription → auto-reply.
        assert_eq!(
            got.auto_reply(),
            from.then_some(SubType::Subscribed),
            "{existing}"
        );
        if from {
            assert_eq!(
                &*got.actions,
                &[
                    Action::AutoReply(SubType::Subscribed),
                    Action::SendCurrentPresence
                ]
            );
        }
        // A subscription request never creates or changes a visible roster item.
        assert!(!got.roster_push(), "{existing}");
        if !deliver && !from {
            assert!(got.ignored(), "{existing}: duplicate request");
        }
    }
}

#[test]
fn a32_inbound_unsubscribe() {
    check_table(
        "A.3.2",
        inbound,
        SubType::Unsubscribe,
        &A32_IN_UNSUBSCRIBE,
        false,
    );
    for (existing, deliver, _) in A32_IN_UNSUBSCRIBE {
        let old = state(existing);
        let got = inbound(old, SubType::Unsubscribe);
        // §3.3.3: unavailable from the user's resources when the contact loses `from`.
        assert_eq!(
            got.has(Action::SendUnavailable),
            old.subscription.has_from(),
            "{existing}"
        );
        assert_eq!(
            got.roster_push(),
            got.state.subscription != old.subscription,
            "{existing}"
        );
        assert_eq!(got.ignored(), !deliver, "{existing}");
    }
    assert_eq!(
        &*inbound(SubState::BOTH, SubType::Unsubscribe).actions,
        &[
            Action::DeliverToUser,
            Action::RosterPush,
            Action::SendUnavailable
        ]
    );
}

#[test]
fn a33_inbound_subscribed() {
    check_table(
        "A.3.3",
        inbound,
        SubType::Subscribed,
        &A33_IN_SUBSCRIBED,
        false,
    );
    for (existing, deliver, _) in A33_IN_SUBSCRIBED {
        let got = inbound(state(existing), SubType::Subscribed);
        if deliver {
            assert_eq!(&*got.actions, &[Action::DeliverToUser, Action::RosterPush]);
        } else {
            // §3.1.6: not pending out → MUST ignore.
            assert!(got.ignored() && !got.stored_changed, "{existing}");
        }
    }
}

#[test]
fn a34_inbound_unsubscribed() {
    check_table(
        "A.3.4",
        inbound,
        SubType::Unsubscribed,
        &A34_IN_UNSUBSCRIBED,
        false,
    );
    for (existing, deliver, _) in A34_IN_UNSUBSCRIBED {
        let got = inbound(state(existing), SubType::Unsubscribed);
        if deliver {
            assert_eq!(&*got.actions, &[Action::DeliverToUser, Action::RosterPush]);
        } else {
            assert!(got.ignored() && !got.stored_changed, "{existing}");
        }
    }
}

#[test]
fn outbound_action_orders() {
    // §3.2.2: unavailable goes out while the contact is still subscribed, before the
    // `unsubscribed` is routed.
    assert_eq!(
        &*outbound(SubState::BOTH, SubType::Unsubscribed).actions,
        &[
            Action::SendUnavailable,
            Action::RouteToContact,
            Action::RosterPush
        ]
    );
    // Denying a pending request: routed, no visible change so no push, no unavailable.
    assert_eq!(
        &*outbound(SubState::NONE_PENDING_IN, SubType::Unsubscribed).actions,
        &[Action::RouteToContact]
    );
    // §3.1.2: the request is routed and `ask` pushed.
    assert_eq!(
        &*outbound(SubState::NONE, SubType::Subscribe).actions,
        &[Action::RouteToContact, Action::RosterPush]
    );
    // Repeated request: routed again, nothing to push.
    assert_eq!(
        &*outbound(SubState::NONE_PENDING_OUT, SubType::Subscribe).actions,
        &[Action::RouteToContact]
    );
    // Pending-in only: `subscribe` adds `ask`, pushed; `unsubscribe` changes nothing visible.
    assert!(outbound(SubState::NONE_PENDING_IN, SubType::Subscribe).roster_push());
    assert!(!outbound(SubState::NONE_PENDING_IN, SubType::Unsubscribe).roster_push());
}

// ---------------------------------------------------------------------------------------
// §3.4 pre-approval
// ---------------------------------------------------------------------------------------

/// (pre-approved state, inbound `subscribe` → new state): the contact's request is
/// approved at once, not delivered.
const PRE_APPROVED_IN_SUBSCRIBE: [(&str, &str); 3] = [
    ("None", "From"),
    ("None + Pending Out", "From + Pending Out"),
    ("To", "Both"),
];

#[test]
fn pre_approval_auto_approves_inbound_subscribe() {
    for (existing, new) in PRE_APPROVED_IN_SUBSCRIBE {
        let old = state(existing).pre_approved();
        let got = inbound(old, SubType::Subscribe);
        assert_eq!(
            got.state,
            state(new),
            "{existing}: pre-approval is consumed"
        );
        assert!(!got.state.approved());
        assert!(!got.deliver(), "{existing}");
        assert_eq!(got.auto_reply(), Some(SubType::Subscribed));
        assert_eq!(
            &*got.actions,
            &[
                Action::AutoReply(SubType::Subscribed),
                Action::RosterPush,
                Action::SendCurrentPresence
            ]
        );
        assert!(got.stored_changed);
    }
}

#[test]
fn pre_approval_cancelled_by_outbound_unsubscribed() {
    for existing in ["None", "None + Pending Out", "To"] {
        let old = state(existing).pre_approved();
        let got = outbound(old, SubType::Unsubscribed);
        assert_eq!(got.state, state(existing), "{existing}");
        assert!(!got.route(), "nothing to route: the contact never asked");
        assert_eq!(&*got.actions, &[Action::RosterPush]);
    }
}

#[test]
fn pre_approval_survives_unrelated_stanzas() {
    let pre = SubState::NONE.pre_approved();
    // The user's own request keeps the pre-approval.
    let t = outbound(pre, SubType::Subscribe);
    assert_eq!(t.state, SubState::NONE_PENDING_OUT.pre_approved());
    assert_eq!(t.state.ask(), Some("subscribe"));
    // The contact approving the user's request keeps it too.
    let t = inbound(t.state, SubType::Subscribed);
    assert_eq!(t.state, SubState::TO.pre_approved());
    // ...and then the contact's request is approved automatically → Both.
    let t = inbound(t.state, SubType::Subscribe);
    assert_eq!(t.state, SubState::BOTH);
    assert_eq!(t.auto_reply(), Some(SubType::Subscribed));
    // An inbound unsubscribe without `from` is ignored, pre-approval or not.
    assert!(inbound(pre, SubType::Unsubscribe).ignored());
}

#[test]
fn normalisation_drops_impossible_flags() {
    let odd = SubState {
        subscription: Subscription::Both,
        pending_out: true,
        pending_in: true,
        pre_approved: true,
    };
    assert_eq!(odd.normalized(), SubState::BOTH);
    assert_eq!(odd.name(), "Both");
    assert_eq!(odd.ask(), None);
    assert!(!odd.approved());
    assert_eq!(
        SubState::NONE_PENDING_IN.pre_approved().normalized(),
        SubState::NONE_PENDING_IN
    );
    // Transitions normalise their input.
    assert_eq!(outbound(odd, SubType::Subscribe).state, SubState::BOTH);
}

// ---------------------------------------------------------------------------------------
// Invariants over every state × type
// ---------------------------------------------------------------------------------------

fn all_states() -> Vec<SubState> {
    let mut v = SubState::ALL.to_vec();
    v.extend(["None", "None + Pending Out", "To"].map(|n| state(n).pre_approved()));
    v
}

#[test]
fn invariants_every_state_and_type() {
    let mut n = 0;
    for s in all_states() {
        for t in SubType::ALL {
            for (dir, got) in [("out", outbound(s, t)), ("in", inbound(s, t))] {
                let ctx = format!("{dir} {s} {t}: {got:?}");
                n += 1;
                assert_eq!(
                    got.state,
                    got.state.normalized(),
                    "{ctx}: result is normalised"
                );
                assert!(
                    SubState::ALL.contains(&SubState {
                        pre_approved: false,
                        ..got.state
                    }),
                    "{ctx}: a defined state"
                );
                assert_eq!(got.stored_changed, got.state != s, "{ctx}");
                assert_eq!(
                    got.roster_push(),
                    got.state.visible() != s.visible(),
                    "{ctx}: roster push iff a visible attribute changed"
                );
                assert!(!got.actions.is_empty(), "{ctx}");
                if got.ignored() {
                    assert_eq!(got.actions.len(), 1, "{ctx}: Ignore is alone");
                    assert!(!got.stored_changed, "{ctx}");
                }
                // A subscription the other side holds never ends without unavailable.
                if dir == "out" && s.subscription.has_from() && !got.state.subscription.has_from() {
                    assert!(got.has(Action::SendUnavailable), "{ctx}");
                }
                // Current presence is sent exactly when the contact gains `from`
                // (or is told again that it has it).
                if got.has(Action::SendCurrentPresence) {
                    assert!(got.state.subscription.has_from(), "{ctx}");
                }
            }
        }
    }
    assert_eq!(n, 12 * 4 * 2);
}

#[test]
fn names_round_trip_and_attributes() {
    let names = [
        "None",
        "None + Pending Out",
        "None + Pending In",
        "None + Pending Out/In",
        "To",
        "To + Pending In",
        "From",
        "From + Pending Out",
        "Both",
    ];
    for (s, name) in SubState::ALL.into_iter().zip(names) {
        assert_eq!(s.name(), name);
        assert_eq!(SubState::from_name(name), Some(s));
        assert_eq!(s.to_string(), name);
        // §2.1.2.2: ask='subscribe' exactly in the Pending Out states.
        assert_eq!(s.ask().is_some(), name.contains("Pending Out"), "{name}");
    }
    assert_eq!(SubState::from_name("Both + Pending In"), None);
    assert_eq!(
        SubState::NONE.pre_approved().to_string(),
        "None (pre-approved)"
    );
    for t in SubType::ALL {
        assert_eq!(SubType::from_type(t.as_str()), Some(t));
    }
    assert_eq!(SubType::from_type("probe"), None);
    for s in [
        Subscription::None,
        Subscription::To,
        Subscription::From,
        Subscription::Both,
    ] {
        assert_eq!(Subscription::from_attr(s.as_str()), Some(s));
    }
    assert_eq!(Subscription::from_attr("remove"), None);
}

// ---------------------------------------------------------------------------------------
// End-to-end sequences: the user's server and the contact's server, each with its own view
// ---------------------------------------------------------------------------------------

/// Two accounts on (possibly) two servers: `a`'s state for `b`, and `b`'s state for `a`.
struct Pair {
    a: SubState,
    b: SubState,
}

impl Pair {
    fn new() -> Self {
        Self {
            a: SubState::NONE,
            b: SubState::NONE,
        }
    }

    /// `from` (true: a, false: b) sends `t` to the other; its server processes it
    /// outbound, routes it if told to, the other server processes it inbound, and any
    /// auto-reply travels back the same way. Bounded: an auto-reply is never answered by
    /// another auto-reply more than a few times.
    fn send(&mut self, from_a: bool, t: SubType) {
        let mut queue = vec![(from_a, t, true)];
        let mut hops = 0;
        while let Some((from_a, t, from_client)) = queue.pop() {
            hops += 1;
            assert!(hops < 8, "auto-replies loop");
            let (sender, receiver) = if from_a {
                (&mut self.a, &mut self.b)
            } else {
                (&mut self.b, &mut self.a)
            };
            // Server-generated stanzas (auto-replies) are routed directly, the sender's
            // state is already right.
            let routed = if from_client {
                let out = outbound(*sender, t);
                *sender = out.state;
                out.route()
            } else {
                true
            };
            if !routed {
                continue;
            }
            let inb = inbound(*receiver, t);
            *receiver = inb.state;
            if let Some(reply) = inb.auto_reply() {
                queue.push((!from_a, reply, false));
            }
        }
    }
}

#[test]
fn seq_subscribe_then_subscribed_gives_to_and_from() {
    let mut p = Pair::new();
    p.send(true, SubType::Subscribe);
    assert_eq!(
        (p.a.name(), p.b.name()),
        ("None + Pending Out", "None + Pending In")
    );
    p.send(false, SubType::Subscribed);
    assert_eq!((p.a, p.b), (SubState::TO, SubState::FROM));
}

#[test]
fn seq_mutual_subscription_gives_both() {
    let mut p = Pair::new();
    p.send(true, SubType::Subscribe);
    p.send(false, SubType::Subscribe);
    assert_eq!(
        (p.a.name(), p.b.name()),
        ("None + Pending Out/In", "None + Pending Out/In")
    );
    p.send(false, SubType::Subscribed);
    assert_eq!(
        (p.a.name(), p.b.name()),
        ("To + Pending In", "From + Pending Out")
    );
    p.send(true, SubType::Subscribed);
    assert_eq!((p.a, p.b), (SubState::BOTH, SubState::BOTH));
}

#[test]
fn seq_unsubscribe_from_both() {
    let mut p = Pair {
        a: SubState::BOTH,
        b: SubState::BOTH,
    };
    // a stops receiving b's presence: a keeps only `from`, b only `to`.
    p.send(true, SubType::Unsubscribe);
    assert_eq!((p.a, p.b), (SubState::FROM, SubState::TO));
}

#[test]
fn seq_unsubscribed_from_both() {
    let mut p = Pair {
        a: SubState::BOTH,
        b: SubState::BOTH,
    };
    // a cancels b's subscription to a: a keeps only `to`, b only `from`.
    p.send(true, SubType::Unsubscribed);
    assert_eq!((p.a, p.b), (SubState::TO, SubState::FROM));
}

#[test]
fn seq_pre_approval_then_request() {
    let mut p = Pair::new();
    // b pre-approves a; nothing goes over the wire.
    p.send(false, SubType::Subscribed);
    assert_eq!((p.a, p.b), (SubState::NONE, SubState::NONE.pre_approved()));
    // a asks; b's server approves on b's behalf, a's server receives the auto-reply.
    p.send(true, SubType::Subscribe);
    assert_eq!((p.a, p.b), (SubState::TO, SubState::FROM));
}

#[test]
fn seq_redundant_request_resyncs_lost_state() {
    // a's server lost a's `to` (restored from an old backup), b still has `from`.
    let mut p = Pair {
        a: SubState::NONE,
        b: SubState::FROM,
    };
    p.send(true, SubType::Subscribe);
    assert_eq!((p.a, p.b), (SubState::TO, SubState::FROM));
}

#[test]
fn seq_denied_request() {
    let mut p = Pair::new();
    p.send(true, SubType::Subscribe);
    p.send(false, SubType::Unsubscribed);
    assert_eq!((p.a, p.b), (SubState::NONE, SubState::NONE));
}

#[test]
fn seq_roster_remove_ends_everything_both_sides() {
    let mut p = Pair {
        a: SubState::BOTH,
        b: SubState::BOTH,
    };
    let r = remove(p.a);
    assert_eq!(r.state, SubState::NONE);
    assert_eq!(
        &*r.actions,
        &[
            Action::SendUnavailable,
            Action::AutoReply(SubType::Unsubscribe),
            Action::AutoReply(SubType::Unsubscribed),
            Action::RosterPush
        ]
    );
    p.a = r.state;
    for a in r.actions.iter() {
        if let Action::AutoReply(t) = a {
            p.b = inbound(p.b, *t).state;
        }
    }
    assert_eq!(p.b, SubState::NONE);

    // Removing a contact with only pending requests cancels them at the contact's server.
    let mut p = Pair::new();
    p.send(true, SubType::Subscribe);
    p.send(false, SubType::Subscribe);
    let r = remove(p.a);
    for a in r.actions.iter() {
        if let Action::AutoReply(t) = a {
            p.b = inbound(p.b, *t).state;
        }
    }
    assert_eq!(p.b, SubState::NONE);
    assert!(!r.has(Action::SendUnavailable));
    // Nothing to tell anyone for a plain "None" item: only the push.
    assert_eq!(&*remove(SubState::NONE).actions, &[Action::RosterPush]);
}
