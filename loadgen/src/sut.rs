//! The system under test: an embedded fedrouter (started in this process on loopback, with
//! its own temporary data directory and the local users created in its store), or any
//! external XMPP server given by its addresses.
//!
//! Creating the local users of an external server (`user0` … `user{K−1}`, one password):
//!
//! ```text
//! fedrouter:  for i in $(seq 0 99); do echo loadgen | fedrouter user add -c fedrouter.toml user$i@cupdomain.test; done
//! Prosody:    for i in $(seq 0 99); do prosodyctl register user$i cupdomain.test loadgen; done
//! ejabberd:   for i in $(seq 0 99); do ejabberdctl register user$i cupdomain.test loadgen; done
//! ```
//!
//! `loadgen accounts --server fedrouter|prosody|ejabberd [--config FILE]` prints these
//! lines for the run's options.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedrouter::config::Config;
use fedrouter::runtime::Server;
use fedrouter::store::scram::{ScramCredentials, ScramHash};
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, DB_FILE, SCRAM_ITERATIONS};
use rustls::RootCertStore;

/// How the embedded fedrouter federates with the peers (its `[federation.default]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Plain TCP + dialback (Google-style).
    Google,
    /// Optional TLS without certificate checks + dialback (WebEx-style).
    Webex,
    /// TLS required, verified certificates, SASL EXTERNAL.
    Strict,
}

impl Profile {
    fn toml(self) -> &'static str {
        match self {
            Profile::Google => {
                "tls = \"disabled\"\nauth = \"dialback\"\nverify_certificates = false\n"
            }
            Profile::Webex => {
                "tls = \"optional\"\nauth = \"dialback\"\nverify_certificates = false\n"
            }
            Profile::Strict => {
                "tls = \"required\"\nauth = \"sasl-external\"\nverify_certificates = true\n"
            }
        }
    }
}

/// Options of the embedded fedrouter.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Its domain.
    pub domain: String,
    /// The loopback address it listens on (S2S 5269, C2S 5222, admin 9269).
    pub ip: IpAddr,
    /// Shard threads.
    pub shards: usize,
    /// The DNS server it resolves peers with (loadgen's zone).
    pub nameserver: SocketAddr,
    /// Local users to create (`user0`…), all with `password`.
    pub local_users: u32,
    /// Their password.
    pub password: String,
    /// Federation profile towards the peers.
    pub profile: Profile,
    /// CA certificate (PEM) of the peers' certificates, trusted for SASL EXTERNAL.
    pub peer_ca_pem: Option<String>,
    /// Outbound multiplexing by SRV target (XEP-0220 §2.4, `multiplex` in
    /// `[federation.default]`).
    pub multiplex: bool,
}

/// A running embedded fedrouter.
pub struct Embedded {
    server: Option<Server>,
    _dir: tempfile::TempDir,
    /// Its S2S address.
    pub s2s: SocketAddr,
    /// Its C2S address.
    pub c2s: SocketAddr,
    /// Its admin endpoint.
    pub admin: Option<SocketAddr>,
    /// Roots that verify its (generated, self-signed) certificate.
    pub roots: Arc<RootCertStore>,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("s2s", &self.s2s)
            .field("c2s", &self.c2s)
            .finish()
    }
}

