//! A cluster of three `fedrouter serve` nodes (issue 17, DESIGN.md "Cluster") end to end:
//! one real nats-server (`common/nats.rs`, `.ci/setup-nats`), one real PostgreSQL
//! database shared by the nodes (`common/postgres.rs`, `.ci/setup-postgres`), real
//! client sockets (`common/xmpp.rs`), a scripted remote domain `remote.test` (its
//! outbound stream to the cluster is a raw [`Peer`]; its authoritative and receiving
//! server is a [`FakeServer`]) and the test's own DNS zone.
//!
//! - **Membership**: three nodes (`[cluster]`, `heartbeat = "200ms"`,
//!   `failure_timeout = "1s"`) each see three members up in `/status/cluster`.
//! - **Routing**: `remote.test` authenticates (dialback) an inbound stream to one node and
//!   sends presence subscription requests to three users, one owned by each node
//!   (rendezvous hashing over the live members, `fedrouter::router::rendezvous`). Each
//!   user logs in to the first node, is sent to its owner with `<see-other-host/>` (RFC
//!   6120 §4.9.3.19) when that is another node, and gets the request there; the answers
//!   (`subscribed`) reach `remote.test` through the one outbound stream its owner opens.
//!   The nodes count what they forwarded and received over NATS.
//! - **A node dies**: the owner of `remote.test` and of two offline users is killed
//!   (SIGKILL) after the requests to those users are durable (in PostgreSQL: pending in,
//!   RFC 6121 §3.1.3). The survivors see two members; the inbound stream (on a survivor)
//!   keeps working; the two users log in on their new owners and get the requests made
//!   before the kill; new requests and all the answers complete through the survivors,
//!   and `remote.test` gets them over a new outbound stream.
//! - **NATS dies under load** (SIGKILL, then started again on the same port): every node
//!   shows NATS `down` and keeps its view; requests keep arriving on the inbound stream;
//!   the entry node still delivers to its own user, and what crosses nodes (requests to
//!   the others, the answers to `remote.test`'s owner) waits in the backlogs and is
//!   delivered once NATS is back; every node counts a reconnection.
//!
//! Each test has its own addresses ([`Layout`]: 127.0.183.0/24 from .0 and from .100,
//! 127.0.198.0/24): DNS zone on `+1`, NATS on `+2`, nodes on `+11`–`+13` (5222 C2S, 5269
//! S2S, 9269 admin), `remote.test` on `+50`. PostgreSQL is the test process's own server
//! (127.0.178.1, `common/postgres.rs`). Every wait is bounded and waits on an event (a
//! stanza, a status, a store row).

#[path = "common/c2s_client.rs"]
mod c2s_client;
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

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fedrouter::dialback::DialbackSecret;
use fedrouter::router::rendezvous::owner;
use fedrouter::router::{bare_key, domain_key};
use fedrouter::store::postgres::{PostgresOptions, PostgresStore};
use fedrouter::store::Store as _;
use fedrouter::xml::ns;
use fedrouter_testkit::zone::{ZoneRecord, ZoneServer};
use nats::NatsServer;
use peer::{db_result, header, FakeServer, Peer};
use server::{add_user, config, http_get, ip, srv, xmpp_server, Fedrouter, DNS_PORT, GOOGLE_STYLE};
use xmpp::{attr, is, is_stanza, jid_matches, node, Client, Mech, Target, NS_BIND};

/// The deployment's domain, hosted by every node.
const DOMAIN: &str = "a.test";
/// The remote domain.
const REMOTE: &str = "remote.test";
/// The node names, in the order of their addresses (`.11`, `.12`, `.13`).
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Every user's password.
const PASSWORD: &str = "cluster horse battery";
/// `s2s.dialback_secret`, the same on every node (hex).
const CLUSTER_SECRET_HEX: &str = "6c7573746572207365637265742c20746865207361";

/// Longest wait for the members to agree on a view.
const MEMBERS_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for one stanza or answer.
const ANSWER: Duration = Duration::from_secs(20);

/// Where one test's parts listen: in `127.0.NET.0/24`, from host `BASE` on (tests on
/// one /24 use different bases): the DNS zone on `BASE+1` (port [`DNS_PORT`]), NATS on
/// `BASE+2`, the nodes on `BASE+11` to `BASE+13`, `remote.test` on `BASE+50`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    net: u8,
    base: u8,
}

