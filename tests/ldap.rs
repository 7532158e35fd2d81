//! LDAP authentication end to end (`[auth] backend = "ldap"`): a real OpenLDAP `slapd`
//! (`common/slapd.rs`, from `.ci/setup-slapd`) on 127.0.0.1, a real `fedrouter serve`
//! process (`common/server.rs`) and real client sockets (`common/xmpp.rs`).
//!
//! - Only `PLAIN` is offered after STARTTLS; SCRAM is `invalid-mechanism`.
//! - A directory user logs in (search as the service account, then bind as the user, over
//!   LDAPS or StartTLS), is added to the store on first login and gets an empty roster.
//! - A wrong password, a user outside `auth.ldap.filter`, and an unknown user:
//!   `not-authorized`.
//! - slapd stopped (by pid): a new login gets `temporary-auth-failure`; `/health` (still
//!   200), `/status/directory` and `fedrouter_directory_up` say the directory is
//!   unreachable and why; an already logged-in session keeps working; a user who logged
//!   in recently still can (the positive cache). slapd started again on the same port and
//!   data: logins work again and the state says up.
//! - Configuration errors name their key.
//!
//! Each test owns the loopback range `127.0.N.0/24` (N = 160, 161) for fedrouter; every
//! slapd listens on 127.0.0.1 on free ports. Every wait is bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/slapd.rs"]
mod slapd;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fedrouter::config::Config;
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, DB_FILE};
use server::{config, http_get, ip, Fedrouter};
use slapd::{Slapd, User, PEOPLE, SERVICE_DN, SERVICE_PASSWORD};
use xmpp::{attr, condition, Client, Mech, Target};

const ALICE_PW: &str = "alice's password";
const BOB_PW: &str = "bob's password";
const CAROL_PW: &str = "carol (at) work";

/// Chat users have `employeeType: chat`; bob is in the directory but outside the filter.
fn users() -> Vec<User<'static>> {
    vec![
        User {
            uid: "alice",
            password: ALICE_PW,
            employee_type: "chat",
        },
        User {
            uid: "bob",
            password: BOB_PW,
            employee_type: "robot",
        },
        User {
            uid: "carol",
            password: CAROL_PW,
            employee_type: "chat",
        },
    ]
}

const FILTER: &str = "(&(objectClass=inetOrgPerson)(employeeType=chat)(uid=%u))";

