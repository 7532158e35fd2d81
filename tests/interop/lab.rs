//! The interop lab: one loopback slot per test with fedrouter serving `cupdomain.test`,
//! a real Prosody serving `gmail.test`, and fedrouter's own authoritative DNS server
//! (`fedrouter_testkit::zone::ZoneServer`) on port 53 holding both domains' SRV and A records,
//! which fedrouter asks directly and Prosody asks through libunbound.
//!
//! Addresses: test slot `k` (0..=9) owns `127.0.232.(10k+1 ..= 10k+3)`: fedrouter on
//! `.10k+1` (C2S 5222, S2S 5269, direct TLS 5270, admin 9269), Prosody on `.10k+2` (C2S
//! 5222, S2S 5269), DNS on `.10k+3:53`. Slot 0 is `127.0.232.1/.2/.3`.
//!
//! Certificates come from one `fedrouter_testkit::TestCa`; both clients trust only it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, StoredItem, DB_FILE};
use fedrouter_testkit::zone::{ZoneRecord, ZoneServer};
use fedrouter_testkit::TestCa;

use crate::prosody::{Prosody, ProsodySpec, S2sPolicy};
use crate::server::{a, add_user, srv, Fedrouter};
use crate::xmpp::{Client, Mech, Target};

/// Our hosted domain.
pub const OURS: &str = "cupdomain.test";
/// The domain Prosody serves.
pub const THEIRS: &str = "gmail.test";
/// Our user.
pub const CUPUSER: &str = "cupuser1";
/// Prosody's user.
pub const JDOE: &str = "jdoe1";
/// Both users' password.
pub const PASSWORD: &str = "interop s3cret";

/// A federation profile: both servers' settings for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Plain TCP + dialback on both sides (Google Talk federated this way).
    Google,
    /// TLS when offered, no certificate check, dialback.
    Webex,
    /// TLS required, certificates from the test CA verified, SASL EXTERNAL (XEP-0178).
    Strict,
}

impl Profile {
    /// `[federation.default]` for fedrouter.
    pub fn fedrouter_policy(self) -> &'static str {
        match self {
            Profile::Google => {
                "[federation.default]\ntls = \"disabled\"\nauth = \"dialback\"\nverify_certificates = false\n"
            }
            Profile::Webex => {
                "[federation.default]\ntls = \"optional\"\nauth = \"dialback\"\nverify_certificates = false\n"
            }
            Profile::Strict => {
                "[federation.default]\ntls = \"required\"\nauth = \"sasl-external\"\nverify_certificates = true\n"
            }
        }
    }
}

/// One test's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// fedrouter's address.
    pub fedrouter: Ipv4Addr,
    /// Prosody's address.
    pub prosody: Ipv4Addr,
    /// The DNS server's address (port 53).
    pub dns: Ipv4Addr,
}

impl Slot {
    /// Slot `k` (0..=9).
    pub fn new(k: u8) -> Slot {
        assert!(k <= 24, "slot {k} out of range");
        let base = 10 * k;
        Slot {
            fedrouter: Ipv4Addr::new(127, 0, 232, base + 1),
            prosody: Ipv4Addr::new(127, 0, 232, base + 2),
            dns: Ipv4Addr::new(127, 0, 232, base + 3),
        }
    }

    /// The slot `127.a.b.1 ..= 127.a.b.3` (fedrouter, Prosody, DNS), for tests given a
    /// net of their own outside `127.0.232.0/24`.
    pub fn in_net(a: u8, b: u8) -> Slot {
        Slot {
            fedrouter: Ipv4Addr::new(127, a, b, 1),
            prosody: Ipv4Addr::new(127, a, b, 2),
            dns: Ipv4Addr::new(127, a, b, 3),
        }
    }
}

