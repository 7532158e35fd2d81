//! [`Config::validate`]: every value's range and the consistency between values; each error
//! names its key (`s2s.backoff_max: must be at least s2s.backoff_initial (1s)`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::jid::DomainPart;

use super::error::invalid;
use super::{
    Config, ConfigError, StaticTarget, StoreBackend, MAX_DNS_CACHE, MAX_DNS_IN_FLIGHT,
    MAX_INBOX_BATCH, MAX_INBOX_CAPACITY, MAX_OFFLINE_MESSAGES, MAX_QUEUE_PER_DOMAIN, MAX_SHARDS,
    MAX_STANZA_SIZE, MIN_SECRET_BYTES, MIN_STANZA_SIZE,
};

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// A domain key: valid (RFC 7622 §3.2) and in normalised form.
fn check_domain(key: &str, raw: &str) -> Result<(), ConfigError> {
    match DomainPart::new(raw) {
        Err(e) => Err(invalid(key, format!("{raw:?} is not a valid domain ({e})"))),
        Ok(d) if d.as_str() != raw => Err(invalid(
            key,
            format!("{raw:?} is not in normalised form (write {:?})", d.as_str()),
        )),
        Ok(_) => Ok(()),
    }
}

fn is_ip_literal(domain: &str) -> bool {
    domain.starts_with('[') || domain.parse::<Ipv4Addr>().is_ok()
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

fn check_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        Err(invalid(key, "must not be empty"))
    } else {
        Ok(())
    }
}

