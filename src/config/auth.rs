//! The `[auth]` section: how clients' passwords are checked ([`AuthSection`]), with the
//! LDAP directory's settings (`[auth.ldap]`, [`LdapSection`]), their defaults and their
//! validation (errors name the key).
//!
//! ```toml
//! [auth]
//! backend = "ldap"                  # or "internal" (the default: SCRAM credentials in the store)
//! [auth.ldap]
//! urls = ["ldaps://ldap.example.com"]   # or ldap://… with starttls = true; tried in order
//! starttls = false
//! base_dn = "ou=people,dc=example,dc=com"
//! filter = "(&(objectClass=inetOrgPerson)(uid=%u))"   # %u: the username, RFC 4515-escaped
//! bind_dn = "cn=fedrouter,dc=example,dc=com"          # service account for the search
//! bind_password_file = "/etc/fedrouter/ldap.secret"   # or bind_password = "…"
//! ca_file = "/etc/fedrouter/ldap-ca.pem"              # absent: the system's roots
//! connect_timeout = "5s"
//! timeout = "5s"                    # each LDAP operation; a whole check: connect + 3 × this,
//!                                   # under c2s.negotiation_timeout
//! pool_size = 4                     # connections to the directory
//! queue = 256                       # checks waiting for a connection; more: temporary-auth-failure
//! cache_ttl = "5m"                  # positive results remembered (salted hash); "0s" = off
//! cache_size = 10000
//! probe_interval = "10s"            # how often the directory's state is checked
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::invalid;
use super::ConfigError;

/// Where clients' passwords are checked (`auth.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackend {
    /// `"internal"`: SCRAM credentials in the store (`fedrouter user add`); SASL
    /// `SCRAM-SHA-256`, `SCRAM-SHA-1` and `PLAIN` over TLS. The default.
    #[default]
    Internal,
    /// `"ldap"`: a search and a bind as the user against an LDAP directory
    /// (`[auth.ldap]`); SASL `PLAIN` over TLS only.
    Ldap,
}

/// How clients authenticate (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthSection {
    /// Key `auth.backend`: [`AuthBackend::Internal`] (default) or [`AuthBackend::Ldap`].
    pub backend: AuthBackend,
    /// `[auth.ldap]`: required with the `ldap` backend, ignored otherwise.
    pub ldap: Option<LdapSection>,
}

/// A password from the configuration (`auth.ldap.bind_password`): [`Debug`](fmt::Debug)
/// does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> SecretString {
        SecretString(s.into())
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// The LDAP directory (`[auth.ldap]`): search-then-bind (RFC 4513 §5.2 simple bind, RFC
/// 4511 search) over LDAPS or StartTLS (RFC 4513 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSection {
    /// Key `auth.ldap.urls` (or `auth.ldap.url`, one): `ldaps://host[:port]`, or
    /// `ldap://host[:port]` with `starttls = true`; tried in order. Required.
    pub urls: Vec<String>,
    /// Key `auth.ldap.starttls`: upgrade `ldap://` connections with StartTLS (RFC 4511
    /// §4.14); default `false`. A plain `ldap://` URL without it is refused: passwords
    /// would cross the network in clear.
    pub starttls: bool,
    /// Key `auth.ldap.base_dn`: where users are searched (subtree). Required.
    pub base_dn: String,
    /// Key `auth.ldap.filter`: the search filter (RFC 4515), with `%u` where the username
    /// (the JID's localpart, escaped per RFC 4515 §3) goes; default `(uid=%u)`. Must
    /// contain `%u` and be parenthesised.
    pub filter: String,
    /// Key `auth.ldap.bind_dn`: the service account the search binds as; absent: the
    /// search is anonymous.
    pub bind_dn: Option<String>,
    /// Key `auth.ldap.bind_password`: the service account's password. At most one of it
    /// and `bind_password_file`; one of them is required with `bind_dn`.
    pub bind_password: Option<SecretString>,
    /// Key `auth.ldap.bind_password_file`: a file holding the service account's password
    /// (one line; a final newline is dropped), read by [`super::Config::materialize`].
    pub bind_password_file: Option<PathBuf>,
    /// Key `auth.ldap.ca_file`: PEM CA certificates the directory's certificate must chain
    /// to; absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Key `auth.ldap.connect_timeout`: TCP connect plus TLS handshake, per URL; default
    /// 5 s; not zero.
    pub connect_timeout: Duration,
    /// Key `auth.ldap.timeout`: each LDAP operation (bind, search); default 5 s; not zero.
    pub timeout: Duration,
    /// Key `auth.ldap.pool_size`: most connections open to the directory (also most
    /// checks running at once); default 4; 1 to 256.
    pub pool_size: usize,
    /// Key `auth.ldap.queue`: most checks waiting for a connection; one more is answered
    /// `temporary-auth-failure` at once; default 256; 1 to 65536.
    pub queue: usize,
    /// Key `auth.ldap.cache_ttl`: how long a successful check is remembered (a salted
    /// hash of the password, never the password); default 5 min; `"0s"` disables the
    /// cache.
    pub cache_ttl: Duration,
    /// Key `auth.ldap.cache_size`: most users remembered; default 10000; 1 to 1048576.
    pub cache_size: usize,
    /// Key `auth.ldap.probe_interval`: how often a connection (and the service account's
    /// bind) is tried to keep the directory's state current; default 10 s; not zero.
    pub probe_interval: Duration,
}

