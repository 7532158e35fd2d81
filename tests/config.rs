//! The configuration adapter: defaults, a full file, every validation error's key, unknown
//! keys, and what `materialize` loads and creates in a data directory.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fedrouter::config::{
    CertificateEntry, Config, ConfigError, SecretBytes, StaticTarget, DIALBACK_SECRET_FILE,
};
use fedrouter::dialback::DialbackSecret;
use fedrouter::stream::policy::{AuthPolicy, PeerPolicy, TlsPolicy};
use fedrouter_testkit::TestCa;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The error's message, asserting it is an `Invalid` for `key`.
fn invalid_for(text: &str, key: &str) -> String {
    let err = Config::from_toml_str(text).unwrap_err();
    match &err {
        ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{err}"),
        other => panic!("expected Invalid for {key}, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.starts_with(&format!("{key}: ")), "{message}");
    message
}

fn same_secret(a: &DialbackSecret, b: &DialbackSecret) -> bool {
    a.key("a.test", "b.test", "id1") == b.key("a.test", "b.test", "id1")
}

#[test]
fn empty_file_gives_the_defaults() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c, Config::default());
    c.validate().unwrap();

    assert_eq!(c.domains, ["localhost"]);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(c.shards, cores.clamp(1, 256));
    assert_eq!(c.data_dir, Path::new("fedrouter-data"));
    assert_eq!(c.listen.s2s, [addr("127.0.0.1:5269")]);
    assert_eq!(c.listen.s2s_tls, [addr("127.0.0.1:5270")]);
    assert_eq!(c.listen.c2s, [addr("127.0.0.1:5222")]);
    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:9269")));
    assert!(c.tls.trust.is_empty() && c.tls.certificates.is_empty());
    assert!(!c.tls.system_roots);
    assert!(c.dns.nameservers.is_empty() && c.dns.static_targets.is_empty());
    assert_eq!(c.dns.timeout, Duration::from_secs(2));
    assert_eq!(c.dns.cache_size, 4096);
    assert_eq!(c.dns.max_in_flight, 64);
    let s = &c.s2s;
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.negotiation_timeout, Duration::from_secs(30));
    assert_eq!(s.stream_header_timeout, Duration::from_secs(10));
    assert_eq!(s.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(s.keepalive, Duration::from_secs(60));
    assert_eq!(s.verify_timeout, Duration::from_secs(30));
    assert_eq!(s.queue_per_domain, 1000);
    assert_eq!(s.send_queue_bytes, 1_048_576);
    assert_eq!(s.max_unauthenticated_per_shard, 1024);
    assert_eq!(s.backoff_initial, Duration::from_secs(1));
    assert_eq!(s.backoff_max, Duration::from_secs(300));
    assert_eq!(s.dialback_secret, None);
    assert_eq!(s.max_stanza_size, 262_144);
    assert_eq!(c.c2s.max_stanza_size, 262_144, "as Prosody and ejabberd");
    assert!(c.c2s.stream_management);
    assert!(s.stream_management);
    assert_eq!(
        (s.sm_ack_every, s.sm_ack_after),
        (20, Duration::from_secs(5))
    );
    assert_eq!(s.xml_limits().max_element_size, 262_144);
    assert_eq!((c.inbox.capacity, c.inbox.batch), (1024, 256));
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(5));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, fedrouter::config::LogFormat::Text);
    assert_eq!(c.federation.default, PeerPolicy::default());
    assert!(c.federation.domains.is_empty());
}

const FULL: &str = r#"
domains = ["A.test", "b.example."]
shards = 2
data_dir = "/var/lib/fedrouter"

[listen]
s2s = ["127.0.0.1:5269", "[::1]:5269"]
s2s_tls = []
c2s = ["127.0.0.2:5222"]
admin = ""

[tls]
trust = ["ca.pem", "other-ca.pem"]
system_roots = true
[[tls.certificate]]
domain = "a.test"
cert = "a.crt"
key = "a.key"

[dns]
nameservers = ["127.0.0.1:5300"]
timeout = "1500ms"
cache_size = 100
max_in_flight = 16
[dns.static]
"C.test" = "127.0.0.1:15269"
"d.test" = "xmpp.d.test:5269"
"e.test" = "[::1]:5270"

