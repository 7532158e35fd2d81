//! A REAL Prosody federating with `cupdomain.test` served by a cluster of three fedrouter
//! nodes (issue 17): one nats-server (`common/nats.rs`), one PostgreSQL database shared by
//! the nodes (`common/postgres.rs`), SRV records naming every node with equal priority
//! and weight. The RFC 6121 subscription flow (`flow.rs`) runs in both directions, with
//! each fedrouter user connected to the node that owns neither `gmail.test` nor the
//! user's bare JID (so the outbound streams to Prosody, the session's state and the
//! client's stream are on three different nodes: the session stays where the client
//! connected, `cluster.c2s_sessions = "stay"`, and every stanza of the flow crosses
//! nodes over NATS at least once). The nodes must have
//! forwarded stanzas to each other, the rosters end stored in PostgreSQL, and an admin
//! ping from every node to `gmail.test` is answered.
//!
//! Addresses: `127.0.15.0/24`: Prosody on `.2`, DNS on `.3:53`, NATS on `.4`, nodes on
//! `.11`–`.13` (C2S 5222, S2S 5269, admin 9269). Google-style federation (plain TCP +
//! dialback), so Prosody's dialback to `cupdomain.test` may land on any node: every node
//! answers `db:verify` with the shared secret.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fedrouter::router::rendezvous::owner;
use fedrouter::store::postgres::{PostgresOptions, PostgresStore};
use fedrouter::store::Store as _;
use fedrouter_testkit::zone::ZoneServer;
use fedrouter_testkit::TestCa;

use crate::flow::{subscription_flow, Side};
use crate::lab::{Profile, OURS, PASSWORD, THEIRS};
use crate::nats::NatsServer;
use crate::pg;
use crate::prosody::{Prosody, ProsodySpec, S2sPolicy};
use crate::server::{a, add_user, http_get, metric_sum, srv, Fedrouter};
use crate::xmpp::{Client, Mech, Target};

const NET: [u8; 3] = [127, 0, 15];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const SECRET_HEX: &str = "636c757374657220696e7465726f702073656372657421";

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(NET[0], NET[1], NET[2], host)
}

fn node_ip(i: usize) -> Ipv4Addr {
    ip(11 + i as u8)
}

/// A localpart `cupN` whose bare JID a node other than `gmail.test`'s owner owns; with
/// the index of that node.
fn user_away_from_streams(skip: &[String]) -> (String, usize) {
    let theirs = owner(THEIRS, &NODES).copied().expect("members");
    for n in 1..1000 {
        let user = format!("cup{n}");
        if skip.contains(&user) {
            continue;
        }
        let o = *owner(&format!("{user}@{OURS}"), &NODES).expect("members");
        if o != theirs {
            let i = NODES.iter().position(|x| *x == o).expect("a node");
            return (user, i);
        }
    }
    panic!("no user away from {theirs}");
}