impl Default for LdapSection {
    /// No URL nor base DN (both required), `(uid=%u)`, anonymous search, 5 s timeouts,
    /// 4 connections, a queue of 256, a 5 min cache of 10000 users, a 10 s probe.
    fn default() -> Self {
        LdapSection {
            urls: Vec::new(),
            starttls: false,
            base_dn: String::new(),
            filter: "(uid=%u)".to_owned(),
            bind_dn: None,
            bind_password: None,
            bind_password_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            pool_size: 4,
            queue: 256,
            cache_ttl: Duration::from_secs(300),
            cache_size: 10_000,
            probe_interval: Duration::from_secs(10),
        }
    }
}

impl LdapSection {
    /// The longest one password check may take: `connect_timeout + 3 × timeout` (a
    /// connection, the service bind, the search, the user's bind); a check still running
    /// then is answered `temporary-auth-failure`.
    pub fn check_budget(&self) -> Duration {
        self.connect_timeout
            .saturating_add(self.timeout.saturating_mul(3))
    }
}

/// `[auth]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    backend: AuthBackend,
    ldap: Option<RawLdap>,
}

/// `[auth.ldap]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    url: Option<String>,
    urls: Option<Vec<String>>,
    starttls: Option<bool>,
    base_dn: Option<String>,
    filter: Option<String>,
    bind_dn: Option<String>,
    bind_password: Option<String>,
    bind_password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    pool_size: Option<usize>,
    queue: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    cache_ttl: Option<Duration>,
    cache_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    probe_interval: Option<Duration>,
}

impl RawAuth {
    /// The section with defaults filled in.
    ///
    /// Errors: `auth.ldap.url` and `auth.ldap.urls` both given.
    pub(super) fn into_section(self) -> Result<AuthSection, ConfigError> {
        let ldap = match self.ldap {
            None => None,
            Some(r) => {
                let d = LdapSection::default();
                let urls = match (r.url, r.urls) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "auth.ldap.url",
                            "give either auth.ldap.url or auth.ldap.urls, not both",
                        ))
                    }
                    (Some(u), None) => vec![u],
                    (None, Some(list)) => list,
                    (None, None) => Vec::new(),
                };
                Some(LdapSection {
                    urls,
                    starttls: r.starttls.unwrap_or(d.starttls),
                    base_dn: r.base_dn.unwrap_or(d.base_dn),
                    filter: r.filter.unwrap_or(d.filter),
                    bind_dn: r.bind_dn,
                    bind_password: r.bind_password.map(SecretString::new),
                    bind_password_file: r.bind_password_file,
                    ca_file: r.ca_file,
                    connect_timeout: r.connect_timeout.unwrap_or(d.connect_timeout),
                    timeout: r.timeout.unwrap_or(d.timeout),
                    pool_size: r.pool_size.unwrap_or(d.pool_size),
                    queue: r.queue.unwrap_or(d.queue),
                    cache_ttl: r.cache_ttl.unwrap_or(d.cache_ttl),
                    cache_size: r.cache_size.unwrap_or(d.cache_size),
                    probe_interval: r.probe_interval.unwrap_or(d.probe_interval),
                })
            }
        };
        Ok(AuthSection {
            backend: self.backend,
            ldap,
        })
    }
}

fn check_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

fn check_nonzero(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(invalid(key, "must be more than 0s"))
    } else {
        Ok(())
    }
}