[s2s]
connect_timeout = "3s"
negotiation_timeout = "20s"
stream_header_timeout = "7s"
idle_timeout = "0s"
keepalive = "45s"
verify_timeout = "12s"
queue_per_domain = 500
send_queue_bytes = 2097152
max_unauthenticated_per_shard = 64
backoff_initial = "2s"
backoff_max = "1h"
dialback_secret = "00112233445566778899AABBCCDDEEFF"
max_stanza_size = 65536
stream_management = false
sm_ack_every = 3
sm_ack_after = "250ms"

[inbox]
capacity = 64
batch = 32

[c2s]
tls_required = false
negotiation_timeout = "20s"
keepalive = "45s"
max_auth_failures = 2
auth_failure_delay = "250ms"
max_stanza_size = 20000
max_roster_items = 50
max_resources = 4
pep_max_items = 2
pep_max_items_limit = 50
pep_max_item_bytes = 10000
max_offline_messages = 7

[store]
durability = "crash"
max_batch = 64
queue = 128

[metrics]
listen = "127.0.0.2:9270"

[shutdown]
drain_timeout = "0s"

[log]
level = "fedrouter=debug,warn"
format = "json"

[federation.default]
tls = "required"
auth = "sasl-external"
[federation.domains."Gmail.test"]
tls = "disabled"
auth = "dialback"
verify_certificates = false
[federation.domains."evil.test"]
allow = false
[federation.domains."flaky.test"]
bidi = false
"#;