impl Config {
    /// Checks every value's range and the consistency between values; the first problem
    /// found is returned as [`ConfigError::Invalid`] naming its key.
    ///
    /// Checked: `domains` non-empty, each a valid normalised RFC 7622 §3.2 domainpart that
    /// is not an IP address, no duplicates; `shards` in 1..=[`MAX_SHARDS`]; `data_dir`
    /// non-empty; no address (other than port 0) used by two listeners; each
    /// `tls.certificate` for a distinct local domain, with non-empty paths; `dns` timeout
    /// non-zero, cache size in range, static keys valid domains and targets a valid host and
    /// a non-zero port; `s2s` timeouts non-zero (`idle_timeout` may be `None`, not zero),
    /// `queue_per_domain`, `max_stanza_size` in range, `send_queue_bytes >=
    /// max_stanza_size`, `backoff_max >= backoff_initial`, a secret of at least
    /// [`MIN_SECRET_BYTES`]; `inbox` sizes in range; `log.level` a valid `EnvFilter`
    /// (`log.format` is checked when the file is read); `[auth]` (see
    /// [`super::AuthSection`]: URLs, base DN, filter, service account, ranges);
    /// `federation.domains` keys valid normalised domains.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_domains()?;
        check_range("shards", self.shards, 1, MAX_SHARDS)?;
        check_path("data_dir", &self.data_dir)?;
        self.validate_listen()?;
        self.validate_tls()?;
        self.validate_dns()?;
        self.validate_s2s()?;
        check_range("inbox.capacity", self.inbox.capacity, 1, MAX_INBOX_CAPACITY)?;
        check_range("inbox.batch", self.inbox.batch, 1, MAX_INBOX_BATCH)?;
        self.validate_c2s()?;
        self.auth.validate(self.c2s.negotiation_timeout)?;
        if self.c2s.allow_registration && self.auth.backend == super::auth::AuthBackend::Ldap {
            return Err(invalid(
                "c2s.allow_registration",
                "accounts come from the directory with [auth] backend = \"ldap\"; turn one off",
            ));
        }
        check_range("store.max_batch", self.store.max_batch, 1, 65536)?;
        check_range("store.queue", self.store.queue, 1, 1 << 20)?;
        self.validate_store()?;
        self.validate_log()?;
        self.limits.validate()?;
        self.validate_cluster()?;
        let mut keys: Vec<&String> = self.federation.domains.keys().collect();
        keys.sort();
        for domain in keys {
            check_domain(&format!("federation.domains.{domain:?}"), domain)?;
        }
        Ok(())
    }

    /// `[cluster]`: its own keys, and what nodes must share: the PostgreSQL store (users,
    /// rosters and the durable outbox survive a node) and the dialback secret (every node
    /// answers `db:verify` for every local domain, XEP-0220 §2.1.3).
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        c.validate()?;
        if self.store.backend != StoreBackend::Postgres {
            return Err(invalid(
                "store.backend",
                "[cluster] needs the shared store: set backend = \"postgres\" and url",
            ));
        }
        if self.s2s.dialback_secret.is_none() {
            return Err(invalid(
                "s2s.dialback_secret",
                "[cluster] needs the same dialback secret on every node (a generated one differs per node)",
            ));
        }
        if c.c2s_address.is_none() && self.listen.c2s.is_empty() {
            return Err(invalid(
                "cluster.c2s_address",
                "needed when listen.c2s is empty (where other nodes send this node's clients)",
            ));
        }
        Ok(())
    }

    /// `[store]`: `url` required with (and only with) the PostgreSQL backend, parsable,
    /// naming a host; timeouts non-zero; `reconnect_max >= reconnect_initial`. Messages
    /// show the URL with its password redacted.
    fn validate_store(&self) -> Result<(), ConfigError> {
        use crate::store::postgres::{parse_url, redact_url};
        let st = &self.store;
        match (st.backend, &st.url) {
            (StoreBackend::Sqlite, None) => {}
            (StoreBackend::Sqlite, Some(_)) => {
                return Err(invalid(
                    "store.url",
                    "only used with store.backend = \"postgres\" (the SQLite database is <data_dir>/fedrouter.db)",
                ))
            }
            (StoreBackend::Postgres, None) => {
                return Err(invalid(
                    "store.url",
                    "store.backend = \"postgres\" needs the server's URL, e.g. \
                     \"postgresql://fedrouter:PASSWORD@127.0.0.1:5432/fedrouter\"",
                ))
            }
            (StoreBackend::Postgres, Some(url)) => {
                if let Err(e) = parse_url(url.expose()) {
                    return Err(invalid(
                        "store.url",
                        format!("{:?} is not a PostgreSQL connection string: {e}", redact_url(url.expose())),
                    ));
                }
            }
        }
        check_nonzero("store.connect_timeout", st.connect_timeout)?;
        check_nonzero("store.statement_timeout", st.statement_timeout)?;
        check_nonzero("store.reconnect_initial", st.reconnect_initial)?;
        if st.reconnect_max < st.reconnect_initial {
            return Err(invalid(
                "store.reconnect_max",
                format!(
                    "must be at least store.reconnect_initial ({})",
                    show(st.reconnect_initial)
                ),
            ));
        }
        Ok(())
    }

    fn validate_domains(&self) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(invalid("domains", "at least one local domain is required"));
        }
        for (i, domain) in self.domains.iter().enumerate() {
            let key = format!("domains[{i}]");
            check_domain(&key, domain)?;
            if is_ip_literal(domain) {
                return Err(invalid(
                    key,
                    format!("{domain:?} is an IP address; a hosted domain must be a DNS name"),
                ));
            }
            if let Some(j) = self.domains[..i].iter().position(|d| d == domain) {
                return Err(invalid(
                    key,
                    format!("{domain:?} is listed twice (also domains[{j}]; domains compare case-insensitively)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_listen(&self) -> Result<(), ConfigError> {
        let l = &self.listen;
        let mut all: Vec<(String, SocketAddr)> = Vec::new();
        for (name, addrs) in [("s2s", &l.s2s), ("s2s_tls", &l.s2s_tls), ("c2s", &l.c2s)] {
            for (i, addr) in addrs.iter().enumerate() {
                all.push((format!("listen.{name}[{i}]"), *addr));
            }
        }
        if let Some(addr) = l.admin {
            all.push(("listen.admin".to_owned(), addr));
        }
        for (n, (key, addr)) in all.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = all[..n].iter().find(|(_, a)| a == addr) {
                return Err(invalid(key, format!("{addr} is already used by {other}")));
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        for (i, path) in self.tls.trust.iter().enumerate() {
            check_path(&format!("tls.trust[{i}]"), path)?;
        }
        for (i, entry) in self.tls.certificates.iter().enumerate() {
            let key = format!("tls.certificate[{i}].domain");
            check_domain(&key, &entry.domain)?;
            if !self.domains.contains(&entry.domain) {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} is not one of the local domains {:?}",
                        entry.domain, self.domains
                    ),
                ));
            }
            if let Some(j) = self.tls.certificates[..i]
                .iter()
                .position(|e| e.domain == entry.domain)
            {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} already has a certificate (tls.certificate[{j}])",
                        entry.domain
                    ),
                ));
            }
            check_path(&format!("tls.certificate[{i}].cert"), &entry.cert)?;
            check_path(&format!("tls.certificate[{i}].key"), &entry.key)?;
        }
        Ok(())
    }

    fn validate_dns(&self) -> Result<(), ConfigError> {
        let dns = &self.dns;
        for (i, addr) in dns.nameservers.iter().enumerate() {
            if addr.port() == 0 {
                return Err(invalid(
                    format!("dns.nameservers[{i}]"),
                    format!("{addr}: port 0 is not a nameserver port"),
                ));
            }
        }
        check_nonzero("dns.timeout", dns.timeout)?;
        check_range("dns.cache_size", dns.cache_size, 1, MAX_DNS_CACHE)?;
        check_range("dns.max_in_flight", dns.max_in_flight, 1, MAX_DNS_IN_FLIGHT)?;
        let mut domains: Vec<(&String, &StaticTarget)> = dns.static_targets.iter().collect();
        domains.sort_by(|a, b| a.0.cmp(b.0));
        for (domain, target) in domains {
            let key = format!("dns.static.{domain:?}");
            check_domain(&key, domain)?;
            let host_ok =
                target.host.parse::<IpAddr>().is_ok() || DomainPart::new(&target.host).is_ok();
            if !host_ok || target.port == 0 {
                return Err(invalid(
                    key,
                    format!(
                        "expected host:port with a host name or IP address and a port from 1 to 65535, got {:?}",
                        target.to_string()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_s2s(&self) -> Result<(), ConfigError> {
        let s = &self.s2s;
        check_nonzero("s2s.connect_timeout", s.connect_timeout)?;
        check_nonzero("s2s.negotiation_timeout", s.negotiation_timeout)?;
        check_nonzero("s2s.stream_header_timeout", s.stream_header_timeout)?;
        if s.idle_timeout == Some(Duration::ZERO) {
            return Err(invalid(
                "s2s.idle_timeout",
                "must be more than 0s (None means never; \"0s\" in the file)",
            ));
        }
        check_nonzero("s2s.keepalive", s.keepalive)?;
        check_nonzero("s2s.verify_timeout", s.verify_timeout)?;
        check_nonzero("s2s.write_stall_timeout", s.write_stall_timeout)?;
        check_range(
            "s2s.queue_per_domain",
            s.queue_per_domain,
            1,
            MAX_QUEUE_PER_DOMAIN,
        )?;
        check_range(
            "s2s.max_stanza_size",
            s.max_stanza_size,
            MIN_STANZA_SIZE,
            MAX_STANZA_SIZE,
        )?;
        check_range("s2s.sm_ack_every", s.sm_ack_every as usize, 1, 10_000)?;
        if s.sm_ack_after.is_zero() {
            return Err(invalid("s2s.sm_ack_after", "must be more than 0s"));
        }
        if s.send_queue_bytes < s.max_stanza_size {
            return Err(invalid(
                "s2s.send_queue_bytes",
                format!(
                    "must be at least s2s.max_stanza_size ({}), got {}",
                    s.max_stanza_size, s.send_queue_bytes
                ),
            ));
        }
        if s.max_unauthenticated_per_shard == 0 {
            return Err(invalid(
                "s2s.max_unauthenticated_per_shard",
                "must be at least 1, got 0",
            ));
        }
        check_nonzero("s2s.backoff_initial", s.backoff_initial)?;
        if s.backoff_max < s.backoff_initial {
            return Err(invalid(
                "s2s.backoff_max",
                format!(
                    "must be at least s2s.backoff_initial ({}), got {}",
                    show(s.backoff_initial),
                    show(s.backoff_max)
                ),
            ));
        }
        if let Some(secret) = &s.dialback_secret {
            if secret.as_bytes().len() < MIN_SECRET_BYTES {
                return Err(invalid(
                    "s2s.dialback_secret",
                    format!(
                        "too short: {} bytes, at least {MIN_SECRET_BYTES} ({} hexadecimal digits) are required",
                        secret.as_bytes().len(),
                        2 * MIN_SECRET_BYTES
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_c2s(&self) -> Result<(), ConfigError> {
        let c = &self.c2s;
        check_nonzero("c2s.negotiation_timeout", c.negotiation_timeout)?;
        check_nonzero("c2s.keepalive", c.keepalive)?;
        check_nonzero("c2s.write_stall_timeout", c.write_stall_timeout)?;
        check_range("c2s.max_auth_failures", c.max_auth_failures as usize, 1, 6)?;
        check_range(
            "c2s.max_stanza_size",
            c.max_stanza_size,
            MIN_STANZA_SIZE,
            MAX_STANZA_SIZE,
        )?;
        check_range("c2s.max_roster_items", c.max_roster_items, 1, 100_000)?;
        check_range("c2s.max_resources", c.max_resources, 1, 1024)?;
        check_range("c2s.pep_max_items_limit", c.pep_max_items_limit, 1, 10_000)?;
        check_range(
            "c2s.pep_max_items",
            c.pep_max_items,
            1,
            c.pep_max_items_limit,
        )?;
        check_range(
            "c2s.pep_max_item_bytes",
            c.pep_max_item_bytes,
            1,
            MAX_STANZA_SIZE,
        )?;
        check_range("c2s.sm_ack_every", c.sm_ack_every as usize, 1, 10_000)?;
        if c.sasl_mechanisms.is_empty() {
            return Err(invalid(
                "c2s.sasl_mechanisms",
                "must name at least one mechanism",
            ));
        }
        if let Some(bad) = c
            .sasl_mechanisms
            .iter()
            .find(|m| crate::stream::c2s::Mechanism::from_name(m).is_none())
        {
            return Err(invalid(
                "c2s.sasl_mechanisms",
                format!("unknown mechanism {bad:?} (known: SCRAM-SHA-256, SCRAM-SHA-1, PLAIN)"),
            ));
        }
        if c.sm_ack_after.is_zero() {
            return Err(invalid("c2s.sm_ack_after", "must be more than 0s"));
        }
        check_range(
            "c2s.max_offline_messages",
            c.max_offline_messages as usize,
            0,
            MAX_OFFLINE_MESSAGES as usize,
        )?;
        if c.send_queue_bytes < c.max_stanza_size {
            return Err(invalid(
                "c2s.send_queue_bytes",
                format!(
                    "must be at least c2s.max_stanza_size ({}), got {}",
                    c.max_stanza_size, c.send_queue_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        let level = &self.log.level;
        if level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (e.g. \"info\")"));
        }
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
            invalid(
                "log.level",
                format!("{level:?} is not a tracing filter directive ({e})"),
            )
        })?;
        Ok(())
    }
}