/// Everything one test runs: DNS, CA, both servers.
///
/// Fields drop in order: fedrouter, Prosody, then the DNS server.
pub struct Lab {
    /// fedrouter.
    pub fedrouter: Fedrouter,
    /// Prosody.
    pub prosody: Prosody,
    /// The DNS server.
    pub dns: ZoneServer,
    /// The addresses.
    pub slot: Slot,
    /// The certificate authority both servers' certificates come from.
    pub ca: TestCa,
    /// Files shared by the lab (the CA's PEM).
    pub dir: tempfile::TempDir,
}

/// Options of a lab beyond the profile.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Extra fedrouter TOML (e.g. `[s2s]` timeouts), appended after the profile's tables.
    pub fedrouter_extra: String,
    /// Prosody's `s2s_secure_auth` instead of the profile's.
    pub prosody_secure_auth: Option<bool>,
    /// fedrouter's certificate comes from a CA Prosody does not trust.
    pub fedrouter_foreign_cert: bool,
    /// fedrouter's `[federation.default]` instead of the profile's.
    pub fedrouter_policy: Option<String>,
    /// Prosody loads `mod_s2s_bidi` (XEP-0288); off by default, as in Debian's file.
    pub prosody_bidi: bool,
    /// Prosody's `smacks_enabled_s2s` (XEP-0198 on S2S); `None`: its default, true.
    pub prosody_stream_management: Option<bool>,
}

/// The zone: `_xmpp-server._tcp.D` → `xmpp.D:5269` → the server's address, for both.
pub fn records(slot: Slot) -> Vec<ZoneRecord> {
    let mut r = Vec::new();
    for (domain, addr) in [(OURS, slot.fedrouter), (THEIRS, slot.prosody)] {
        let host = format!("xmpp.{domain}");
        r.push(srv("_xmpp-server", domain, &host, 5269));
        r.push(a(&host, addr));
    }
    r
}

impl Lab {
    /// Starts DNS, Prosody and fedrouter for `profile` in slot `k`, registers
    /// `jdoe1@gmail.test` on Prosody and `cupuser1@cupdomain.test` on fedrouter.
    pub fn start(k: u8, profile: Profile, opts: LabOptions) -> Lab {
        Lab::start_in(Slot::new(k), profile, opts)
    }

    /// [`Lab::start`] on the addresses of `slot`.
    pub fn start_in(slot: Slot, profile: Profile, opts: LabOptions) -> Lab {
        crate::prosody::require_installed();
        let dir = tempfile::Builder::new()
            .prefix("interop-lab-")
            .tempdir()
            .expect("temporary folder");
        let ca = TestCa::new("fedrouter interop test CA").expect("test CA");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.ca_cert_pem()).expect("write CA");

        let dns = ZoneServer::start(SocketAddr::new(slot.dns.into(), 53), records(slot))
            .unwrap_or_else(|e| {
                panic!(
                    "start the DNS server on {}:53 (Prosody's libunbound asks port 53, which needs root or CAP_NET_BIND_SERVICE): {e}",
                    slot.dns
                )
            });

        let theirs = ca.issue(THEIRS).expect("certificate for gmail.test");
        let mut s2s = match profile {
            Profile::Google => S2sPolicy {
                require_encryption: false,
                secure_auth: false,
                cafile: None,
                bidi: opts.prosody_bidi,
                stream_management: opts.prosody_stream_management.unwrap_or(true),
            },
            Profile::Webex => S2sPolicy {
                require_encryption: true,
                secure_auth: false,
                cafile: None,
                bidi: opts.prosody_bidi,
                stream_management: opts.prosody_stream_management.unwrap_or(true),
            },
            Profile::Strict => S2sPolicy {
                require_encryption: true,
                secure_auth: true,
                cafile: Some(ca_pem.clone()),
                bidi: opts.prosody_bidi,
                stream_management: opts.prosody_stream_management.unwrap_or(true),
            },
        };
        if let Some(secure) = opts.prosody_secure_auth {
            s2s.secure_auth = secure;
        }
        let prosody = Prosody::start(ProsodySpec {
            host: THEIRS.into(),
            addr: slot.prosody,
            dns: slot.dns,
            cert_pem: theirs.chain_pem(),
            key_pem: theirs.key_pem(),
            s2s,
        });
        prosody.register(JDOE, PASSWORD);