#[test]
fn full_file_sets_every_key() {
    let c = Config::from_toml_str(FULL).unwrap();
    assert_eq!(c.domains, ["a.test", "b.example"]);
    assert_eq!(c.shards, 2);
    assert_eq!(c.data_dir, Path::new("/var/lib/fedrouter"));
    assert_eq!(c.listen.s2s, [addr("127.0.0.1:5269"), addr("[::1]:5269")]);
    assert!(c.listen.s2s_tls.is_empty());
    assert_eq!(c.listen.c2s, [addr("127.0.0.2:5222")]);
    assert_eq!(c.listen.admin, None);

    assert_eq!(
        c.tls.trust,
        [Path::new("ca.pem"), Path::new("other-ca.pem")]
    );
    assert!(c.tls.system_roots);
    assert_eq!(
        c.tls.certificates,
        [CertificateEntry {
            domain: "a.test".into(),
            cert: "a.crt".into(),
            key: "a.key".into(),
        }]
    );

    assert_eq!(c.dns.nameservers, [addr("127.0.0.1:5300")]);
    assert_eq!(c.dns.timeout, Duration::from_millis(1500));
    assert_eq!(c.dns.cache_size, 100);
    assert_eq!(c.dns.max_in_flight, 16);
    assert_eq!(c.dns.static_targets.len(), 3);
    assert_eq!(
        c.dns.static_targets["c.test"],
        StaticTarget {
            host: "127.0.0.1".into(),
            port: 15269
        }
    );
    assert_eq!(
        c.dns.static_targets["c.test"].socket_addr(),
        Some(addr("127.0.0.1:15269"))
    );
    assert_eq!(c.dns.static_targets["d.test"].host, "xmpp.d.test");
    assert_eq!(c.dns.static_targets["d.test"].port, 5269);
    assert_eq!(c.dns.static_targets["e.test"].to_string(), "[::1]:5270");

    let s = &c.s2s;
    assert_eq!(s.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.negotiation_timeout, Duration::from_secs(20));
    assert_eq!(s.stream_header_timeout, Duration::from_secs(7));
    assert_eq!(s.idle_timeout, None);
    assert_eq!(s.keepalive, Duration::from_secs(45));
    assert_eq!(s.verify_timeout, Duration::from_secs(12));
    assert_eq!(s.queue_per_domain, 500);
    assert_eq!(s.send_queue_bytes, 2_097_152);
    assert_eq!(s.max_unauthenticated_per_shard, 64);
    assert_eq!(s.backoff_initial, Duration::from_secs(2));
    assert_eq!(s.backoff_max, Duration::from_secs(3600));
    assert_eq!(
        s.dialback_secret,
        Some(SecretBytes::new(
            (0..16u8).map(|i| i * 0x11).collect::<Vec<_>>()
        ))
    );
    assert_eq!(s.max_stanza_size, 65536);
    assert!(!s.stream_management);
    assert_eq!(s.sm_ack_every, 3);
    assert_eq!(s.sm_ack_after, Duration::from_millis(250));
    assert_eq!(s.xml_limits().max_element_size, 65536);

    assert_eq!((c.inbox.capacity, c.inbox.batch), (64, 32));
    let cc = &c.c2s;
    assert!(!cc.tls_required);
    assert_eq!(
        (cc.negotiation_timeout, cc.keepalive, cc.auth_failure_delay),
        (
            Duration::from_secs(20),
            Duration::from_secs(45),
            Duration::from_millis(250)
        )
    );
    assert_eq!(
        (
            cc.max_auth_failures,
            cc.max_stanza_size,
            cc.max_roster_items,
            cc.max_resources
        ),
        (2, 20000, 50, 4)
    );
    assert_eq!(cc.max_offline_messages, 7);
    assert_eq!(
        (
            cc.pep_max_items,
            cc.pep_max_items_limit,
            cc.pep_max_item_bytes
        ),
        (2, 50, 10000)
    );
    assert_eq!(
        c.store.durability,
        fedrouter::config::StoreDurability::Crash
    );
    assert_eq!((c.store.max_batch, c.store.queue), (64, 128));
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.2:9270")));
    assert_eq!(c.shutdown.drain_timeout, Duration::ZERO);
    assert_eq!(c.log.level, "fedrouter=debug,warn");
    assert_eq!(c.log.format, fedrouter::config::LogFormat::Json);

    assert_eq!(c.federation.default, PeerPolicy::strict());
    assert_eq!(c.federation.for_domain("gmail.test"), PeerPolicy::google());
    assert_eq!(c.federation.for_domain("GMAIL.test."), PeerPolicy::google());
    assert!(!c.federation.for_domain("evil.test").allow);
    // XEP-0288 on by default, off for the one domain that says so.
    assert!(c.federation.for_domain("other.test").bidi);
    assert!(c.federation.for_domain("evil.test").bidi);
    assert!(!c.federation.for_domain("Flaky.test").bidi);
    assert_eq!(
        c.federation.for_domain("other.test").tls,
        TlsPolicy::Required
    );
    assert_eq!(
        c.federation.for_domain("other.test").auth,
        AuthPolicy::SaslExternal
    );
    c.validate().unwrap();
}

#[test]
fn the_secret_never_shows_in_debug() {
    let c = Config::from_toml_str(FULL).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.to_ascii_lowercase().contains("aabbcc"), "{debug}");
    assert!(debug.contains("SecretBytes(<16 bytes>)"), "{debug}");
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    for (text, name) in [
        ("domain = [\"a.test\"]\n", "domain"),
        ("[listen]\ns2s_plain = []\n", "s2s_plain"),
        ("[s2s]\nidle = \"1s\"\n", "idle"),
        ("[dns]\nservers = []\n", "servers"),
        ("[tls]\nroots = []\n", "roots"),
        (
            "[[tls.certificate]]\ndomain = \"localhost\"\ncert = \"c\"\nkey = \"k\"\nchain = \"x\"\n",
            "chain",
        ),
        ("[inbox]\nsize = 1\n", "size"),
        ("[shutdown]\ngrace = \"1s\"\n", "grace"),
        ("[log]\ncolour = true\n", "colour"),
        ("[federation.default]\ntls_mode = \"on\"\n", "tls_mode"),
        ("[metrics]\nport = 1\n", "port"),
        ("[c2s]\nstarttls = true\n", "starttls"),
        ("[store]\nfsync = true\n", "fsync"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { file: None, .. }),
            "{text}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(name), "{text}: {message}");
        assert!(message.contains("line"), "{text}: {message}");
    }
}

