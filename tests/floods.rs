//! Flood limits (issue 21, `[limits]`) against a running server over real sockets:
//!
//! - A scripted remote domain (authenticated by dialback) sends 100,000 subscription
//!   requests, to many local users and many to one: the store's pending inbound rows
//!   grow by at most the configured bounds, every other request gets an error back
//!   (`policy-violation` past the rate, `resource-constraint` past a count), and a
//!   legitimate request from another remote domain still reaches its local user.
//! - A roster set past `c2s.max_roster_items` gets `not-allowed` (RFC 6121 §2.3.3).
//! - Unauthenticated connections and SASL failures are limited per client address,
//!   while another address still logs in.
//!
//! Loopback `127.0.180.x` to `127.0.183.x` only.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use fedrouter::dialback::DialbackSecret;
use peer::{db_result, header, FakeServer, Peer};
use server::{add_user, config, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};
use xmpp::{attr, condition, Client, Mech, Target};

const PASSWORD: &str = "s3cret horse";

/// Bound of each wait for one answer.
const ANSWER: Duration = Duration::from_secs(30);

/// Bound of the whole flood's processing.
const FLOOD_DONE: Duration = Duration::from_secs(300);

fn s2s(net: u8, host: u8) -> SocketAddr {
    SocketAddr::new(ip(net, host).into(), 5269)
}

/// `server::config` with a C2S listener on `addr:5222`.
fn c2s_config(net: u8, addr: Ipv4Addr, domains: &[&str], shards: usize, extra: &str) -> String {
    let text = config(net, addr, domains, shards, extra);
    assert!(text.contains("c2s = []"), "server::config changed: {text}");
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

fn target(fr: &Fedrouter, addr: Ipv4Addr, domain: &str) -> Target {
    Target::new(
        SocketAddr::new(addr.into(), 5222),
        domain,
        &fr.dir().join("data"),
    )
}

/// Stored rows holding an unanswered inbound request ("Pending In") from contacts at
/// `domain`, in all and for `user`, read from the running server's database (a
/// read-only WAL reader).
fn pending_rows(data_dir: &Path, domain: &str, user: &str) -> (u64, u64) {
    let db = data_dir.join(fedrouter::store::DB_FILE);
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let all: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM roster WHERE pending_in IS NOT NULL AND contact LIKE ?1",
            [format!("%@{domain}")],
            |r| r.get(0),
        )
        .expect("count pending rows");
    let one: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM roster JOIN users ON users.id = roster.user_id
             WHERE roster.pending_in IS NOT NULL AND users.jid = ?1 AND contact LIKE ?2",
            [user.to_owned(), format!("%@{domain}")],
            |r| r.get(0),
        )
        .expect("count the user's pending rows");
    (all.unsigned_abs(), one.unsigned_abs())
}

/// Opens a stream from `domain` to a.test on `addr` and authenticates it by dialback
/// with `secret` (a.test checks the key with `domain`'s authoritative server).
fn dialback_peer(addr: SocketAddr, domain: &str, secret: &DialbackSecret) -> Peer {
    let mut p = Peer::connect(addr);
    p.send(header(Some(domain), "a.test").as_bytes())
        .expect("send header");
    assert!(
        p.read_until_contains("</stream:features>", ANSWER),
        "no stream features: {:?}",
        p.text()
    );
    let id = p.stream_id().expect("stream id");
    p.send(db_result(domain, "a.test", &secret.key("a.test", domain, &id)).as_bytes())
        .expect("send db:result");
    assert!(
        p.read_until(ANSWER, |t| t.contains("<db:result")),
        "no dialback answer: {:?}",
        p.text()
    );
    assert_eq!(
        p.db_result_type("a.test", domain).as_deref(),
        Some("valid"),
        "{:?}",
        p.text()
    );
    p
}

/// Answers to the flood seen so far at flood.test's server, by kind.
#[derive(Default)]
struct Answers {
    /// `policy-violation` errors.
    rate: usize,
    /// `resource-constraint` errors.
    count: usize,
    /// Anything else.
    other: usize,
    /// Stanzas looked at.
    read: usize,
}