impl Layout {
    fn host(self, h: u8) -> Ipv4Addr {
        ip(self.net, self.base + h)
    }

    fn dns(self) -> SocketAddr {
        SocketAddr::new(self.host(1).into(), DNS_PORT)
    }

    fn nats(self) -> Ipv4Addr {
        self.host(2)
    }

    /// Node `i` ([`NODES`] order).
    fn node(self, i: usize) -> Ipv4Addr {
        self.host(11 + i as u8)
    }

    /// Node `i`'s `cluster.c2s_address`.
    fn c2s(self, i: usize) -> String {
        format!("{}:5222", self.node(i))
    }

    fn remote(self) -> Ipv4Addr {
        self.host(50)
    }
}

/// One test's lab: DNS, NATS, the shared database, `remote.test`'s server and the nodes.
struct Lab {
    lay: Layout,
    pg_url: String,
    remote_secret: DialbackSecret,
    remote: FakeServer,
    /// The nodes, [`NODES`] order.
    nodes: Vec<Fedrouter>,
    /// Whether each node runs (not killed by the test).
    alive: [bool; 3],
    nats: NatsServer,
    _dns: ZoneServer,
}

/// Node `i`'s configuration: [`server::config`] plus C2S, the cluster, the shared store
/// and secret, Google-style federation.
fn node_config(lay: Layout, i: usize, nats_url: &str, pg_url: &str) -> String {
    let addr = lay.node(i);
    let extra = format!(
        r#"{GOOGLE_STYLE}
[s2s]
dialback_secret = "{CLUSTER_SECRET_HEX}"

[cluster]
node = "{node}"
nats = ["{nats_url}"]
heartbeat = "200ms"
failure_timeout = "1s"
backlog = 10000
c2s_address = "{c2s}"

[store]
backend = "postgres"
url = {pg_url:?}
"#,
        node = NODES[i],
        c2s = lay.c2s(i),
    );
    let text = config(lay.net, addr, &[DOMAIN], 2, &extra);
    let default_dns = SocketAddr::new(ip(lay.net, 1).into(), DNS_PORT).to_string();
    assert!(
        text.contains("c2s = []") && text.contains(&default_dns),
        "server::config changed: {text}"
    );
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
        .replace(&default_dns, &lay.dns().to_string())
}

impl Lab {
    /// Starts DNS, NATS, a fresh database, `remote.test` and the three nodes (one after
    /// the other: the first creates the schema), and adds `users` (localparts).
    fn start(lay: Layout, users: &[&str]) -> Lab {
        let remote_secret = DialbackSecret::new(b"remote.test's dialback secret!!!");
        let remote = FakeServer::start(
            SocketAddr::new(lay.remote().into(), 5269),
            REMOTE,
            remote_secret.clone(),
        );
        // The deployment's SRV records name every node, equal priority (DESIGN.md).
        let mut records: Vec<ZoneRecord> = xmpp_server(REMOTE, lay.remote());
        for (i, name) in NODES.iter().enumerate() {
            let host = format!("{name}.{DOMAIN}");
            records.push(srv("_xmpp-server", DOMAIN, &host, 5269));
            records.push(server::a(&host, lay.node(i)));
        }
        let dns = ZoneServer::start(lay.dns(), records).expect("start the zone server");
        let nats = NatsServer::start(lay.nats());
        let pg_url = pg::fresh_database();
        let mut nodes = Vec::new();
        for (i, name) in NODES.iter().enumerate() {
            nodes.push(Fedrouter::start(
                name,
                &node_config(lay, i, &nats.url(), &pg_url),
            ));
        }
        for u in users {
            add_user(&nodes[0].config_path(), &format!("{u}@{DOMAIN}"), PASSWORD);
        }
        Lab {
            lay,
            pg_url,
            remote_secret,
            remote,
            nodes,
            alive: [true; 3],
            nats,
            _dns: dns,
        }
    }

    /// Node `i`'s C2S target (trusting its own generated certificate).
    fn target(&self, i: usize) -> Target {
        Target::new(
            SocketAddr::new(self.lay.node(i).into(), 5222),
            DOMAIN,
            &self.nodes[i].dir().join("data"),
        )
    }