#[test]
fn wrong_types_and_bad_durations_keep_tomls_message() {
    for (text, needle) in [
        ("shards = \"two\"\n", "shards"),
        (
            "[s2s]\nconnect_timeout = \"5 parsecs\"\n",
            "connect_timeout",
        ),
        ("[s2s]\nconnect_timeout = 5\n", "connect_timeout"),
        ("[listen]\ns2s = \"127.0.0.1:5269\"\n", "s2s"),
        ("shards = -1\n", "shards"),
        ("[federation.default]\nbidi = \"yes\"\n", "bidi"),
        ("[federation.domains.\"x.test\"]\nbidi = 0\n", "bidi"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{message}");
        assert!(message.contains(needle), "{text}: {message}");
    }
}

#[test]
fn each_validation_error_names_its_key() {
    let m = invalid_for("shards = 0\n", "shards");
    assert_eq!(m, "shards: must be between 1 and 256, got 0");
    invalid_for("shards = 257\n", "shards");

    let m = invalid_for(
        "[s2s]\nbackoff_initial = \"1s\"\nbackoff_max = \"500ms\"\n",
        "s2s.backoff_max",
    );
    assert!(
        m.starts_with("s2s.backoff_max: must be at least s2s.backoff_initial (1s)"),
        "{m}"
    );

    let m = invalid_for(
        "[listen]\ns2s = [\"127.0.0.1:5269\", \"127.0.0.1\"]\n",
        "listen.s2s[1]",
    );
    assert_eq!(m, "listen.s2s[1]: \"127.0.0.1\" is not ip:port");
    invalid_for("[listen]\nc2s = [\"localhost:5222\"]\n", "listen.c2s[0]");
    invalid_for("[listen]\ns2s_tls = [\"x\"]\n", "listen.s2s_tls[0]");
    invalid_for("[listen]\nadmin = \"9269\"\n", "listen.admin");
    invalid_for("[metrics]\nlisten = \"localhost\"\n", "metrics.listen");
    let m = invalid_for("[c2s]\nmax_roster_items = 0\n", "c2s.max_roster_items");
    assert_eq!(
        m,
        "c2s.max_roster_items: must be between 1 and 100000, got 0"
    );
    invalid_for("[c2s]\nmax_auth_failures = 7\n", "c2s.max_auth_failures");
    invalid_for("[c2s]\nmax_stanza_size = 100\n", "c2s.max_stanza_size");
    invalid_for("[c2s]\nsasl_mechanisms = []\n", "c2s.sasl_mechanisms");
    invalid_for(
        "[c2s]\nsasl_mechanisms = [\"SCRAM-SHA-1\", \"DIGEST-MD5\"]\n",
        "c2s.sasl_mechanisms",
    );
    invalid_for(
        "[c2s]\nnegotiation_timeout = \"0s\"\n",
        "c2s.negotiation_timeout",
    );
    invalid_for("[c2s]\nmax_resources = 0\n", "c2s.max_resources");
    invalid_for("[c2s]\npep_max_items = 0\n", "c2s.pep_max_items");
    invalid_for(
        "[c2s]\npep_max_items = 20\npep_max_items_limit = 10\n",
        "c2s.pep_max_items",
    );
    invalid_for(
        "[c2s]\npep_max_items_limit = 0\n",
        "c2s.pep_max_items_limit",
    );
    invalid_for("[c2s]\npep_max_item_bytes = 0\n", "c2s.pep_max_item_bytes");
    let m = invalid_for(
        "[c2s]\nmax_offline_messages = 100001\n",
        "c2s.max_offline_messages",
    );
    assert_eq!(
        m,
        "c2s.max_offline_messages: must be between 0 and 100000, got 100001"
    );
    // A negative count is not a u32: toml's parse error names the key.
    let err = Config::from_toml_str("[c2s]\nmax_offline_messages = -1\n").unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("max_offline_messages"), "{err}");
    invalid_for("[store]\nmax_batch = 0\n", "store.max_batch");
    invalid_for("[store]\nqueue = 0\n", "store.queue");
    let m = invalid_for(
        "[listen]\ns2s = [\"127.0.0.1:5269\"]\nc2s = [\"127.0.0.1:5269\"]\n",
        "listen.c2s[0]",
    );
    assert!(m.contains("listen.s2s[0]"), "{m}");
    // Port 0 (an ephemeral port, as tests use) may repeat.
    Config::from_toml_str(
        "[listen]\ns2s = [\"127.0.0.1:0\"]\nc2s = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n",
    )
    .unwrap();

    let m = invalid_for(
        "[dns.static]\n\"b.test\" = \"b\"\n",
        "dns.static.\"b.test\"",
    );
    assert_eq!(m, "dns.static.\"b.test\": expected host:port, got \"b\"");
    invalid_for(
        "[dns.static]\n\"b.test\" = \"b:0\"\n",
        "dns.static.\"b.test\"",
    );
    invalid_for(
        "[dns.static]\n\"b.test\" = \"a b:5269\"\n",
        "dns.static.\"b.test\"",
    );
    invalid_for(
        "[dns.static]\n\"b_x.test\" = \"b:5269\"\n",
        "dns.static.\"b_x.test\"",
    );
    invalid_for(
        "[dns.static]\n\"B.test\" = \"b:5269\"\n\"b.test\" = \"b:5269\"\n",
        "dns.static.\"b.test\"",
    );
    invalid_for("[dns]\nnameservers = [\"8.8.8.8\"]\n", "dns.nameservers[0]");
    invalid_for("[dns]\ntimeout = \"0s\"\n", "dns.timeout");
    invalid_for("[dns]\ncache_size = 0\n", "dns.cache_size");
    invalid_for("[dns]\nmax_in_flight = 0\n", "dns.max_in_flight");
    invalid_for("[dns]\nmax_in_flight = 65537\n", "dns.max_in_flight");

    let m = invalid_for("domains = [\"a b\"]\n", "domains[0]");
    assert!(
        m.starts_with("domains[0]: \"a b\" is not a valid domain ("),
        "{m}"
    );
    invalid_for("domains = []\n", "domains");
    let m = invalid_for("domains = [\"a.test\", \"A.TEST\"]\n", "domains[1]");
    assert!(m.contains("domains[0]"), "{m}");
    invalid_for("domains = [\"127.0.0.1\"]\n", "domains[0]");
    invalid_for("data_dir = \"\"\n", "data_dir");

    invalid_for(
        "[[tls.certificate]]\ndomain = \"other.test\"\ncert = \"c\"\nkey = \"k\"\n",
        "tls.certificate[0].domain",
    );
    invalid_for(
        "[[tls.certificate]]\ndomain = \"localhost\"\ncert = \"c\"\nkey = \"k\"\n\
         [[tls.certificate]]\ndomain = \"LOCALHOST\"\ncert = \"c\"\nkey = \"k\"\n",
        "tls.certificate[1].domain",
    );
    invalid_for(
        "[[tls.certificate]]\ndomain = \"localhost\"\ncert = \"\"\nkey = \"k\"\n",
        "tls.certificate[0].cert",
    );
    invalid_for("[tls]\ntrust = [\"\"]\n", "tls.trust[0]");

    for key in [
        "connect_timeout",
        "negotiation_timeout",
        "stream_header_timeout",
        "keepalive",
        "verify_timeout",
        "backoff_initial",
    ] {
        invalid_for(&format!("[s2s]\n{key} = \"0s\"\n"), &format!("s2s.{key}"));
    }
    invalid_for("[s2s]\nqueue_per_domain = 0\n", "s2s.queue_per_domain");
    invalid_for(
        "[s2s]\nqueue_per_domain = 1000001\n",
        "s2s.queue_per_domain",
    );
    invalid_for("[s2s]\nmax_stanza_size = 9999\n", "s2s.max_stanza_size");
    invalid_for("[s2s]\nsm_ack_every = 0\n", "s2s.sm_ack_every");
    invalid_for("[s2s]\nsm_ack_after = \"0s\"\n", "s2s.sm_ack_after");
    let m = invalid_for(
        "[s2s]\nmax_stanza_size = 65536\nsend_queue_bytes = 65535\n",
        "s2s.send_queue_bytes",
    );
    assert!(m.contains("s2s.max_stanza_size (65536)"), "{m}");
    invalid_for(
        "[s2s]\nmax_unauthenticated_per_shard = 0\n",
        "s2s.max_unauthenticated_per_shard",
    );
    invalid_for("[s2s]\ndialback_secret = \"xyz\"\n", "s2s.dialback_secret");
    let m = invalid_for("[s2s]\ndialback_secret = \"00ff\"\n", "s2s.dialback_secret");
    assert!(m.contains("too short"), "{m}");

    invalid_for("[inbox]\ncapacity = 0\n", "inbox.capacity");
    invalid_for("[inbox]\nbatch = 0\n", "inbox.batch");
    invalid_for("[log]\nlevel = \"\"\n", "log.level");
    invalid_for("[log]\nlevel = \"fedrouter=loud\"\n", "log.level");
    let m = invalid_for("[log]\nformat = \"xml\"\n", "log.format");
    assert_eq!(
        m,
        "log.format: \"xml\" is not a log format (expected \"text\" or \"json\")"
    );
    invalid_for(
        "[federation.domains.\"bad domain\"]\nallow = false\n",
        "federation.domains.\"bad domain\"",
    );
}

