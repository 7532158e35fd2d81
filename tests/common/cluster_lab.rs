//! A cluster of three `fedrouter serve` nodes for `tests/cluster.rs` (issue 17): the
//! addresses of one test ([`Layout`]), the lab that starts DNS, NATS, a fresh shared
//! PostgreSQL database, the remote domain's server and the nodes ([`Lab`]), and what the
//! tests do with it: wait for the members to agree, open the remote domain's inbound
//! stream, log users in following `<see-other-host/>`, look for what the remote domain
//! and the shared store got.
//!
//! It needs sibling modules `c2s_client`, `nats`, `peer`, `pg` (common/postgres.rs),
//! `server` and `xmpp` in the test crate.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::nats::NatsServer;
use super::peer::{db_result, header, FakeServer, Peer};
use super::server::{
    add_user, config, http_get, ip, srv, xmpp_server, Fedrouter, DNS_PORT, GOOGLE_STYLE,
};
use super::xmpp::{attr, is, is_stanza, jid_matches, node, Client, Mech, Target, NS_BIND};
use fedrouter::dialback::DialbackSecret;
use fedrouter::router::bare_key;
use fedrouter::router::rendezvous::owner;
use fedrouter::store::postgres::{PostgresOptions, PostgresStore};
use fedrouter::store::Store as _;
use fedrouter::xml::ns;
use fedrouter_testkit::zone::{ZoneRecord, ZoneServer};

/// The deployment's domain, hosted by every node.
pub const DOMAIN: &str = "a.test";
/// The remote domain.
pub const REMOTE: &str = "remote.test";
/// The node names, in the order of their addresses (`.11`, `.12`, `.13`).
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Every user's password.
pub const PASSWORD: &str = "cluster horse battery";
/// `s2s.dialback_secret`, the same on every node (hex).
pub const CLUSTER_SECRET_HEX: &str = "6c7573746572207365637265742c20746865207361";

/// Longest wait for the members to agree on a view.
pub const MEMBERS_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for one stanza or answer.
pub const ANSWER: Duration = Duration::from_secs(20);

/// Where one test's parts listen: in `127.0.NET.0/24`, from host `BASE` on (tests on
/// one /24 use different bases): the DNS zone on `BASE+1` (port [`DNS_PORT`]), NATS on
/// `BASE+2`, the nodes on `BASE+11` to `BASE+13`, `remote.test` on `BASE+50`.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The /24: `127.0.NET.0`.
    pub net: u8,
    /// The first host number of this test's range.
    pub base: u8,
}

impl Layout {
    pub fn host(self, h: u8) -> Ipv4Addr {
        ip(self.net, self.base + h)
    }

    pub fn dns(self) -> SocketAddr {
        SocketAddr::new(self.host(1).into(), DNS_PORT)
    }

    pub fn nats(self) -> Ipv4Addr {
        self.host(2)
    }

    /// Node `i` ([`NODES`] order).
    pub fn node(self, i: usize) -> Ipv4Addr {
        self.host(11 + i as u8)
    }

    /// Node `i`'s `cluster.c2s_address`.
    pub fn c2s(self, i: usize) -> String {
        format!("{}:5222", self.node(i))
    }

    pub fn remote(self) -> Ipv4Addr {
        self.host(50)
    }
}

/// One test's lab: DNS, NATS, the shared database, `remote.test`'s server and the nodes.
pub struct Lab {
    pub lay: Layout,
    pub pg_url: String,
    pub remote_secret: DialbackSecret,
    pub remote: FakeServer,
    /// The nodes, [`NODES`] order.
    pub nodes: Vec<Fedrouter>,
    /// Whether each node runs (not killed by the test).
    pub alive: [bool; 3],
    /// `cluster.c2s_sessions = "redirect"` (else `"stay"`, the default).
    pub redirect: bool,
    pub nats: NatsServer,
    pub _dns: ZoneServer,
}