        // What cupuser1's client trusts: the CA of fedrouter's certificate.
        let our_ca_pem = dir.path().join("our-ca.pem");
        let ours = if opts.fedrouter_foreign_cert {
            let foreign = TestCa::new("a CA Prosody does not trust").expect("foreign CA");
            std::fs::write(&our_ca_pem, foreign.ca_cert_pem()).expect("write foreign CA");
            foreign.issue(OURS).expect("foreign certificate")
        } else {
            std::fs::write(&our_ca_pem, ca.ca_cert_pem()).expect("write CA");
            ca.issue(OURS).expect("certificate for cupdomain.test")
        };
        let fr = slot.fedrouter;
        let policy = opts
            .fedrouter_policy
            .clone()
            .unwrap_or_else(|| profile.fedrouter_policy().to_owned());
        let toml = format!(
            r#"domains = ["{OURS}"]
shards = 2

[listen]
s2s = ["{fr}:5269"]
s2s_tls = ["{fr}:5270"]
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
{extra}
"#,
            dns = slot.dns,
            extra = opts.fedrouter_extra,
        );
        let fedrouter = Fedrouter::start_with(
            OURS,
            &toml,
            &[
                ("ca.pem", &ca.ca_cert_pem()),
                ("ours.crt", &ours.chain_pem()),
                ("ours.key", &ours.key_pem()),
            ],
        );
        add_user(
            &fedrouter.config_path(),
            &format!("{CUPUSER}@{OURS}"),
            PASSWORD,
        );
        Lab {
            slot,
            ca,
            dir,
            dns,
            fedrouter,
            prosody,
        }
    }

    /// The CA's PEM file (what both clients trust).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// cupuser1 logged in to fedrouter (STARTTLS, SCRAM-SHA-256), resource `desk`.
    pub fn login_cupuser(&self) -> Client {
        let t = Target {
            addr: SocketAddr::new(self.slot.fedrouter.into(), 5222),
            domain: OURS.into(),
            cert: self.dir.path().join("our-ca.pem"),
        };
        Client::login_with(&t, Mech::ScramSha256, CUPUSER, PASSWORD, Some("desk"))
    }

    /// `user` (a localpart of `cupdomain.test`, added with [`crate::server::add_user`])
    /// logged in to fedrouter (STARTTLS, SCRAM-SHA-256), resource `resource`.
    pub fn login_local(&self, user: &str, resource: &str) -> Client {
        let t = Target {
            addr: SocketAddr::new(self.slot.fedrouter.into(), 5222),
            domain: OURS.into(),
            cert: self.dir.path().join("our-ca.pem"),
        };
        Client::login_with(&t, Mech::ScramSha256, user, PASSWORD, Some(resource))
    }

    /// jdoe1 logged in to Prosody (STARTTLS, SCRAM-SHA-1: Prosody 0.12 offers no
    /// SCRAM-SHA-256), resource `phone`.
    pub fn login_jdoe(&self) -> Client {
        let t = Target {
            addr: self.prosody.c2s(),
            domain: THEIRS.into(),
            cert: self.ca_pem(),
        };
        Client::login_with(&t, Mech::ScramSha1, JDOE, PASSWORD, Some("phone"))
    }

    /// cupuser1's stored row for `contact`, read from fedrouter's database (stop it first).
    pub fn fedrouter_row(&self, contact: &str) -> Option<StoredItem> {
        let data = self.fedrouter.dir().join("data");
        let mut store = SqliteStore::open(data.join(DB_FILE))
            .unwrap_or_else(|e| panic!("open {}: {e}", data.display()));
        let user = format!("{CUPUSER}@{OURS}");
        let (_ver, items) = store
            .roster(&user)
            .unwrap_or_else(|e| panic!("roster of {user}: {e}"));
        items.into_iter().find(|i| i.contact == contact)
    }
}