impl Answers {
    /// Waits (bounded by [`FLOOD_DONE`]) until flood.test's stored pending rows plus the
    /// errors it received make `n` (each request is stored or refused); returns the rows
    /// stored, in all and for victim.
    fn wait(&mut self, flood: &FakeServer, data: &Path, n: usize) -> (u64, u64) {
        let deadline = Instant::now() + FLOOD_DONE;
        // Bounded by the deadline; each turn reads what arrived and the store's count.
        loop {
            for s in flood.stanzas_from(self.read) {
                self.read += 1;
                if !s.contains("type='error'") && !s.contains("type=\"error\"") {
                    self.other += 1;
                } else if s.contains("policy-violation") {
                    self.rate += 1;
                } else if s.contains("resource-constraint") {
                    self.count += 1;
                } else {
                    self.other += 1;
                }
            }
            let (stored, victim) = pending_rows(data, "flood.test", "victim@a.test");
            if stored as usize + self.rate + self.count >= n {
                return (stored, victim);
            }
            assert!(
                Instant::now() < deadline,
                "after {FLOOD_DONE:?}: {stored} stored, {} policy-violation, {} resource-constraint, {} other stanzas at flood.test; waiting for {n}",
                self.rate,
                self.count,
                self.other
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Test 1: 100,000 subscription requests from one remote domain (flood.test), the first
/// 1000 to one local user (victim) and answered, then the rest to 20 local users in turn. Limits: 40
/// pending per domain, 10 per user, 2000 requests per minute per domain (so all three
/// limits are reached). Each request is either stored or answered
/// with an error, so the test waits until stored rows plus errors received make 100,000;
/// then at most 40 rows are stored (at most 10 for victim), and the rest came back as
/// errors to flood.test. A request from good.test during the flood reaches carol's
/// client. After a restart the domain's count is read back from the store: one more
/// request from flood.test is refused.
#[test]
fn subscription_flood_is_bounded() {
    const NET: u8 = 180;
    const N: usize = 100_000;
    const USERS: usize = 20;
    const PER_DOMAIN: u64 = 40;
    const PER_USER: u64 = 10;
    /// The first requests, all to victim; the rest go to the 20 users in turn.
    const TO_ONE: usize = 1000;
    let flood_secret = DialbackSecret::new(b"flood.test's dialback secret 32b");
    let good_secret = DialbackSecret::new(b"good.test's dialback secret, 32b");
    let flood = FakeServer::start(s2s(NET, 5), "flood.test", flood_secret.clone());
    let _good = FakeServer::start(s2s(NET, 6), "good.test", good_secret.clone());
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("flood.test", ip(NET, 5)));
    records.extend(xmpp_server("good.test", ip(NET, 6)));
    let _dns = zone(NET, records);
    let extra = format!(
        "[limits]\npending_subscriptions_per_domain = {PER_DOMAIN}\n\
         pending_subscriptions_per_user = {PER_USER}\n\
         subscriptions_per_minute_per_domain = 2000\n\
         [s2s]\nqueue_per_domain = 200000\n{GOOGLE_STYLE}"
    );
    let addr = ip(NET, 2);
    let mut fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, &extra));
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}@a.test")).collect();
    for u in users
        .iter()
        .map(String::as_str)
        .chain(["victim@a.test", "carol@a.test"])
    {
        add_user(&fr.config_path(), u, PASSWORD);
    }
    let mut carol = Client::login(&target(&fr, addr, "a.test"), "carol", PASSWORD, None);
    carol.send("<presence/>");

    let mut p = dialback_peer(s2s(NET, 2), "flood.test", &flood_secret);
    let started = Instant::now();
    let data = fr.dir().join("data");
    let mut answers = Answers::default();
    let mut batch = String::with_capacity(1 << 20);
    for i in 0..N {
        let to = if i < TO_ONE {
            "victim@a.test"
        } else {
            users[i % USERS].as_str()
        };
        batch.push_str(&format!(
            "<presence type='subscribe' from='s{i}@flood.test' to='{to}' id='f{i}'/>"
        ));
        if batch.len() > 64 * 1024 || i + 1 == TO_ONE || i + 1 == N {
            p.send(batch.as_bytes()).expect("send the flood");
            batch.clear();
        }
        if i + 1 == TO_ONE {
            // Many to one first, answered in full before the rest: victim's requests are
            // stored one at a time (each durable before the next), slower than those
            // spread over 20 users, which would otherwise fill the domain's bound first.
            answers.wait(&flood, &data, TO_ONE);
        }
    }
    let written = started.elapsed();

    // During the flood, another remote domain's request gets through.
    let mut g = dialback_peer(s2s(NET, 2), "good.test", &good_secret);
    g.send(b"<presence type='subscribe' from='friend@good.test' to='carol@a.test' id='g1'/>")
        .expect("send the legitimate request");
    // Bounded like the flood: carol's shard may have a backlog of refusals to work off
    // first, on a machine shared with other tests.
    carol.timeout = FLOOD_DONE;
    let seen = carol.expect("the legitimate subscription request", |x| {
        x.starts_with("<presence") && x.contains("friend@good.test") && x.contains("subscribe")
    });
    assert_eq!(attr(&seen, "type").as_deref(), Some("subscribe"), "{seen}");

