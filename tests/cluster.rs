//! A cluster of three `fedrouter serve` nodes (issue 17, DESIGN.md "Cluster") end to end:
//! one real nats-server (`common/nats.rs`, `.ci/setup-nats`), one real PostgreSQL
//! database shared by the nodes (`common/postgres.rs`, `.ci/setup-postgres`), real
//! client sockets (`common/xmpp.rs`), a scripted remote domain `remote.test` (its
//! outbound stream to the cluster is a raw `Peer`; its authoritative and receiving
//! server is a `FakeServer`, both `common/peer.rs`) and the test's own DNS zone; the lab
//! that starts them all is `common/cluster_lab.rs`.
//!
//! - **Membership**: three nodes (`[cluster]`, `heartbeat = "200ms"`,
//!   `failure_timeout = "1s"`) each see three members up in `/status/cluster`.
//! - **Routing**: `remote.test` authenticates (dialback) an inbound stream to one node and
//!   sends presence subscription requests to three users, one owned by each node
//!   (rendezvous hashing over the live members, `fedrouter::router::rendezvous`). Each
//!   user logs in to the first node and stays there (`cluster.c2s_sessions = "stay"`,
//!   the default): its session's state is on its owner, which relays to it; the answers
//!   (`subscribed`) reach `remote.test` through the one outbound stream its owner opens.
//!   The nodes count what they forwarded and received over NATS.
//! - **Sessions stay where they connected**: two users owned by two other nodes log in
//!   to one node; a subscription, its answer and a message go between them (access node
//!   → home → the other's home → access node); the same account logging in on its home
//!   replaces the relayed session (`<conflict/>`); the access node is killed and the
//!   home ends the session there (unavailable presence to the contact).
//! - **A node dies**: the owner of `remote.test` and of two offline users is killed
//!   (SIGKILL) after the requests to those users are durable (in PostgreSQL: pending in,
//!   RFC 6121 §3.1.3). A request between two survivors is sent while they have not yet
//!   noticed, and is delivered. The survivors see two members (a new epoch); the inbound
//!   stream (on a survivor) keeps working; the two users log in on their new owners and
//!   get the requests made before the kill; new requests and all the answers complete
//!   through the survivors, and `remote.test` gets them over a new outbound stream.
//! - **NATS dies under load** (SIGKILL, then started again on the same port): every node
//!   shows NATS `down` and keeps its view; requests keep arriving on the inbound stream;
//!   the entry node still delivers to its own user, and what crosses nodes (requests to
//!   the others, the answers to `remote.test`'s owner) waits in the backlogs and is
//!   delivered once NATS is back; every node counts a reconnection.
//!
//! - **A node comes back**: killed, then started again while a request to one of its
//!   users was stored by the interim owner; it takes its share back (with
//!   `c2s_sessions = "redirect"`, the user is sent to it with `<see-other-host/>`, RFC
//!   6120 §4.9.3.19), the user gets the request exactly once (a message sent after it on the same
//!   stream is the marker), and the duplicate subscription requests the durable outbox
//!   sent again are counted (`fedrouter_cluster_outbox_resent_total`).
//!
//! Each test has its own addresses ([`Layout`]: 127.0.183.0/24 from .0 and from .100,
//! 127.0.198.0/24 from .0 and from .100, 127.0.14.0/24): DNS zone on `+1`, NATS on `+2`, nodes on `+11`–`+13` (5222 C2S, 5269
//! S2S, 9269 admin), `remote.test` on `+50`. PostgreSQL is the test process's own server
//! (127.0.178.1, `common/postgres.rs`). Every wait is bounded and waits on an event (a
//! stanza, a status, a store row).

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/cluster_lab.rs"]
mod cluster_lab;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/peer.rs"]
mod peer;
#[path = "common/postgres.rs"]
mod pg;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use cluster_lab::{
    approve, online, subscribe, user_owned_by, wait_metric_sum, Lab, Layout, DOMAIN, NODES, REMOTE,
};
use fedrouter::router::bare_key;
use fedrouter::router::domain_key;
use fedrouter::router::rendezvous::owner;
use std::time::{Duration, Instant};

/// Longest wait for one admin answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
use xmpp::Client;