fn members_up(n: &Fedrouter) -> usize {
    http_get(n.admin, "/status/cluster", Duration::from_secs(5))
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["live"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

fn forwarded_total(nodes: &[Fedrouter]) -> f64 {
    nodes
        .iter()
        .map(|n| {
            http_get(n.admin, "/metrics", Duration::from_secs(5))
                .map(|(_, body)| metric_sum(&body, "fedrouter_cluster_forwarded_total", &[]))
                .unwrap_or(0.0)
        })
        .sum()
}

/// The flow both ways between Prosody's users and fedrouter users on non-owner nodes.
pub fn prosody_with_a_cluster_of_three() {
    crate::prosody::require_installed();
    let dir = tempfile::Builder::new()
        .prefix("interop-cluster-")
        .tempdir()
        .expect("temporary folder");
    let ca = TestCa::new("fedrouter cluster interop CA").expect("test CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.ca_cert_pem()).expect("write CA");

    let mut records = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let host = format!("{node}.{OURS}");
        records.push(srv("_xmpp-server", OURS, &host, 5269));
        records.push(a(&host, node_ip(i)));
    }
    let theirs_host = format!("xmpp.{THEIRS}");
    records.push(srv("_xmpp-server", THEIRS, &theirs_host, 5269));
    records.push(a(&theirs_host, ip(2)));
    let dns = ZoneServer::start(SocketAddr::new(ip(3).into(), 53), records)
        .unwrap_or_else(|e| panic!("DNS on {}:53: {e}", ip(3)));

    let theirs = ca.issue(THEIRS).expect("certificate for gmail.test");
    let prosody = Prosody::start(ProsodySpec {
        host: THEIRS.into(),
        addr: ip(2),
        dns: ip(3),
        cert_pem: theirs.chain_pem(),
        key_pem: theirs.key_pem(),
        s2s: S2sPolicy {
            require_encryption: false,
            secure_auth: false,
            cafile: None,
            bidi: false,
            stream_management: true,
        },
    });
    prosody.register("jdoe1", PASSWORD);
    prosody.register("jdoe2", PASSWORD);

    let nats = NatsServer::start(ip(4));
    let pg_url = pg::fresh_database();
    let ours = ca.issue(OURS).expect("certificate for cupdomain.test");
    let mut nodes: Vec<Fedrouter> = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let fr = node_ip(i);
        let toml = format!(
            r#"domains = ["{OURS}"]
shards = 2

[listen]
s2s = ["{fr}:5269"]
s2s_tls = []
c2s = ["{fr}:5222"]
admin = "{fr}:9269"

[dns]
nameservers = ["{dns}:53"]
timeout = "2s"

[tls]
trust = ["ca.pem"]

[[tls.certificate]]
domain = "{OURS}"
cert = "ours.crt"
key = "ours.key"

{policy}

[s2s]
dialback_secret = "{SECRET_HEX}"

[store]
backend = "postgres"
url = {pg_url:?}

[cluster]
node = "{node}"
nats = ["{nats}"]
heartbeat = "200ms"
failure_timeout = "1s"
"#,
            dns = ip(3),
            policy = Profile::Google.fedrouter_policy(),
            nats = nats.url(),
        );
        nodes.push(Fedrouter::start_with(
            node,
            &toml,
            &[
                ("ca.pem", &ca.ca_cert_pem()),
                ("ours.crt", &ours.chain_pem()),
                ("ours.key", &ours.key_pem()),
            ],
        ));
    }
    // Bounded: 20 s of 50 ms polls until every node sees three members.
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.iter().any(|n| members_up(n) != 3) {
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed on three members"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (u1, i1) = user_away_from_streams(&[]);
    let (u2, i2) = user_away_from_streams(std::slice::from_ref(&u1));
    for u in [&u1, &u2] {
        add_user(&nodes[0].config_path(), &format!("{u}@{OURS}"), PASSWORD);
    }
    let login_ours = |user: &str, node: usize| {
        let t = Target {
            addr: SocketAddr::new(node_ip(node).into(), 5222),
            domain: OURS.into(),
            cert: ca_pem.clone(),
        };
        Client::login_with(&t, Mech::ScramSha256, user, PASSWORD, Some("desk"))
    };
    let login_theirs = |user: &str| {
        let t = Target {
            addr: prosody.c2s(),
            domain: THEIRS.into(),
            cert: ca_pem.clone(),
        };
        Client::login_with(&t, Mech::ScramSha1, user, PASSWORD, Some("phone"))
    };

    // fedrouter's user initiates, then Prosody's user initiates.
    let theirs = owner(THEIRS, &NODES).copied().expect("members");
    let third = |home: usize| {
        (0..NODES.len())
            .find(|&k| k != home && NODES[k] != theirs)
            .expect("a third node")
    };
    for (user, node, jdoe, we_initiate) in [(&u1, i1, "jdoe1", true), (&u2, i2, "jdoe2", false)] {
        let mut cup = login_ours(user, third(node));
        let mut jd = login_theirs(jdoe);
        {
            let mut c = Side {
                client: &mut cup,
                bare: format!("{user}@{OURS}"),
                server: "fedrouter",
            };
            let mut j = Side {
                client: &mut jd,
                bare: format!("{jdoe}@{THEIRS}"),
                server: "prosody",
            };
            if we_initiate {
                subscription_flow(&mut c, &mut j);
            } else {
                subscription_flow(&mut j, &mut c);
            }
        }
        cup.close();
        jd.close();
    }
    // `fedrouter ping` works on every node, whichever owns gmail.test (its outbound
    // streams) and cupdomain.test's own entity: the answer comes back to the asking node.
    for n in &nodes {
        crate::server::assert_pong(&n.ping(THEIRS), &format!("ping from {}", n.name));
    }
    assert!(
        forwarded_total(&nodes) > 0.0,
        "no stanza crossed nodes, though the users' sessions and gmail.test's streams are on different nodes"
    );
    let relayed: f64 = nodes
        .iter()
        .map(|n| {
            http_get(n.admin, "/metrics", Duration::from_secs(5))
                .map(|(_, body)| {
                    metric_sum(
                        &body,
                        "fedrouter_cluster_session_messages_total",
                        &[("dir", "in")],
                    )
                })
                .unwrap_or(0.0)
        })
        .sum();
    assert!(
        relayed > 0.0,
        "no session message between a client's node and its home, though they differ"
    );
    // The end states, from the shared store: u1 unsubscribed from jdoe1 (From), jdoe2
    // unsubscribed from u2 (To).
    let mut store = PostgresStore::connect(PostgresOptions::new(&pg_url)).expect("store");
    for (user, contact, want) in [(&u1, "jdoe1", "from"), (&u2, "jdoe2", "to")] {
        let bare = format!("{user}@{OURS}");
        let contact = format!("{contact}@{THEIRS}");
        let (_, items) = store.roster(&bare).expect("roster");
        let item = items
            .iter()
            .find(|i| i.contact == contact)
            .unwrap_or_else(|| panic!("{bare} has no {contact}: {items:?}"));
        assert_eq!(
            item.subscription.as_str(),
            want,
            "{bare}'s item for {contact}: {item:?}"
        );
    }
    drop(nodes);
    drop(prosody);
    drop(dns);
}
