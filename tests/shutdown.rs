//! Graceful shutdown with federation traffic in flight: real `fedrouter serve` processes,
//! real client sockets on loopback (`common/xmpp.rs`), plain TCP + dialback between two
//! servers found through SRV records.
//!
//! A shutting-down server closes its streams (RFC 6120 §4.4) and must not open new ones:
//! a stanza generated during the shutdown for a remote domain whose stream is already
//! closed (typically the unavailable presence of a client whose session the shutdown
//! ends, RFC 6121 §4.5.2) is bounced, not sent over a new outbound stream that nothing
//! would close before `shutdown.drain_timeout`.
//!
//! Loopback ranges: `127.0.236.0/24` and `127.0.233.0/24` (`.1:5300` DNS, servers on
//! `.2`/`.3`: 5222 C2S, 5269 S2S, 9269 admin). Every wait is bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use server::{add_user, config, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};
use xmpp::{Client, Target};

const PASSWORD: &str = "s3cret horse";

/// The drain deadline of the server that is stopped: far longer than [`HANG`], so that a
/// shutdown that ends at all within [`HANG`] ended because its streams were closed, not
/// at this deadline.
const DRAIN: Duration = Duration::from_secs(600);

/// Longest wait for something that must happen (a hang catcher, not a speed
/// requirement); far under [`DRAIN`].
const HANG: Duration = Duration::from_secs(60);

/// `server::config` with a C2S listener on `addr:5222`.
fn c2s_config(net: u8, addr: Ipv4Addr, domains: &[&str], shards: usize, extra: &str) -> String {
    let text = config(net, addr, domains, shards, extra);
    assert!(text.contains("c2s = []"), "server::config changed: {text}");
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

fn login(fr: &Fedrouter, addr: Ipv4Addr, domain: &str, user: &str, resource: &str) -> Client {
    let t = Target::new(
        SocketAddr::new(addr.into(), 5222),
        domain,
        &fr.dir().join("data"),
    );
    Client::login(&t, user, PASSWORD, Some(resource))
}

/// alice@a.test (server A, one shard: alice and b.test are owned by the same shard) has
/// bob@b.test (server B) as a subscriber, so her unavailable presence goes to b.test when
/// her session ends. A gets SIGTERM while A→B is open; the shutdown closes A's streams,
/// then alice's session ends (she disconnects; the shutdown closes it anyway), and her
/// unavailable presence finds no open stream to b.test. A must bounce it rather than
/// connect to B again, and exit once its streams are closed, before its `drain_timeout`
/// (which is far longer than the test waits); the new stream it used to open was not
/// closed by the drain, which then lasted the whole `drain_timeout`.
#[test]
fn no_new_outbound_stream_during_shutdown() {
    const NET: u8 = 236;
    let (addr_a, addr_b) = (ip(NET, 2), ip(NET, 3));
    let mut records = xmpp_server("a.test", addr_a);
    records.extend(xmpp_server("b.test", addr_b));
    let _dns = zone(NET, records);
    let drain = format!(
        "{GOOGLE_STYLE}\n[shutdown]\ndrain_timeout = \"{}s\"\n",
        DRAIN.as_secs()
    );
    let mut sa = Fedrouter::start("a.test", &c2s_config(NET, addr_a, &["a.test"], 1, &drain));
    let mut sb = Fedrouter::start(
        "b.test",
        &c2s_config(NET, addr_b, &["b.test"], 2, GOOGLE_STYLE),
    );
    add_user(&sa.config_path(), "alice@a.test", PASSWORD);
    add_user(&sb.config_path(), "bob@b.test", PASSWORD);

    let mut alice = login(&sa, addr_a, "a.test", "alice", "phone");
    let mut bob = login(&sb, addr_b, "b.test", "bob", "laptop");
    alice.roster_get();
    bob.roster_get();
    alice.send("<presence/>");
    bob.send("<presence/>");
    alice.sync();
    bob.sync();

    // bob subscribes to alice's presence; alice approves: A's outbound stream to b.test
    // carries the approval and alice's presence.
    bob.send("<presence type='subscribe' to='alice@a.test'/>");
    alice.expect_presence("bob@b.test", Some("subscribe"));
    alice.send("<presence type='subscribed' to='bob@b.test'/>");
    bob.expect_presence("alice@a.test", Some("subscribed"));
    let alice_full = alice.jid.clone().expect("alice is bound");
    bob.expect_presence(&alice_full, None);
    let out_before = sa
        .log_lines(&["dir=\"out\"", "peer=b.test", "connected"])
        .len();
    assert!(out_before >= 1, "a.test: no outbound stream to b.test");

    // SIGTERM; once A says it shuts down, alice goes away.
    sa.signal(libc::SIGTERM);
    let sigterm = Instant::now();
    assert!(
        sa.wait_log(&["shutting down"], HANG).is_some(),
        "a.test did not log that it is shutting down"
    );
    alice.close();
    drop(alice);

    // Bounded: HANG of 20 ms turns, ending when the process exits.
    let deadline = sigterm + HANG;
    while sa.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = sigterm.elapsed();
    let exited = !sa.running();
    let log = sa.log();
    let after = log
        .split_once("shutting down")
        .map(|(_, rest)| rest)
        .unwrap_or("");
    let reconnects: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("dir=\"out\"") && l.contains("connected"))
        .collect();
    assert!(
        reconnects.is_empty(),
        "a.test connected to a remote server while shutting down: {reconnects:#?}"
    );
    assert!(
        exited,
        "a.test still running {took:?} after SIGTERM, with drain_timeout {DRAIN:?}; \
         it should end once its streams are closed"
    );
    // The unavailable presence was not sent over a new stream: it was bounced.
    assert!(
        after
            .lines()
            .any(|l| l.contains("b.test") && l.contains("shutting down: not connecting")),
        "a.test did not log why the stanza for b.test was not sent"
    );
    // Outbound stream spans are children of the shard's, never of another stream's.
    let nested: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("s2s{dir=\"out\"") && l.matches("s2s{").count() > 1)
        .collect();
    assert!(
        nested.is_empty(),
        "outbound stream spans nested in another stream's: {nested:#?}"
    );
    assert!(sa.stop(), "a.test: stop after exit");

    // B is unaffected: bob is still connected and B stops cleanly.
    bob.sync();
    bob.close();
    assert!(sb.stop(), "b.test did not stop on SIGTERM");
}