impl AuthSection {
    /// Checks `[auth]`: with the `ldap` backend, `[auth.ldap]` is present, every URL is
    /// `ldaps://` or (with `starttls`) `ldap://` with a host, `base_dn` is set, `filter`
    /// is parenthesised and contains `%u`, the service account has exactly one password
    /// source, timeouts are non-zero and sizes in range, and a whole check
    /// ([`LdapSection::check_budget`]) fits in `c2s_negotiation_timeout` (so that a slow
    /// directory gives the client `temporary-auth-failure`, not a stream timeout).
    pub(super) fn validate(&self, c2s_negotiation_timeout: Duration) -> Result<(), ConfigError> {
        if self.backend != AuthBackend::Ldap {
            return Ok(());
        }
        let Some(l) = &self.ldap else {
            return Err(invalid(
                "auth.ldap",
                "auth.backend = \"ldap\" needs an [auth.ldap] section (urls, base_dn, filter)",
            ));
        };
        if l.urls.is_empty() {
            return Err(invalid(
                "auth.ldap.urls",
                "at least one ldaps:// or ldap:// URL is required",
            ));
        }
        for (i, u) in l.urls.iter().enumerate() {
            let key = format!("auth.ldap.urls[{i}]");
            let (scheme, rest) = u
                .split_once("://")
                .ok_or_else(|| invalid(&key, format!("{u:?} is not an ldaps:// or ldap:// URL")))?;
            match scheme.to_ascii_lowercase().as_str() {
                "ldaps" if l.starttls => {
                    return Err(invalid(
                        &key,
                        format!("{u:?} is already TLS: starttls = true needs ldap:// URLs"),
                    ))
                }
                "ldaps" => {}
                "ldap" if l.starttls => {}
                "ldap" => {
                    return Err(invalid(
                        &key,
                        format!(
                            "{u:?} is not encrypted: use ldaps://, or set auth.ldap.starttls = true"
                        ),
                    ))
                }
                _ => {
                    return Err(invalid(
                        &key,
                        format!("{u:?} is not an ldaps:// or ldap:// URL"),
                    ))
                }
            }
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() || host.starts_with(':') {
                return Err(invalid(&key, format!("{u:?} names no host")));
            }
        }
        if l.base_dn.trim().is_empty() {
            return Err(invalid(
                "auth.ldap.base_dn",
                "required: where users are searched, e.g. \"ou=people,dc=example,dc=com\"",
            ));
        }
        if !l.filter.contains("%u") {
            return Err(invalid(
                "auth.ldap.filter",
                format!(
                    "{:?} must contain %u where the username goes, e.g. \"(uid=%u)\"",
                    l.filter
                ),
            ));
        }
        let f = l.filter.trim();
        if !(f.starts_with('(') && f.ends_with(')')) {
            return Err(invalid(
                "auth.ldap.filter",
                format!(
                    "{:?} must be a parenthesised filter, e.g. \"(uid=%u)\"",
                    l.filter
                ),
            ));
        }
        match (
            &l.bind_dn,
            l.bind_password.is_some(),
            l.bind_password_file.is_some(),
        ) {
            (_, true, true) => {
                return Err(invalid(
                    "auth.ldap.bind_password",
                    "give either bind_password or bind_password_file, not both",
                ))
            }
            (Some(_), false, false) => {
                return Err(invalid(
                    "auth.ldap.bind_password",
                    "auth.ldap.bind_dn needs bind_password or bind_password_file",
                ))
            }
            (None, true, _) | (None, _, true) => {
                return Err(invalid(
                    "auth.ldap.bind_dn",
                    "a service account password is given without bind_dn",
                ))
            }
            _ => {}
        }
        if let Some(dn) = &l.bind_dn {
            if dn.trim().is_empty() {
                return Err(invalid("auth.ldap.bind_dn", "must not be empty"));
            }
        }
        if let Some(p) = &l.ca_file {
            if p.as_os_str().is_empty() {
                return Err(invalid("auth.ldap.ca_file", "must not be empty"));
            }
        }
        check_nonzero("auth.ldap.connect_timeout", l.connect_timeout)?;
        check_nonzero("auth.ldap.timeout", l.timeout)?;
        check_nonzero("auth.ldap.probe_interval", l.probe_interval)?;
        check_range("auth.ldap.pool_size", l.pool_size, 1, 256)?;
        check_range("auth.ldap.queue", l.queue, 1, 65536)?;
        check_range("auth.ldap.cache_size", l.cache_size, 1, 1 << 20)?;
        if l.check_budget() >= c2s_negotiation_timeout {
            return Err(invalid(
                "auth.ldap.timeout",
                format!(
                    "auth.ldap.connect_timeout + 3 × auth.ldap.timeout ({}) must be less than c2s.negotiation_timeout ({})",
                    humantime::format_duration(l.check_budget()),
                    humantime::format_duration(c2s_negotiation_timeout)
                ),
            ));
        }
        Ok(())
    }
}