#[test]
fn three_nodes_route_subscriptions_between_streams_and_users() {
    const LAB: Layout = Layout { net: 183, base: 0 };
    // One user per owner node (under three members).
    let all = ["n1", "n2", "n3"];
    let mut users: Vec<String> = Vec::new();
    for i in 0..NODES.len() {
        let u = user_owned_by("user", i, &all, &users);
        users.push(u);
    }
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let lab = Lab::start(LAB, &names);

    // (a) Everyone sees three members up.
    let epochs = lab.wait_members();
    assert!(epochs.iter().all(Option::is_some), "{epochs:?}");

    // remote.test's owner opens its outbound stream; its inbound stream goes to another
    // node, so both requests and answers cross nodes.
    let remote_owner = lab.owner_of(&domain_key(REMOTE));
    let entry = (remote_owner + 1) % NODES.len();

    // (b) Each user logs in on n1 and stays there.
    let mut clients: Vec<Client> = (0..NODES.len())
        .map(|i| online(&lab, 0, &users[i], i))
        .collect();

    let mut p = lab.inbound(entry);
    for u in &users {
        subscribe(&mut p, &format!("r1@{REMOTE}"), &format!("{u}@{DOMAIN}"));
    }
    for c in &mut clients {
        approve(c, &format!("r1@{REMOTE}"));
        c.expect_roster_push(&format!("r1@{REMOTE}"));
    }
    for u in &users {
        lab.remote_got(
            "subscribed",
            &format!("{u}@{DOMAIN}"),
            &format!("r1@{REMOTE}"),
        );
    }
    // Only remote.test's owner sends it stanzas (the entry node connects to it too, but
    // only to verify the inbound stream's dialback key).
    for (i, n) in lab.nodes.iter().enumerate() {
        let out = n
            .metric(
                "fedrouter_stanzas_total",
                &[("dir", "s2s_out"), ("kind", "presence")],
            )
            .unwrap_or_else(|| panic!("{}: no /metrics", NODES[i]));
        if i == remote_owner {
            assert!(
                out >= 3.0,
                "{} (owner of {REMOTE}) sent {out} presences",
                NODES[i]
            );
        } else {
            assert_eq!(
                out, 0.0,
                "{} does not own {REMOTE} but sent it stanzas",
                NODES[i]
            );
        }
    }
    // The entry node's stream to remote.test only verified the inbound stream's key: it
    // was closed once the answer came (it does not hold a socket until the idle timeout).
    assert!(
        lab.nodes[entry]
            .metric("fedrouter_cluster_verify_streams_closed_total", &[])
            .unwrap_or_default()
            >= 1.0,
        "{}: its verification stream to {REMOTE} was not closed",
        NODES[entry]
    );
    // n1, where every user logged in, relays the two it does not own to their owners.
    assert_eq!(
        lab.nodes[0].metric("fedrouter_cluster_relayed_clients", &[]),
        Some(2.0),
        "n1's relayed clients"
    );
    assert_eq!(
        lab.nodes[0]
            .metric("fedrouter_c2s_redirects_total", &[])
            .unwrap_or_default(),
        0.0,
        "n1 sent no client away"
    );

    // The requests to the two users not on the entry node crossed NATS, and so did the
    // answers of the two users not on remote.test's owner.
    let crossing = 2.0 + 2.0;
    wait_metric_sum(&lab, "fedrouter_cluster_forwarded_total", crossing);
    wait_metric_sum(&lab, "fedrouter_cluster_received_total", crossing);
    assert!(
        lab.nodes[entry]
            .metric("fedrouter_cluster_forwarded_total", &[])
            .unwrap_or_default()
            >= 2.0,
        "{} forwarded the requests for the users it does not own",
        NODES[entry]
    );

    // And back: a user's own request reaches remote.test, whose answer, on the inbound
    // stream to the entry node, reaches the user on its owner.
    let far = (entry + 1) % NODES.len();
    let c = &mut clients[far];
    c.send(&format!("<presence type='subscribe' to='r2@{REMOTE}'/>"));
    lab.remote_got(
        "subscribe",
        &format!("{}@{DOMAIN}", users[far]),
        &format!("r2@{REMOTE}"),
    );
    p.send(
        format!(
            "<presence type='subscribed' from='r2@{REMOTE}' to='{}@{DOMAIN}'/>",
            users[far]
        )
        .as_bytes(),
    )
    .expect("send the answer");
    c.expect_presence(&format!("r2@{REMOTE}"), Some("subscribed"));
    // Nothing was lost or refused between the nodes.
    for name in [
        "fedrouter_cluster_lost_total",
        "fedrouter_cluster_forward_refused_total",
    ] {
        assert_eq!(lab.metric_sum(name), 0.0, "{name}");
    }
    for c in &mut clients {
        c.close();
    }
}