/// Node `i`'s configuration: [`super::server::config`] plus C2S, the cluster, the shared store
/// and secret, Google-style federation; with `redirect`, `cluster.c2s_sessions =
/// "redirect"` (else the default, `"stay"`).
pub fn node_config(lay: Layout, i: usize, nats_url: &str, pg_url: &str, redirect: bool) -> String {
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
{sessions}

[store]
backend = "postgres"
url = {pg_url:?}
"#,
        node = NODES[i],
        c2s = lay.c2s(i),
        sessions = if redirect {
            "c2s_sessions = \"redirect\""
        } else {
            ""
        },
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
    pub fn start(lay: Layout, users: &[&str]) -> Lab {
        Lab::start_with(lay, users, false)
    }

    /// [`Lab::start`]; with `redirect`, clients are sent to their owner node with
    /// `<see-other-host/>` instead of staying where they connected.
    pub fn start_with(lay: Layout, users: &[&str], redirect: bool) -> Lab {
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
            records.push(super::server::a(&host, lay.node(i)));
        }
        let dns = ZoneServer::start(lay.dns(), records).expect("start the zone server");
        let nats = NatsServer::start(lay.nats());
        let pg_url = super::pg::fresh_database();
        let mut nodes = Vec::new();
        for (i, name) in NODES.iter().enumerate() {
            nodes.push(Fedrouter::start(
                name,
                &node_config(lay, i, &nats.url(), &pg_url, redirect),
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
            redirect,
            nats,
            _dns: dns,
        }
    }

    /// Node `i`'s C2S target (trusting its own generated certificate).
    pub fn target(&self, i: usize) -> Target {
        Target::new(
            SocketAddr::new(self.lay.node(i).into(), 5222),
            DOMAIN,
            &self.nodes[i].dir().join("data"),
        )
    }

    /// The live nodes' names.
    pub fn live(&self) -> Vec<&'static str> {
        (0..NODES.len())
            .filter(|&i| self.alive[i])
            .map(|i| NODES[i])
            .collect()
    }

    /// The index of the node that owns `key` among the live nodes.
    pub fn owner_of(&self, key: &str) -> usize {
        let live = self.live();
        let o = owner(key, &live).expect("a live node");
        NODES.iter().position(|n| n == o).expect("a node name")
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.alive[i] = false;
    }

    /// Starts killed node `i` again (same configuration; a new incarnation).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.alive[i] = true;
    }

    /// Waits until every live node's cluster status shows exactly the live nodes up and
    /// NATS up; returns each node's epoch then (`None` for a dead node).
    pub fn wait_members(&self) -> [Option<u64>; 3] {
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
    pub fn wait_nats(&self, state: &str) {
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
    pub fn inbound(&self, i: usize) -> Peer {
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
    pub fn remote_got(&self, type_: &str, from: &str, to: &str) -> String {
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
    pub fn wait_pending_in(&self, user: &str, contact: &str) {
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
    pub fn metric_sum(&self, name: &str) -> f64 {
        (0..NODES.len())
            .filter(|&i| self.alive[i])
            .map(|i| self.nodes[i].metric(name, &[]).unwrap_or_default())
            .sum()
    }
}

/// The node's cluster status: `/status/cluster`, or the `"cluster"` object of `/status`
/// or `/health`; `None` when none answers one.
pub fn cluster_status(n: &Fedrouter) -> Option<serde_json::Value> {
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
pub fn members_up(s: &serde_json::Value) -> Vec<&str> {
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

pub fn is_presence(xml: &str, type_: &str) -> bool {
    is_stanza_any(xml, "presence") && attr(xml, "type").as_deref() == Some(type_)
}

/// A stanza named `kind` in either namespace (the fake server keeps `jabber:server`
/// stanzas, the client gets `jabber:client` ones).
pub fn is_stanza_any(xml: &str, kind: &str) -> bool {
    is_stanza(xml, kind) || is(xml, kind, "jabber:server")
}

/// A localpart of the form `{prefix}{n}` whose bare JID node `want` (an index of
/// [`NODES`]) owns among `live`; `taken` are skipped.
pub fn user_owned_by(prefix: &str, want: usize, live: &[&str], taken: &[String]) -> String {
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
pub fn login(lab: &Lab, first: usize, user: &str) -> (Client, usize, Vec<String>) {
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

/// Logs `user` in (see [`login`]) and checks where it ended: with `c2s_sessions =
/// "stay"` on `first`, never redirected; with "redirect" on `owner`, redirected exactly
/// when `first` is not the owner. Requests the roster and sends initial presence.
pub fn online(lab: &Lab, first: usize, user: &str, owner: usize) -> Client {
    let (mut c, at, redirects) = login(lab, first, user);
    if !lab.redirect {
        assert!(
            at == first && redirects.is_empty(),
            "{user} stays where it connected ({}), but was redirected: {redirects:?}",
            NODES[first]
        );
        c.roster_get();
        c.send("<presence/>");
        return c;
    }
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
pub fn approve(c: &mut Client, from: &str) {
    c.expect_presence(from, Some("subscribe"));
    c.send(&format!("<presence type='subscribed' to='{from}'/>"));
}

pub fn subscribe(p: &mut Peer, from: &str, to: &str) {
    p.send(format!("<presence type='subscribe' from='{from}' to='{to}' id='s-{to}'/>").as_bytes())
        .expect("send a subscription request on the inbound stream");
}

/// Waits until counter `name` summed over live nodes reaches `want`.
pub fn wait_metric_sum(lab: &Lab, name: &str, want: f64) {
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