#[test]
fn validate_checks_hand_built_configs() {
    let mut c = Config::default();
    c.s2s.idle_timeout = Some(Duration::ZERO);
    let err = c.validate().unwrap_err();
    assert!(err.to_string().starts_with("s2s.idle_timeout: "), "{err}");

    let c = Config {
        domains: vec!["A.test".into()],
        ..Config::default()
    };
    let err = c.validate().unwrap_err();
    assert!(
        err.to_string()
            .contains("not in normalised form (write \"a.test\")"),
        "{err}"
    );

    let mut c = Config::default();
    c.dns.static_targets.insert(
        "b.test".into(),
        StaticTarget {
            host: "b.test".into(),
            port: 0,
        },
    );
    let err = c.validate().unwrap_err();
    assert!(
        err.to_string().starts_with("dns.static.\"b.test\": "),
        "{err}"
    );
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fedrouter.toml");

    fs::write(&path, "domains = [\"a.test\"]\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().domains, ["a.test"]);

    fs::write(&path, "shards = 0\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(
        err,
        ConfigError::Invalid {
            file: Some(path.clone()),
            key: "shards".into(),
            problem: "must be between 1 and 256, got 0".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: shards: must be between 1 and 256, got 0",
            path.display()
        )
    );

    fs::write(&path, "bogus = 1\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(&err, ConfigError::Parse { file: Some(f), .. } if *f == path));
    assert!(err.to_string().starts_with(&path.display().to_string()));
    assert!(err.to_string().contains("bogus"));

    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert_eq!(
        err,
        ConfigError::Io {
            path: missing.clone(),
            message: "No such file or directory".into(),
        }
    );
}

fn lab_config(data_dir: &Path) -> Config {
    let mut c = Config::from_toml_str("domains = [\"a.test\", \"b.test\"]\n").unwrap();
    c.data_dir = data_dir.to_owned();
    c
}

#[test]
fn materialize_generates_once_then_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = lab_config(&data);

    let first = c.materialize().unwrap();
    assert_eq!(first.generated, ["a.test", "b.test"]);
    assert_eq!(first.certificates.len(), 2);
    assert_eq!(first.certificates[0].domain(), "a.test");
    assert_eq!(first.certificates[1].domain(), "b.test");
    assert_eq!(first.certificates[0].dns_names(), ["a.test"]);
    assert!(first.trust.is_empty());

    let crt = data.join("certs/a.test.crt");
    let key = data.join("certs/a.test.key");
    assert_eq!(
        fs::read_to_string(&crt).unwrap(),
        first.certificates[0].chain_pem()
    );
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        first.certificates[0].key_pem()
    );
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let secret_path = data.join(DIALBACK_SECRET_FILE);
    let mode = fs::metadata(&secret_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = fs::read_to_string(&secret_path).unwrap();
    assert_eq!(stored.trim().len(), 64, "{stored:?}");

    let second = c.materialize().unwrap();
    assert!(second.generated.is_empty());
    for (a, b) in first.certificates.iter().zip(&second.certificates) {
        assert_eq!(a.chain(), b.chain());
        assert_eq!(a.key_pem(), b.key_pem());
    }
    assert!(same_secret(&first.dialback_secret, &second.dialback_secret));
    assert_eq!(fs::read_to_string(&secret_path).unwrap(), stored);

    // A fresh data_dir gives a different secret: it is random, not derived.
    let other = lab_config(&dir.path().join("other")).materialize().unwrap();
    assert!(!same_secret(&first.dialback_secret, &other.dialback_secret));
    assert_ne!(first.certificates[0].chain(), other.certificates[0].chain());

    // Removing one file of a pair regenerates that domain only.
    fs::remove_file(&crt).unwrap();
    let third = c.materialize().unwrap();
    assert_eq!(third.generated, ["a.test"]);
    assert_ne!(third.certificates[0].chain(), first.certificates[0].chain());
    assert_eq!(third.certificates[1].chain(), first.certificates[1].chain());
}

#[test]
fn configured_secret_wins_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hex = "00112233445566778899aabbccddeeff";
    let mut c = Config::from_toml_str(&format!("[s2s]\ndialback_secret = \"{hex}\"\n")).unwrap();
    c.data_dir = dir.path().to_owned();
    let m = c.materialize().unwrap();
    let expected = DialbackSecret::new(hex::decode(hex).unwrap());
    assert!(same_secret(&m.dialback_secret, &expected));
    assert!(!dir.path().join(DIALBACK_SECRET_FILE).exists());
}