/// A fedrouter at `addr` (C2S on 5222) authenticating against `url`.
fn ldap_config(net: u8, addr: Ipv4Addr, url: &str, starttls: bool) -> String {
    let extra = format!(
        r#"[auth]
backend = "ldap"

[auth.ldap]
urls = ["{url}"]
starttls = {starttls}
base_dn = "{PEOPLE}"
filter = "{FILTER}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "ldap.secret"
ca_file = "ldap-ca.pem"
connect_timeout = "2s"
timeout = "2s"
pool_size = 2
cache_ttl = "10m"
probe_interval = "300ms"
"#
    );
    let text = config(net, addr, &["a.test"], 2, &extra);
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

fn start(name: &str, net: u8, slapd: &Slapd, url: &str, starttls: bool) -> (Fedrouter, Target) {
    let addr = ip(net, 2);
    let fr = Fedrouter::start_with(
        name,
        &ldap_config(net, addr, url, starttls),
        &[
            ("ldap.secret", &format!("{SERVICE_PASSWORD}\n")),
            ("ldap-ca.pem", &slapd.ca_pem),
        ],
    );
    let t = Target::new(
        SocketAddr::new(addr.into(), 5222),
        "a.test",
        &fr.dir().join("data"),
    );
    (fr, t)
}

/// `/status/directory` as JSON.
fn directory(fr: &Fedrouter) -> serde_json::Value {
    let (code, body) =
        http_get(fr.admin, "/status/directory", Duration::from_secs(10)).expect("admin endpoint");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Polls `/status/directory` until its state is `want` (bounded: 200 tries, each an
/// HTTP round trip with a 10 s bound; the server's probe runs every 300 ms).
fn wait_directory(fr: &Fedrouter, want: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last = directory(fr);
        if last["state"] == want {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("directory state never became {want}: {last}");
}

/// `fedrouter status --admin ADDR`'s output (it must succeed).
fn status_text(fr: &Fedrouter) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["status", "--admin", &fr.admin.to_string()])
        .output()
        .expect("run fedrouter status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

fn login_plain(t: &Target, user: &str, password: &str) -> Client {
    Client::login_with(t, Mech::Plain, user, password, None)
}

fn failure_of(t: &Target, user: &str, password: &str) -> String {
    let (_c, f) = Client::login_failure(t, Mech::Plain, user, password);
    condition(&f).unwrap_or_else(|| panic!("no condition in {f}"))
}

#[test]
fn ldaps_logins_and_the_directory_going_down_and_back() {
    let mut slapd = Slapd::start(&users());
    let (fr, t) = start("ldaps", 160, &slapd, &slapd.ldaps_url(), false);

    // Only PLAIN after TLS; SCRAM is not a mechanism here.
    let mut c = Client::connect(t.addr, "a.test");
    c.open();
    let features = c.starttls(&t.cert);
    assert!(
        features.contains("<mechanism>PLAIN</mechanism>"),
        "{features}"
    );
    assert!(
        !features.contains("SCRAM"),
        "SCRAM offered with LDAP: {features}"
    );
    let f = c.auth(Mech::ScramSha256, "alice", ALICE_PW).unwrap_err();
    assert_eq!(condition(&f).as_deref(), Some("invalid-mechanism"), "{f}");
    drop(c);

    // A directory user: logged in, bound, an empty roster.
    let t0 = Instant::now();
    let mut alice = login_plain(&t, "alice", ALICE_PW);
    let first = t0.elapsed();
    assert!(alice.roster_get().is_empty());
    assert_eq!(directory(&fr)["state"], "up");
    // The same password again: answered from the positive cache.
    let t1 = Instant::now();
    let mut second = login_plain(&t, "alice", ALICE_PW);
    let cached = t1.elapsed();
    second.sync();
    drop(second);
    eprintln!(
        "connect + STARTTLS + PLAIN + bind: {:.1} ms through the directory, {:.1} ms from the cache",
        first.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3
    );
    let hits = fr
        .metric(
            "fedrouter_directory_checks_total",
            &[("result", "accepted_cached")],
        )
        .unwrap();
    assert!(hits >= 1.0, "cache hits: {hits}");

    // Wrong password, outside the filter, unknown: not-authorized.
    assert_eq!(failure_of(&t, "alice", "not alice's"), "not-authorized");
    assert_eq!(failure_of(&t, "bob", BOB_PW), "not-authorized");
    assert_eq!(failure_of(&t, "mallory", "anything"), "not-authorized");
    // A username with filter metacharacters is escaped (RFC 4515), not injected.
    assert_eq!(failure_of(&t, "*", "anything"), "not-authorized");

    let up = fr.metric("fedrouter_directory_up", &[]).expect("metrics");
    assert_eq!(up, 1.0);
    let ok = fr
        .metric(
            "fedrouter_directory_checks_total",
            &[("result", "accepted")],
        )
        .unwrap();
    assert!(ok >= 1.0, "accepted checks: {ok}");

    // The directory goes away.
    let pid = slapd.pid().expect("slapd runs");
    slapd.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "slapd {pid} stopped"
    );
    assert_eq!(failure_of(&t, "carol", CAROL_PW), "temporary-auth-failure");
    let down = wait_directory(&fr, "unreachable");
    let error = down["error"].as_str().unwrap_or("");
    assert!(!error.is_empty(), "no error given: {down}");
    let (code, health) = fr.health().expect("/health answers");
    assert_eq!(code, 200, "the directory does not fail /health: {health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["directory"]["state"], "unreachable", "{health}");
    assert_eq!(fr.metric("fedrouter_directory_up", &[]), Some(0.0));
    let text = status_text(&fr);
    assert!(text.contains("DIRECTORY ldap: unreachable"), "{text}");
    let unavailable = fr
        .metric(
            "fedrouter_directory_checks_total",
            &[("result", "unavailable")],
        )
        .unwrap();
    assert!(unavailable >= 1.0, "unavailable checks: {unavailable}");

    // Everything else still works: alice's session answers, and alice (checked
    // minutes ago) can log in again from the positive cache.
    assert!(alice.roster_get().is_empty());
    let ping = alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>");
    assert_eq!(attr(&ping, "type").as_deref(), Some("result"), "{ping}");
    let mut again = login_plain(&t, "alice", ALICE_PW);
    again.sync();
    // A wrong password is not let in by the cache.
    assert_eq!(
        failure_of(&t, "alice", "not alice's"),
        "temporary-auth-failure"
    );

    // The directory comes back on the same port with the same data.
    slapd.restart();
    wait_directory(&fr, "up");
    let mut carol = login_plain(&t, "carol", CAROL_PW);
    assert!(carol.roster_get().is_empty());
    assert_eq!(failure_of(&t, "carol", "wrong"), "not-authorized");
    assert_eq!(fr.metric("fedrouter_directory_up", &[]), Some(1.0));
    alice.sync();

    // `fedrouter status` prints the directory's state.
    let text = status_text(&fr);
    assert!(text.contains("DIRECTORY ldap: up"), "{text}");

    // First logins created store rows (no credentials): alice and carol, not bob.
    drop((alice, again, carol));
    let mut fr = fr;
    assert!(fr.stop(), "fedrouter stopped cleanly");
    let mut store = SqliteStore::open(fr.dir().join("data").join(DB_FILE)).unwrap();
    let users = store.list_users(Some("a.test")).unwrap();
    assert_eq!(users, vec!["alice@a.test", "carol@a.test"], "{users:?}");
}

#[test]
fn starttls_logins() {
    let slapd = Slapd::start(&users());
    let (fr, t) = start("starttls", 161, &slapd, &slapd.ldap_url(), true);
    let mut alice = login_plain(&t, "alice", ALICE_PW);
    assert!(alice.roster_get().is_empty());
    assert_eq!(failure_of(&t, "carol", "wrong"), "not-authorized");
    assert_eq!(directory(&fr)["state"], "up");
}

/// Bad `[auth]` settings: each error names its key.
#[test]
fn config_errors_name_the_key() {
    let base = r#"
[auth]
backend = "ldap"
[auth.ldap]
urls = ["ldaps://ldap.test"]
base_dn = "ou=people,dc=example,dc=test"
filter = "(uid=%u)"
"#;
    assert!(Config::from_toml_str(base).is_ok());
    let cases: &[(&str, &str, &str)] = &[
        (
            "filter = \"(uid=%u)\"",
            "filter = \"(uid=alice)\"",
            "auth.ldap.filter",
        ),
        (
            "filter = \"(uid=%u)\"",
            "filter = \"uid=%u\"",
            "auth.ldap.filter",
        ),
        (
            "urls = [\"ldaps://ldap.test\"]",
            "urls = [\"ldap://ldap.test\"]",
            "auth.ldap.urls[0]",
        ),
        (
            "urls = [\"ldaps://ldap.test\"]",
            "urls = [\"ldaps://ldap.test\", \"http://x\"]",
            "auth.ldap.urls[1]",
        ),
        (
            "urls = [\"ldaps://ldap.test\"]",
            "urls = []",
            "auth.ldap.urls",
        ),
        (
            "base_dn = \"ou=people,dc=example,dc=test\"",
            "",
            "auth.ldap.base_dn",
        ),
        (
            "base_dn = \"ou=people,dc=example,dc=test\"",
            "base_dn = \"ou=people,dc=example,dc=test\"\nbind_dn = \"cn=x\"",
            "auth.ldap.bind_password",
        ),
        (
            "base_dn = \"ou=people,dc=example,dc=test\"",
            "base_dn = \"ou=people,dc=example,dc=test\"\nbind_password = \"x\"",
            "auth.ldap.bind_dn",
        ),
        (
            "base_dn = \"ou=people,dc=example,dc=test\"",
            "base_dn = \"ou=people,dc=example,dc=test\"\npool_size = 0",
            "auth.ldap.pool_size",
        ),
        (
            "base_dn = \"ou=people,dc=example,dc=test\"",
            "base_dn = \"ou=people,dc=example,dc=test\"\ntimeout = \"0s\"",
            "auth.ldap.timeout",
        ),
        (
            // 5 s + 3 × 10 s is not under c2s.negotiation_timeout (30 s).
            "base_dn = \"ou=people,dc=example,dc=test\"",
            "base_dn = \"ou=people,dc=example,dc=test\"\ntimeout = \"10s\"",
            "auth.ldap.timeout",
        ),
    ];
    for (from, to, key) in cases {
        let text = base.replace(from, to);
        let err = Config::from_toml_str(&text).expect_err(&text).to_string();
        assert!(err.starts_with(&format!("{key}: ")), "{key}: {err}\n{text}");
    }
    let no_section = "[auth]\nbackend = \"ldap\"\n";
    let err = Config::from_toml_str(no_section).unwrap_err().to_string();
    assert!(err.starts_with("auth.ldap: "), "{err}");
    let unknown = "[auth]\nbackend = \"kerberos\"\n";
    let err = Config::from_toml_str(unknown).unwrap_err().to_string();
    assert!(err.contains("backend"), "{err}");
    // The internal backend ignores [auth.ldap].
    let text = "[auth]\nbackend = \"internal\"\n[auth.ldap]\nfilter = \"x\"\n";
    assert!(Config::from_toml_str(text).is_ok());
    // A missing password file is named by its key when materialised.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n{}",
        dir.path().join("data").display().to_string(),
        base.replace(
            "filter = \"(uid=%u)\"",
            "filter = \"(uid=%u)\"\nbind_dn = \"cn=x\"\nbind_password_file = \"/nonexistent/ldap.secret\""
        )
    );
    let err = Config::from_toml_str(&text)
        .unwrap()
        .materialize()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("auth.ldap.bind_password_file: /nonexistent/ldap.secret"),
        "{err}"
    );
}