fn create_users(data_dir: &Path, domain: &str, k: u32, password: &str) -> Result<(), String> {
    let mut store = SqliteStore::open(data_dir.join(DB_FILE)).map_err(|e| e.to_string())?;
    // One salt for every test account: the SCRAM derivation (4,096 PBKDF2 rounds per
    // hash) is done once, not K times. `fedrouter user add` salts each user.
    let creds: Vec<ScramCredentials> = ScramHash::ALL
        .iter()
        .map(|&h| {
            ScramCredentials::with_random_salt(password, h, SCRAM_ITERATIONS, &mut rand::rng())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for i in 0..k {
        store
            .add_user(&format!("user{i}@{domain}"), &creds)
            .map_err(|e| format!("user{i}@{domain}: {e}"))?;
    }
    Ok(())
}

impl Embedded {
    /// Writes the configuration, creates the users and starts fedrouter.
    ///
    /// Errors: a message naming what failed (configuration, store, start-up).
    pub fn start(opts: &EmbeddedOptions) -> Result<Embedded, String> {
        let dir = tempfile::Builder::new()
            .prefix("loadgen-sut-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let data_dir = dir.path().join("data");
        let mut trust = String::new();
        if let Some(pem) = &opts.peer_ca_pem {
            let path = dir.path().join("peer-ca.pem");
            std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
            trust = format!("[tls]\ntrust = [{:?}]\n", path.display().to_string());
        }
        let ip = opts.ip;
        let toml = format!(
            r#"data_dir = {data:?}
domains = [{domain:?}]
shards = {shards}

[listen]
s2s = ["{s2s}"]
s2s_tls = []
c2s = ["{c2s}"]
admin = "{admin}"

[dns]
nameservers = ["{ns}"]
timeout = "2s"

[store]
durability = "crash"

{trust}
[federation.default]
{profile}multiplex = {multiplex}
"#,
            data = data_dir.display().to_string(),
            domain = opts.domain,
            shards = opts.shards,
            s2s = SocketAddr::new(ip, 5269),
            c2s = SocketAddr::new(ip, 5222),
            admin = SocketAddr::new(ip, 9269),
            ns = opts.nameserver,
            profile = opts.profile.toml(),
            multiplex = opts.multiplex,
        );
        let config = Config::from_toml_str(&toml).map_err(|e| format!("SUT configuration: {e}"))?;
        let materialized = config
            .materialize()
            .map_err(|e| format!("SUT configuration: {e}"))?;
        create_users(&data_dir, &opts.domain, opts.local_users, &opts.password)?;
        let mut roots = RootCertStore::empty();
        for c in &materialized.certificates {
            for der in c.chain() {
                let _ = roots.add(der.clone());
            }
        }
        let server = Server::start(config, materialized).map_err(|e| format!("SUT: {e}"))?;
        let addrs = server.addrs().clone();
        Ok(Embedded {
            s2s: addrs.s2s.first().copied().ok_or("SUT: no S2S listener")?,
            c2s: addrs.c2s.first().copied().ok_or("SUT: no C2S listener")?,
            admin: addrs.admin,
            server: Some(server),
            _dir: dir,
            roots: Arc::new(roots),
            data_dir,
        })
    }

    /// Stops the server and waits for its threads.
    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.join();
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.join();
        }
    }
}

/// How `ejabberdctl` reaches a node: its `ejabberdctl.cfg` and node name.
///
/// `ejabberdctl --config FILE` only names `ejabberd.yml`; the node it talks to comes from
/// `ERLANG_NODE` in `ejabberdctl.cfg` (or `--node`), so a command built from `--config`
/// alone reaches the default `ejabberd@localhost`, not the server being measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjabberdCtl {
    /// `ejabberdctl.cfg` (`--ctl-config`), when there is one.
    pub ctl_config: Option<PathBuf>,
    /// The Erlang node name (`--node`), e.g. `ejabberd@localhost`.
    pub node: String,
}

impl EjabberdCtl {
    /// The `ejabberdctl` options for the ejabberd whose `ejabberd.yml` is `config`: the
    /// `ejabberdctl.cfg` beside it, and the node named by `node` or else by that file's
    /// `ERLANG_NODE=`.
    ///
    /// # Errors
    ///
    /// A message when no node is given and none can be read beside `config` (the command
    /// would silently reach another node).
    pub fn beside(config: &Path, node: Option<&str>) -> Result<EjabberdCtl, String> {
        let ctl = config
            .parent()
            .unwrap_or(Path::new("."))
            .join("ejabberdctl.cfg");
        let text = std::fs::read_to_string(&ctl).ok();
        let from_file = text.as_deref().and_then(erlang_node);
        let node = match (node, from_file) {
            (Some(n), _) => n.to_owned(),
            (None, Some(n)) => n,
            (None, None) => {
                return Err(format!(
                    "{}: no ERLANG_NODE in {}; give the node with --node \
                     (ejabberdctl takes it from ejabberdctl.cfg, not from --config)",
                    config.display(),
                    ctl.display()
                ))
            }
        };
        Ok(EjabberdCtl {
            ctl_config: text.is_some().then_some(ctl),
            node,
        })
    }
}

/// The value of the last uncommented `ERLANG_NODE=` line of an `ejabberdctl.cfg`, without
/// quotes.
fn erlang_node(cfg: &str) -> Option<String> {
    cfg.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("ERLANG_NODE="))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .find(|v| !v.is_empty())
}