#[test]
fn corrupt_stored_secret_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = lab_config(dir.path());
    let path = dir.path().join(DIALBACK_SECRET_FILE);
    fs::write(&path, "not hex\n").unwrap();
    let err = c.materialize().unwrap_err();
    assert!(
        matches!(&err, ConfigError::DataFile { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("not hexadecimal"), "{err}");
}

#[test]
fn configured_certificates_and_trust_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Lab CA").unwrap();
    let issued = ca.issue("a.test").unwrap();
    let cert = dir.path().join("a.crt");
    let key = dir.path().join("a.key");
    let ca_pem = dir.path().join("ca.pem");
    fs::write(&cert, issued.chain_pem()).unwrap();
    fs::write(&key, issued.key_pem()).unwrap();
    fs::write(&ca_pem, ca.ca_cert_pem()).unwrap();

    let text = format!(
        "domains = [\"a.test\", \"b.test\"]\n\
         data_dir = {data:?}\n\
         [tls]\ntrust = [{ca:?}]\n\
         [[tls.certificate]]\ndomain = \"A.test\"\ncert = {cert:?}\nkey = {key:?}\n",
        data = dir.path().join("data"),
        ca = ca_pem,
        cert = cert,
        key = key,
    );
    let c = Config::from_toml_str(&text).unwrap();
    let m = c.materialize().unwrap();
    assert_eq!(m.generated, ["b.test"]);
    assert_eq!(m.certificates[0].domain(), "a.test");
    assert_eq!(m.certificates[0].chain(), issued.chain);
    assert_eq!(m.certificates[0].key_pem(), issued.key_pem());
    assert_eq!(m.trust, [ca.ca_der()]);
    assert!(!dir.path().join("data/certs/a.test.crt").exists());
}