#[test]
fn a_killed_node_loses_no_acknowledged_subscription_request() {
    const LAB: Layout = Layout { net: 198, base: 0 };
    let all = ["n1", "n2", "n3"];
    // The victim owns remote.test; the inbound stream goes to a survivor; a third
    // user stays online on the other survivor throughout.
    let victim = owner(&domain_key(REMOTE), &all)
        .and_then(|o| NODES.iter().position(|n| n == o))
        .expect("an owner");
    let entry = (victim + 1) % NODES.len();
    let other = (victim + 2) % NODES.len();
    let mut users: Vec<String> = Vec::new();
    for _ in 0..2 {
        let u = user_owned_by("off", victim, &all, &users);
        users.push(u);
    }
    let stay = user_owned_by("on", other, &all, &users);
    users.push(stay.clone());
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut lab = Lab::start(LAB, &names);
    let before = lab.wait_members();

    let mut s = online(&lab, entry, &stay, other);
    let mut p = lab.inbound(entry);
    let r1 = format!("r1@{REMOTE}");
    // Requests to the victim's two offline users, and to the online one.
    for u in &users {
        subscribe(&mut p, &r1, &format!("{u}@{DOMAIN}"));
    }
    approve(&mut s, &r1);
    lab.remote_got("subscribed", &format!("{stay}@{DOMAIN}"), &r1);
    // The victim acknowledged the two requests: they are durable in the shared store.
    for u in &users[..2] {
        lab.wait_pending_in(&format!("{u}@{DOMAIN}"), &r1);
    }

    // SIGKILL the victim mid-flow: a request goes on its way between two survivors
    // before they notice (the entry node forwards it to the online user's node).
    let killed = Instant::now();
    lab.kill(victim);
    let r3 = format!("r3@{REMOTE}");
    subscribe(&mut p, &r3, &format!("{stay}@{DOMAIN}"));
    let after = lab.wait_members();
    // Each survivor accounts for what it published to the victim that the victim never
    // confirmed (possibly lost with its memory): the counter is there, whatever its value.
    for i in [entry, other] {
        let (_, body) =
            server::http_get(lab.nodes[i].admin, "/metrics", ANSWER_WAIT).expect("metrics");
        assert!(
            body.contains(&format!(
                "fedrouter_cluster_unconfirmed_at_death_total{{node=\"{}\"}} ",
                NODES[victim]
            )),
            "{}: no unconfirmed-at-death count for {} in /metrics",
            NODES[i],
            NODES[victim]
        );
    }
    // Measured, not asserted: how long the survivors took to agree (failure_timeout 1s).
    eprintln!(
        "survivors agreed on 2 members {:?} after the kill",
        killed.elapsed()
    );
    for i in [entry, other] {
        assert!(
            after[i] > before[i],
            "{}: the epoch moves on with the membership: before {before:?}, after {after:?}",
            NODES[i]
        );
    }
    // The online user's session was on a survivor: still there, and it got the request
    // sent during the failure detection; its answer goes to remote.test's new owner.
    s.sync();
    approve(&mut s, &r3);
    lab.remote_got("subscribed", &format!("{stay}@{DOMAIN}"), &r3);

    // The flow goes on through the survivors: a new request on the same inbound stream.
    let r2 = format!("r2@{REMOTE}");
    subscribe(&mut p, &r2, &format!("{stay}@{DOMAIN}"));
    approve(&mut s, &r2);
    lab.remote_got("subscribed", &format!("{stay}@{DOMAIN}"), &r2);

    // The victim's users log in on their new owners (reached through the entry node) and
    // get the requests acknowledged before the kill; their answers reach remote.test
    // through its new owner.
    for u in &users[..2] {
        let new_owner = lab.owner_of(&bare_key(&format!("{u}@{DOMAIN}")));
        assert_ne!(new_owner, victim);
        let mut c = online(&lab, entry, u, new_owner);
        approve(&mut c, &r1);
        lab.remote_got("subscribed", &format!("{u}@{DOMAIN}"), &r1);
        c.close();
    }
    assert_ne!(lab.owner_of(&domain_key(REMOTE)), victim);
    s.close();
}