/// The commands that create the run's local users on `server` (`fedrouter`, `prosody` or
/// `ejabberd`), one per line, with the server's configuration file when given (and, for
/// ejabberd, the node it must reach: see [`EjabberdCtl`]); `None` for another server.
pub fn account_commands(
    server: &str,
    config: Option<&Path>,
    ejabberd: Option<&EjabberdCtl>,
    domain: &str,
    k: u32,
    password: &str,
) -> Option<String> {
    let cfg =
        |flag: &str| config.map_or_else(String::new, |c| format!(" {flag} '{}'", c.display()));
    let ctl = ejabberd.map_or_else(String::new, |e| {
        let dir = config
            .and_then(Path::parent)
            .map_or_else(String::new, |d| format!(" --config-dir '{}'", d.display()));
        let ctl_cfg = e
            .ctl_config
            .as_deref()
            .map_or_else(String::new, |c| format!(" --ctl-config '{}'", c.display()));
        format!("{dir}{ctl_cfg} --node '{}'", e.node)
    });
    let line = |i: u32| match server {
        "fedrouter" => Some(format!(
            "echo '{password}' | fedrouter user add{} user{i}@{domain}",
            cfg("-c")
        )),
        "prosody" => Some(format!(
            "prosodyctl{} register user{i} {domain} '{password}'",
            cfg("--config")
        )),
        "ejabberd" => Some(format!(
            "ejabberdctl{}{ctl} register user{i} {domain} '{password}'",
            cfg("--config")
        )),
        _ => None,
    };
    let mut out = String::new();
    for i in 0..k {
        out.push_str(&line(i)?);
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_commands_name_the_configuration() {
        let f = account_commands(
            "fedrouter",
            Some(Path::new("/etc/f.toml")),
            None,
            "c.test",
            2,
            "pw",
        )
        .expect("known server");
        assert_eq!(
            f,
            "echo 'pw' | fedrouter user add -c '/etc/f.toml' user0@c.test\n\
             echo 'pw' | fedrouter user add -c '/etc/f.toml' user1@c.test\n"
        );
        let p = account_commands("prosody", None, None, "c.test", 1, "pw").expect("known server");
        assert_eq!(p, "prosodyctl register user0 c.test 'pw'\n");
        assert!(account_commands("ejabberd", None, None, "c.test", 1, "pw")
            .expect("known")
            .starts_with("ejabberdctl register user0 c.test"));
        assert_eq!(
            account_commands("openfire", None, None, "c.test", 1, "pw"),
            None
        );
    }

    #[test]
    fn ejabberd_commands_reach_the_node_of_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let yml = dir.path().join("ejabberd.yml");
        std::fs::write(&yml, "hosts: [c.test]\n").unwrap();
        // No ejabberdctl.cfg and no --node: refused, naming what is missing.
        let e = EjabberdCtl::beside(&yml, None).unwrap_err();
        assert!(e.contains("--node") && e.contains("ejabberdctl.cfg"), "{e}");
        // ERLANG_NODE from the file (the last uncommented one), quotes removed.
        let cfg = dir.path().join("ejabberdctl.cfg");
        std::fs::write(
            &cfg,
            "#ERLANG_NODE=ejabberd@localhost\nERLANG_NODE=\"bench@localhost\"\n",
        )
        .unwrap();
        let e = EjabberdCtl::beside(&yml, None).unwrap();
        assert_eq!(e.node, "bench@localhost");
        assert_eq!(e.ctl_config.as_deref(), Some(cfg.as_path()));
        let line = account_commands("ejabberd", Some(&yml), Some(&e), "c.test", 1, "pw").unwrap();
        let d = dir.path().display();
        assert_eq!(
            line,
            format!(
                "ejabberdctl --config '{d}/ejabberd.yml' --config-dir '{d}' \
                 --ctl-config '{d}/ejabberdctl.cfg' --node 'bench@localhost' \
                 register user0 c.test 'pw'\n"
            )
        );
        // --node wins over the file.
        assert_eq!(
            EjabberdCtl::beside(&yml, Some("other@localhost"))
                .unwrap()
                .node,
            "other@localhost"
        );
    }
}