    // Every request is stored or refused: wait until both add up.
    let (stored, victim) = answers.wait(&flood, &data, N);
    let Answers {
        rate, count, other, ..
    } = answers;
    let done = started.elapsed();
    let refused = |reason: &str| {
        fr.metric("fedrouter_flood_refused_total", &[("reason", reason)])
            .unwrap_or(0.0) as usize
    };
    let counts = format!(
        "{stored} stored ({victim} for victim), {rate} policy-violation, {count} resource-constraint; refused: rate {}, per domain {}, per user {}",
        refused("subscription_rate"),
        refused("pending_per_domain"),
        refused("pending_per_user")
    );
    assert!(stored <= PER_DOMAIN, "{stored} pending rows stored");
    // good.test's request was stored: it is carol's pending request.
    assert_eq!(pending_rows(&data, "good.test", "carol@a.test"), (1, 1));
    // Within the rate's burst (2000), victim's 1000 come first: exactly 10 are stored,
    // and the other users fill the domain's 40.
    assert_eq!(victim, PER_USER, "pending rows for victim: {counts}");
    assert_eq!(stored, PER_DOMAIN, "pending rows from flood.test: {counts}");
    assert_eq!(stored as usize + rate + count, N, "one answer per request");
    assert_eq!(other, 0, "unexpected stanzas at flood.test");
    assert!(rate > 0 && count > 0, "rate {rate}, count {count}");
    // The server stays healthy and says what happened, once per interval.
    assert!(fr.healthy());
    let warns = fr.log_lines(&["flood limit", "flood.test"]);
    assert!(
        !warns.is_empty() && warns.len() * 1000 < rate + count,
        "{} WARN lines naming flood.test for {} refusals: not rate-limited",
        warns.len(),
        rate + count
    );
    assert_eq!(refused("subscription_rate"), rate, "{counts}");
    assert_eq!(refused("pending_per_user"), TO_ONE - PER_USER as usize);
    assert!(refused("pending_per_domain") > 0);
    assert_eq!(
        refused("pending_per_domain") + refused("pending_per_user"),
        count
    );
    p.close();
    g.close();

    // The count survives a restart, even after SIGKILL (read from the store at start,
    // where every accepted request was durable before it was delivered): one more request
    // from flood.test, to a user far from the per-user bound, is refused at once.
    drop(carol);
    fr.kill();
    fr.restart();
    let mut p2 = dialback_peer(s2s(NET, 2), "flood.test", &flood_secret);
    let before = flood.stanza_count();
    p2.send(b"<presence type='subscribe' from='late@flood.test' to='u5@a.test' id='late'/>")
        .expect("send the request after the restart");
    let late = flood
        .wait_stanza(&["id='late'"], ANSWER)
        .unwrap_or_else(|| {
            panic!(
                "no answer to the request after the restart: {:?}",
                flood.stanzas_from(before)
            )
        });
    assert!(late.contains("resource-constraint"), "{late}");
    assert_eq!(
        pending_rows(&data, "flood.test", "victim@a.test"),
        (PER_DOMAIN, PER_USER)
    );
    p2.close();
    eprintln!(
        "subscription_flood_is_bounded: {N} requests written in {written:?}, all answered after {done:?}: {stored} stored ({victim} for victim), {rate} policy-violation, {count} resource-constraint"
    );
}

/// Test 2: a roster set past `c2s.max_roster_items` is refused with `not-allowed`
/// (RFC 6121 §2.3.3), and so is an outbound subscription that would add an item; an
/// update of an existing item still works.
#[test]
fn roster_set_past_the_limit_is_not_allowed() {
    const NET: u8 = 181;
    let addr = ip(NET, 2);
    let _dns = zone(NET, xmpp_server("a.test", addr));
    let fr = Fedrouter::start(
        "a.test",
        &c2s_config(NET, addr, &["a.test"], 2, "[c2s]\nmax_roster_items = 2\n"),
    );
    add_user(&fr.config_path(), "alice@a.test", PASSWORD);
    let mut alice = Client::login(&target(&fr, addr, "a.test"), "alice", PASSWORD, None);
    for contact in ["b@a.test", "c@a.test"] {
        let r = alice.roster_set(&format!("<item jid='{contact}'/>"));
        assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    }
    let e = alice.roster_set("<item jid='d@a.test'/>");
    assert_eq!(attr(&e, "type").as_deref(), Some("error"), "{e}");
    assert_eq!(condition(&e).as_deref(), Some("not-allowed"), "{e}");
    alice.send("<presence type='subscribe' to='e@a.test' id='s1'/>");
    let e = alice.expect_error("presence", "s1");
    assert_eq!(condition(&e).as_deref(), Some("not-allowed"), "{e}");
    let r = alice.roster_set("<item jid='b@a.test' name='B'/>");
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    assert_eq!(alice.roster_get().len(), 2);
}