/// Issue 23: a cross-shard stanza produced during the shutdown reaches its shard even
/// when that shard has already closed all its own streams. On a.test (2 shards), alice
/// and her contact (owned by the other shard) are subscribed to each other. On SIGTERM
/// alice closes her stream at once, so her shard has nothing left to drain; once it is
/// done with its streams (stopped, before the fix; or logging that it waits for the
/// other shards), the contact closes theirs, and the session's unavailable presence
/// (RFC 6121 §4.5.2) goes to alice's shard. That shard used to have stopped by then
/// (WARN "cross-shard messages could not reach their shard before it stopped count=1");
/// now it keeps handling its inbox until every shard has flushed what it sends.
/// Loopback range `127.0.233.0/24`.
#[test]
fn cross_shard_presence_at_shutdown_reaches_its_shard() {
    use fedrouter::router::{bare_key, shard_of};
    const NET: u8 = 233;
    let addr = ip(NET, 2);
    let _dns = zone(NET, xmpp_server("a.test", addr));
    let shard = |user: &str| shard_of(&bare_key(&format!("{user}@a.test")), 2);
    let contact = ["bob", "carol", "dave", "erin", "frank", "grace"]
        .into_iter()
        .find(|u| shard("alice") != shard(u))
        .expect("a user on the other shard");
    let extra = format!(
        "{GOOGLE_STYLE}\n[shutdown]\ndrain_timeout = \"{}s\"\n",
        DRAIN.as_secs()
    );
    let mut sa = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, &extra));
    add_user(&sa.config_path(), "alice@a.test", PASSWORD);
    add_user(&sa.config_path(), &format!("{contact}@a.test"), PASSWORD);

    let mut alice = login(&sa, addr, "a.test", "alice", "phone");
    let mut other = login(&sa, addr, "a.test", contact, "laptop");
    alice.roster_get();
    other.roster_get();
    alice.send("<presence/>");
    other.send("<presence/>");
    alice.sync();
    other.sync();
    let contact_bare = format!("{contact}@a.test");
    alice.send(&format!("<presence type='subscribe' to='{contact_bare}'/>"));
    other.expect_presence("alice@a.test", Some("subscribe"));
    other.send("<presence type='subscribed' to='alice@a.test'/>");
    alice.expect_presence(&contact_bare, Some("subscribed"));
    let other_full = other.jid.clone().expect("the contact is bound");
    alice.expect_presence(&other_full, None);

    sa.signal(libc::SIGTERM);
    let sigterm = Instant::now();
    assert!(
        sa.wait_log(&["shutting down"], HANG).is_some(),
        "a.test did not log that it is shutting down"
    );
    alice.close();
    drop(alice);

    // alice's shard is done with its own streams: its thread ended (`/health` says
    // stopped), or it logs that it waits for the other shards. Bounded: HANG.
    let alice_shard = shard("alice");
    let span = format!("shard{{id={alice_shard}}}");
    let deadline = sigterm + HANG;
    loop {
        let waiting = sa
            .log_lines(&[&span, "no stream left"])
            .into_iter()
            .next()
            .is_some();
        let stopped = || {
            sa.health()
                .is_some_and(|(_, h)| h["shards"][alice_shard]["state"] == "stopped")
        };
        if waiting || stopped() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's shard never finished its streams:\n{}",
            sa.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now the contact's session ends: its unavailable presence crosses to alice's shard.
    other.close();
    drop(other);

    // Bounded: HANG of 20 ms turns, ending when the process exits.
    while sa.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sa.running(), "a.test still running {HANG:?} after SIGTERM");
    let log = sa.log();
    assert!(
        !log.contains("could not reach their shard"),
        "a cross-shard message was lost at shutdown:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&span)
                && l.contains("cross-shard messages handled while shutting down")),
        "alice's shard handled nothing from the other shard while shutting down:\n{log}"
    );
    assert!(sa.stop(), "a.test: stop after exit");
}