    /// The live nodes' names.
    fn live(&self) -> Vec<&'static str> {
        (0..NODES.len())
            .filter(|&i| self.alive[i])
            .map(|i| NODES[i])
            .collect()
    }

    /// The index of the node that owns `key` among the live nodes.
    fn owner_of(&self, key: &str) -> usize {
        let live = self.live();
        let o = owner(key, &live).expect("a live node");
        NODES.iter().position(|n| n == o).expect("a node name")
    }

    /// SIGKILL node `i`.
    fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.alive[i] = false;
    }

    /// Waits until every live node's cluster status shows exactly the live nodes up and
    /// NATS up; returns each node's epoch then (`None` for a dead node).
    fn wait_members(&self) -> [Option<u64>; 3] {
        let want = self.live();
        let deadline = Instant::now() + MEMBERS_WAIT;
        let mut epochs = [None; 3];
        for i in (0..NODES.len()).filter(|&i| self.alive[i]) {
            let mut last = None;
            // Bounded: MEMBERS_WAIT / 50 ms turns at most, over all nodes.
            loop {
                let s = cluster_status(&self.nodes[i]);
                if let Some(s) = &s {
                    if s["nats"] == "up" && members_up(s) == want {
                        epochs[i] = s["epoch"].as_u64();
                        break;
                    }
                }
                last = s.or(last);
                assert!(
                    Instant::now() < deadline,
                    "{}: the cluster status does not show {want:?} up within {MEMBERS_WAIT:?}; \
                     last status: {}",
                    NODES[i],
                    last.map_or(
                        "none (no /status/cluster, /status or /health \"cluster\")".into(),
                        |v| v.to_string()
                    )
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        epochs
    }

    /// Waits until every live node's cluster status shows NATS `state` (`"up"`,
    /// `"down"`); checks that each still shows every live node up (a node keeps its view
    /// while its NATS connection is down).
    fn wait_nats(&self, state: &str) {
        let want = self.live();
        let deadline = Instant::now() + MEMBERS_WAIT;
        for i in (0..NODES.len()).filter(|&i| self.alive[i]) {
            let mut last = None;
            // Bounded: MEMBERS_WAIT / 50 ms turns at most, over all nodes.
            loop {
                let s = cluster_status(&self.nodes[i]);
                if let Some(s) = &s {
                    if s["nats"] == state {
                        assert_eq!(members_up(s), want, "{}: the view changed: {s}", NODES[i]);
                        break;
                    }
                }
                last = s.or(last);
                assert!(
                    Instant::now() < deadline,
                    "{}: NATS not {state} in the cluster status within {MEMBERS_WAIT:?}; last: {last:?}",
                    NODES[i]
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Opens `remote.test`'s inbound stream to node `i` and authenticates it with
    /// dialback (node `i` checks the key with `remote.test`'s authoritative server).
    fn inbound(&self, i: usize) -> Peer {
        let mut p = Peer::connect(SocketAddr::new(self.lay.node(i).into(), 5269));
        p.send(header(Some(REMOTE), DOMAIN).as_bytes())
            .expect("send the stream header");
        assert!(
            p.read_until_contains("</stream:features>", ANSWER),
            "{}: no stream features: {:?}",
            NODES[i],
            p.text()
        );
        let id = p.stream_id().expect("a stream id");
        let key = self.remote_secret.key(DOMAIN, REMOTE, &id);
        p.send(db_result(REMOTE, DOMAIN, &key).as_bytes())
            .expect("send db:result");
        assert!(
            p.read_until(ANSWER, |t| t.contains("<db:result")),
            "{}: no dialback answer: {:?}",
            NODES[i],
            p.text()
        );
        assert_eq!(
            p.db_result_type(DOMAIN, REMOTE).as_deref(),
            Some("valid"),
            "{}: {:?}",
            NODES[i],
            p.text()
        );
        p
    }

    /// Waits until `remote.test` received a presence of `type_` from `from` (bare JID)
    /// to `to`; returns it.
    fn remote_got(&self, type_: &str, from: &str, to: &str) -> String {
        let deadline = Instant::now() + ANSWER;
        // Bounded: ANSWER / 20 ms turns.
        loop {
            if let Some(s) = self.remote.stanzas().into_iter().find(|s| {
                is_presence(s, type_)
                    && attr(s, "from").is_some_and(|f| jid_matches(&f, from))
                    && attr(s, "to").is_some_and(|t| jid_matches(&t, to))
            }) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{REMOTE} did not get presence type={type_} from {from} to {to} within \
                 {ANSWER:?}; it got: {:#?}",
                self.remote.stanzas()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the shared store holds `contact`'s request to `user` as pending in
    /// (RFC 6121 §3.1.3): it is durable, and survives its owner.
    fn wait_pending_in(&self, user: &str, contact: &str) {
        let mut store = PostgresStore::connect(PostgresOptions::new(&self.pg_url))
            .expect("connect to the shared store");
        let want = (user.to_owned(), contact.to_owned());
        let deadline = Instant::now() + ANSWER;
        // Bounded: ANSWER / 20 ms turns.
        loop {
            let pending = store
                .pending_in()
                .expect("read pending subscription requests");
            if pending.contains(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{contact}'s request to {user} not durable within {ANSWER:?}; pending in: \
                 {pending:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sum over live nodes of counter `name`.
    fn metric_sum(&self, name: &str) -> f64 {
        (0..NODES.len())
            .filter(|&i| self.alive[i])
            .map(|i| self.nodes[i].metric(name, &[]).unwrap_or_default())
            .sum()
    }
}

/// The node's cluster status: `/status/cluster`, or the `"cluster"` object of `/status`
/// or `/health`; `None` when none answers one.
fn cluster_status(n: &Fedrouter) -> Option<serde_json::Value> {
    for (path, field) in [
        ("/status/cluster", None),
        ("/status", Some("cluster")),
        ("/health", Some("cluster")),
    ] {
        let Ok((200, body)) = http_get(n.admin, path, Duration::from_secs(5)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let v = match field {
            Some(f) => v[f].clone(),
            None => v,
        };
        if v["node"].is_string() && v["members"].is_array() {
            return Some(v);
        }
    }
    None
}

/// The names of the members a status shows `up`, sorted.
fn members_up(s: &serde_json::Value) -> Vec<&str> {
    let mut up: Vec<&str> = s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == "up")
        .filter_map(|m| m["node"].as_str())
        .collect();
    up.sort_unstable();
    up
}

fn is_presence(xml: &str, type_: &str) -> bool {
    is_stanza_any(xml, "presence") && attr(xml, "type").as_deref() == Some(type_)
}

/// A stanza named `kind` in either namespace (the fake server keeps `jabber:server`
/// stanzas, the client gets `jabber:client` ones).
fn is_stanza_any(xml: &str, kind: &str) -> bool {
    is_stanza(xml, kind) || is(xml, kind, "jabber:server")
}

/// A localpart of the form `{prefix}{n}` whose bare JID node `want` (an index of
/// [`NODES`]) owns among `live`; `taken` are skipped.
fn user_owned_by(prefix: &str, want: usize, live: &[&str], taken: &[String]) -> String {
    for n in 0..10_000 {
        let u = format!("{prefix}{n}");
        if taken.contains(&u) {
            continue;
        }
        let jid = format!("{u}@{DOMAIN}");
        if owner(&bare_key(&jid), live).is_some_and(|o| *o == NODES[want]) {
            return u;
        }
    }
    panic!("no {prefix}N owned by {} among {live:?}", NODES[want]);
}

/// Logs `user` in starting at node `first`, following `<see-other-host/>` (at most one
/// hop per node): STARTTLS, SCRAM-SHA-256, then the restarted stream answers either its
/// features or the redirect, and so may the bind. Returns the bound client, the node it
/// is on, and the `see-other-host` addresses it was given on the way.
fn login(lab: &Lab, first: usize, user: &str) -> (Client, usize, Vec<String>) {
    let mut at = first;
    let mut redirects = Vec::new();
    for _ in 0..NODES.len() {
        let t = lab.target(at);
        let mut c = Client::connect(t.addr, DOMAIN);
        c.name = format!("{user} on {}", NODES[at]);
        let features = c.open();
        assert!(features.contains("<starttls"), "{}: {features}", c.name);
        c.starttls(&t.cert);
        if let Err(f) = c.auth(Mech::ScramSha256, user, PASSWORD) {
            c.fail(&format!("SASL failed: {f}"));
        }
        c.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='{}' to='{DOMAIN}' version='1.0'>",
            ns::STREAMS
        ));
        let is_error = |x: &str| is(x, "error", ns::STREAMS);
        let x = c.expect("the restarted stream's features or a stream error", |x| {
            is(x, "features", ns::STREAMS) || is_error(x)
        });
        let answer = if is_error(&x) {
            x
        } else {
            assert!(x.contains(NS_BIND), "{}: no bind feature: {x}", c.name);
            c.send(&format!(
                "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>r</resource></bind></iq>"
            ));
            c.expect("the bind result or a stream error", |x| {
                is_error(x)
                    || (is_stanza(x, "iq")
                        && attr(x, "id").as_deref() == Some("bind1")
                        && matches!(attr(x, "type").as_deref(), Some("result" | "error")))
            })
        };
        if !is_error(&answer) {
            if attr(&answer, "type").as_deref() != Some("result") {
                c.fail(&format!("bind refused: {answer}"));
            }
            c.jid = Some(format!("{user}@{DOMAIN}/r"));
            return (c, at, redirects);
        }
        let n = node(&answer);
        let host = n
            .children
            .iter()
            .find(|ch| ch.name == "see-other-host")
            .map(|ch| ch.text.trim().to_owned())
            .unwrap_or_else(|| {
                c.fail(&format!(
                    "a stream error other than see-other-host: {answer}"
                ))
            });
        c.expect_closed();
        at = (0..NODES.len())
            .find(|&i| lab.lay.c2s(i) == host)
            .unwrap_or_else(|| panic!("{user}: see-other-host {host:?} is no node's c2s_address"));
        redirects.push(host);
    }
    panic!("{user}: more redirects than nodes: {redirects:?}");
}

/// Logs `user` in (see [`login`]), checks it ended on `owner` and was redirected exactly
/// when `first` is not the owner; requests the roster and sends initial presence.
fn online(lab: &Lab, first: usize, user: &str, owner: usize) -> Client {
    let (mut c, at, redirects) = login(lab, first, user);
    assert_eq!(
        NODES[at], NODES[owner],
        "{user} ended on {} but {} owns it (redirects {redirects:?})",
        NODES[at], NODES[owner]
    );
    if first == owner {
        assert!(
            redirects.is_empty(),
            "{user}: redirected from its owner: {redirects:?}"
        );
    } else {
        assert_eq!(redirects, vec![lab.lay.c2s(owner)], "{user}");
    }
    c.roster_get();
    c.send("<presence/>");
    c
}

/// `user` gets `from`'s subscription request and approves it.
fn approve(c: &mut Client, from: &str) {
    c.expect_presence(from, Some("subscribe"));
    c.send(&format!("<presence type='subscribed' to='{from}'/>"));
}

fn subscribe(p: &mut Peer, from: &str, to: &str) {
    p.send(format!("<presence type='subscribe' from='{from}' to='{to}' id='s-{to}'/>").as_bytes())
        .expect("send a subscription request on the inbound stream");
}

/// Waits until counter `name` summed over live nodes reaches `want`.
fn wait_metric_sum(lab: &Lab, name: &str, want: f64) {
    let deadline = Instant::now() + ANSWER;
    // Bounded: ANSWER / 50 ms turns.
    loop {
        let v = lab.metric_sum(name);
        if v >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} summed over the live nodes is {v}, not {want}, after {ANSWER:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

    // (b) Each user logs in on n1 and lands on its owner.
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
    // n1, where every user logged in first, sent away the two it does not own.
    let redirects = lab.nodes[0].metric("fedrouter_c2s_redirects_total", &[]);
    assert_eq!(redirects, Some(2.0), "n1's see-other-host redirects");

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

    // SIGKILL the victim mid-flow.
    lab.kill(victim);
    let after = lab.wait_members();
    for i in [entry, other] {
        assert!(
            after[i] > before[i],
            "{}: the epoch moves on with the membership: before {before:?}, after {after:?}",
            NODES[i]
        );
    }
    // The online user's session was on a survivor: still there.
    s.sync();

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
    lab.nats.kill();
    lab.wait_nats("down");

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
    lab.nats.restart();
    lab.wait_nats("up");
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