#[test]
fn certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Lab CA").unwrap();
    let issued = ca.issue("other.test").unwrap();
    let cert = dir.path().join("o.crt");
    let key = dir.path().join("o.key");
    fs::write(&cert, issued.chain_pem()).unwrap();
    fs::write(&key, issued.key_pem()).unwrap();
    let mut c = lab_config(&dir.path().join("data"));
    c.tls.certificates.push(CertificateEntry {
        domain: "a.test".into(),
        cert,
        key,
    });
    let err = c.materialize().unwrap_err();
    let m = err.to_string();
    assert!(m.starts_with("tls.certificate[0].cert: "), "{m}");
    assert!(m.contains("other.test"), "{m}");
}

#[test]
fn missing_or_bad_files_name_the_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Lab CA").unwrap();
    let issued = ca.issue("a.test").unwrap();
    let cert = dir.path().join("a.crt");
    let key = dir.path().join("a.key");
    fs::write(&cert, issued.chain_pem()).unwrap();
    fs::write(&key, issued.key_pem()).unwrap();
    let missing = dir.path().join("x/y");

    let with = |cert_path: &Path, key_path: &Path| {
        let mut c = lab_config(&dir.path().join("data"));
        c.tls.certificates.push(CertificateEntry {
            domain: "a.test".into(),
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
        c.materialize().unwrap_err()
    };

    let err = with(&missing, &key);
    assert_eq!(
        err.to_string(),
        format!(
            "tls.certificate[0].cert: {}: No such file or directory",
            missing.display()
        )
    );
    let err = with(&cert, &missing);
    assert_eq!(
        err.to_string(),
        format!(
            "tls.certificate[0].key: {}: No such file or directory",
            missing.display()
        )
    );
    // The certificate where the key should be: no private key in it.
    let err = with(&cert, &cert);
    assert!(
        err.to_string().starts_with("tls.certificate[0].key: "),
        "{err}"
    );
    // A key that belongs to another certificate.
    let stranger = dir.path().join("stranger.key");
    fs::write(&stranger, ca.issue("a.test").unwrap().key_pem()).unwrap();
    let err = with(&cert, &stranger);
    assert!(
        err.to_string().starts_with("tls.certificate[0].key: "),
        "{err}"
    );
    // The key where the certificate should be.
    let err = with(&key, &key);
    assert!(
        err.to_string().starts_with("tls.certificate[0].cert: "),
        "{err}"
    );

    // Trust anchors.
    let mut c = lab_config(&dir.path().join("data"));
    c.tls.trust = vec![cert.clone(), missing.clone()];
    let err = c.materialize().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "tls.trust[1]: {}: No such file or directory",
            missing.display()
        )
    );
    c.tls.trust = vec![key.clone()];
    let err = c.materialize().unwrap_err();
    assert!(err.to_string().starts_with("tls.trust[0]: "), "{err}");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[test]