#[test]
fn nats_restarted_under_load_delays_cross_node_stanzas_and_loses_none() {
    const LAB: Layout = Layout {
        net: 183,
        base: 100,
    };
    const CONTACTS: usize = 5;
    let all = ["n1", "n2", "n3"];
    let mut users: Vec<String> = Vec::new();
    for i in 0..NODES.len() {
        let u = user_owned_by("nu", i, &all, &users);
        users.push(u);
    }
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut lab = Lab::start(LAB, &names);
    lab.wait_members();
    let remote_owner = lab.owner_of(&domain_key(REMOTE));
    let entry = (remote_owner + 1) % NODES.len();
    let mut clients: Vec<Client> = (0..NODES.len())
        .map(|i| online(&lab, i, &users[i], i))
        .collect();
    let mut p = lab.inbound(entry);

    // Before: the routes work.
    let r0 = format!("r0@{REMOTE}");
    for u in &users {
        subscribe(&mut p, &r0, &format!("{u}@{DOMAIN}"));
    }
    for (c, u) in clients.iter_mut().zip(&users) {
        approve(c, &r0);
        lab.remote_got("subscribed", &format!("{u}@{DOMAIN}"), &r0);
    }

    // NATS dies (SIGKILL); every node notices and keeps its view.
    let killed = Instant::now();
    lab.nats.kill();
    lab.wait_nats("down");
    eprintln!(
        "every node saw NATS down {:?} after the kill",
        killed.elapsed()
    );

    // Under load: CONTACTS contacts ask every user, on the entry node's inbound stream.
    let contacts: Vec<String> = (1..=CONTACTS).map(|k| format!("r{k}@{REMOTE}")).collect();
    for r in &contacts {
        for u in &users {
            subscribe(&mut p, r, &format!("{u}@{DOMAIN}"));
        }
    }
    // The entry node serves what it owns meanwhile: its user gets the requests now, and
    // approves them (the answers wait for remote.test's owner, another node).
    for r in &contacts {
        approve(&mut clients[entry], r);
    }

    // NATS is back on the same port: the nodes reconnect, the backlogs go out.
    let restarted = Instant::now();
    lab.nats.restart();
    lab.wait_nats("up");
    eprintln!(
        "every node saw NATS up {:?} after the restart began",
        restarted.elapsed()
    );
    lab.wait_members();
    for i in (0..NODES.len()).filter(|&i| i != entry) {
        for r in &contacts {
            approve(&mut clients[i], r);
        }
    }
    for u in &users {
        for r in &contacts {
            lab.remote_got("subscribed", &format!("{u}@{DOMAIN}"), r);
        }
    }
    wait_metric_sum(&lab, "fedrouter_cluster_nats_reconnects_total", 3.0);
    for c in &mut clients {
        c.close();
    }
}