const STREAMS: &str = "http://etherx.jabber.org/streams";

/// Opens a C2S connection from `source` and sends a stream header; returns the client
/// and the server's first answer after its header: `<stream:features/>` or
/// `<stream:error/>`.
fn open_from(addr: SocketAddr, source: IpAddr) -> (Client, String) {
    let mut c = Client::connect_from(addr, source, "a.test");
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='{STREAMS}' to='a.test' version='1.0'>"
    ));
    let first = c.expect("<stream:features/> or <stream:error/>", |x| {
        xmpp::is(x, "features", STREAMS) || xmpp::is(x, "error", STREAMS)
    });
    (c, first)
}

/// Test 3: per client address, at most 3 unauthenticated connections and 2 SASL
/// failures per window. A 4th connection from 127.0.182.10 gets the stream error
/// `policy-violation`; 127.0.182.11 logs in meanwhile; once one of the three goes away,
/// .10 connects again. After 2 failures from 127.0.182.12, its next connection gets
/// `policy-violation` while .11 still logs in.
#[test]
fn client_addresses_are_limited() {
    const NET: u8 = 182;
    let addr = ip(NET, 2);
    let _dns = zone(NET, xmpp_server("a.test", addr));
    let extra = "[limits]\nc2s_unauthenticated_per_address = 3\n\
                 c2s_auth_failures_per_address = 2\nc2s_auth_failure_window = \"10min\"\n\
                 [c2s]\nauth_failure_delay = \"10ms\"\n";
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, extra));
    add_user(&fr.config_path(), "alice@a.test", PASSWORD);
    let t = target(&fr, addr, "a.test");
    let c2s = t.addr;
    let busy: IpAddr = ip(NET, 10).into();
    let other: IpAddr = ip(NET, 11).into();
    let failing: IpAddr = ip(NET, 12).into();

    let mut held: Vec<Client> = (0..3)
        .map(|_| {
            let (c, f) = open_from(c2s, busy);
            assert!(f.contains("starttls"), "{f}");
            c
        })
        .collect();
    let (_fourth, e) = open_from(c2s, busy);
    assert_eq!(condition(&e).as_deref(), Some("policy-violation"), "{e}");

    let mut ok = Client::login_on(
        Client::connect_from(c2s, other, "a.test"),
        &t,
        Mech::ScramSha256,
        "alice",
        PASSWORD,
        None,
    );
    ok.session();

    // One of the three goes away (the server has closed its side too): its slot comes
    // back. Each try waits for the server's answer; at most 20 tries.
    let mut gone = held.pop().expect("one");
    gone.close();
    gone.expect_closed();
    let mut again = None;
    for _ in 0..20 {
        let (c, f) = open_from(c2s, busy);
        if f.contains("starttls") {
            again = Some(c);
            break;
        }
    }
    assert!(again.is_some(), "127.0.182.10 was not admitted again");

    // SASL failures from .12: the second closes the stream, then .12 is refused.
    for _ in 0..2 {
        let (mut c, f) = Client::login_failure_on(
            Client::connect_from(c2s, failing, "a.test"),
            &t,
            Mech::ScramSha256,
            "alice",
            "wrong",
        );
        assert!(f.contains("not-authorized"), "{f}");
        c.close();
    }
    let (_refused, e) = open_from(c2s, failing);
    assert_eq!(condition(&e).as_deref(), Some("policy-violation"), "{e}");
    let mut ok2 = Client::login_on(
        Client::connect_from(c2s, other, "a.test"),
        &t,
        Mech::ScramSha256,
        "alice",
        PASSWORD,
        Some("second"),
    );
    ok2.session();
    let refusals = |reason: &str| {
        fr.metric("fedrouter_flood_refused_total", &[("reason", reason)])
            .unwrap_or(0.0)
    };
    assert!(refusals("c2s_unauthenticated_per_address") >= 1.0);
    assert!(refusals("c2s_auth_failures_per_address") >= 1.0);
    assert!(!fr.log_lines(&["flood limit", "127.0.182.12"]).is_empty());
}