fn unusable_data_dir_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, "").unwrap();
    let c = lab_config(&file.join("data"));
    let err = c.materialize().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Io { path, .. } if path.starts_with(&file)),
        "{err:?}"
    );
}

/// The Debian package's `/etc/fedrouter/fedrouter.toml` (debian/fedrouter.toml) loads and
/// validates, and is the embedded defaults except for the service's `data_dir`: a fresh
/// install serves `localhost` on loopback only, as `fedrouter serve` without a file does.
#[test]
fn packaged_configuration_is_the_defaults_with_the_service_data_dir() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/fedrouter.toml");
    let c = Config::load(&path).unwrap();
    c.validate().unwrap();
    assert_eq!(c.data_dir, std::path::Path::new("/var/lib/fedrouter"));
    let defaults = Config {
        data_dir: c.data_dir.clone(),
        ..Config::default()
    };
    assert_eq!(c, defaults);
    // Every commented-out `key = value` line is a valid setting too: uncommented one at a
    // time (with its table), each still loads and validates.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut table = String::new();
    let mut checked = 0;
    for line in text.lines() {
        if line.starts_with('[') {
            table = line.split('#').next().unwrap().trim().to_owned();
        } else if line.starts_with("# [") {
            table = line[2..].split('#').next().unwrap().trim().to_owned();
        }
        let Some(setting) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = setting.split_once(" = ") else {
            continue;
        };
        if key.contains(' ') || setting.contains("<hex>") || table.starts_with("[[") {
            continue; // prose, the secret placeholder, or a certificate's files (absent here)
        }
        let doc = if table.is_empty() {
            format!("{setting}\n")
        } else {
            format!("{table}\n{setting}\n")
        };
        let c = Config::from_toml_str(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{doc}: {e}"));
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} commented settings found");
}