#[test]
fn a_restarted_node_takes_back_its_share_and_a_request_is_delivered_once() {
    const LAB: Layout = Layout { net: 14, base: 0 };
    let all = ["n1", "n2", "n3"];
    let victim = 1;
    let entry = 0;
    let user = user_owned_by("back", victim, &all, &[]);
    let asker = user_owned_by("ask", victim, &all, std::slice::from_ref(&user));
    let mut lab = Lab::start_with(LAB, &[&user, &asker], true);
    lab.wait_members();
    // The victim's user `asker` asks remote.test for a subscription and goes offline: the
    // request is in the durable outbox (pending out) until remote.test answers.
    let r9 = format!("r9@{REMOTE}");
    let mut a = online(&lab, entry, &asker, victim);
    a.send(&format!("<presence type='subscribe' to='{r9}'/>"));
    lab.remote_got("subscribe", &format!("{asker}@{DOMAIN}"), &r9);
    a.close();

    lab.kill(victim);
    lab.wait_members();
    // Its owner died: the new owner sends the durable outbox again (a repeated subscribe
    // is harmless, RFC 6121 §3.1.3; counted).
    wait_metric_sum(&lab, "fedrouter_cluster_outbox_resent_total", 1.0);
    // While it is dead, a request to its user is stored by the interim owner.
    let mut p = lab.inbound(entry);
    let r1 = format!("r1@{REMOTE}");
    let bare = format!("{user}@{DOMAIN}");
    subscribe(&mut p, &r1, &bare);
    lab.wait_pending_in(&bare, &r1);

    // It comes back and takes its share back.
    lab.restart(victim);
    lab.wait_members();
    assert_eq!(lab.owner_of(&bare_key(&bare)), victim);
    let mut c = online(&lab, entry, &user, victim);
    c.expect_presence(&r1, Some("subscribe"));
    // A marker after the request on the same path: once it is in, a second copy of the
    // request would have been too.
    p.send(
        format!("<message from='{r1}' to='{bare}' id='marker'><body>marker</body></message>")
            .as_bytes(),
    )
    .expect("send the marker");
    c.expect_message(&r1);
    let again =
        c.take_buffered(|x| x.contains("type='subscribe'") || x.contains("type=\"subscribe\""));
    assert!(again.is_empty(), "{bare} got the request again: {again:?}");
    c.send(&format!("<presence type='subscribed' to='{r1}'/>"));
    lab.remote_got("subscribed", &bare, &r1);
    c.close();
}

#[test]
fn sessions_stay_on_the_node_they_connected_to() {
    const LAB: Layout = Layout {
        net: 198,
        base: 100,
    };
    let all = ["n1", "n2", "n3"];
    // alice's home is n2, bob's n3; both connect to n1 (their access node).
    let alice = user_owned_by("alice", 1, &all, &[]);
    let bob = user_owned_by("bob", 2, &all, std::slice::from_ref(&alice));
    let mut lab = Lab::start(LAB, &[&alice, &bob]);
    lab.wait_members();
    let (a_jid, b_jid) = (format!("{alice}@{DOMAIN}"), format!("{bob}@{DOMAIN}"));
    let mut a = online(&lab, 0, &alice, 1);
    let mut b = online(&lab, 0, &bob, 2);
    assert_eq!(
        lab.nodes[0].metric("fedrouter_cluster_relayed_clients", &[]),
        Some(2.0),
        "n1 relays both clients"
    );

    // alice asks for bob's presence: n1 → n2 (alice's home: roster, durable) → n3 (bob's
    // home) → n1 (bob's client); bob's answer goes the other way round.
    a.send(&format!("<presence type='subscribe' to='{b_jid}'/>"));
    a.expect_roster_push(&b_jid);
    approve(&mut b, &a_jid);
    a.expect_presence(&b_jid, Some("subscribed"));
    // alice now receives bob's presence: his available presence, sent by his home.
    a.expect_presence(&b_jid, None);
    // A message, and its answer, between the two relayed sessions.
    a.send(&format!(
        "<message to='{b_jid}' id='m1'><body>hi</body></message>"
    ));
    b.expect_message(&a_jid);
    b.send(&format!(
        "<message to='{a_jid}/r' id='m2'><body>hello</body></message>"
    ));
    a.expect_message(&b_jid);

    // alice logs in on her home with the same resource: the new session replaces the
    // relayed one (RFC 6120 §7.7.2.2), whose stream on n1 ends with <conflict/>.
    let mut a2 = online(&lab, 1, &alice, 1);
    assert_eq!(a.expect_stream_error(), "conflict", "the replaced session");
    // alice's new session gets bob's presence (a probe answered by bob's home).
    a2.expect_presence(&b_jid, None);

    // bob's access node dies: his home ends his session there, and alice (subscribed to
    // him) is told he is unavailable (RFC 6121 §4.5.2).
    lab.kill(0);
    lab.wait_members();
    a2.expect_presence(&b_jid, Some("unavailable"));
    a2.close();
}
