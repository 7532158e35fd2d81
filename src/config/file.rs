//! The configuration file as written: serde structs mirroring the TOML tables (every key
//! optional), and their conversion into a [`Config`] (addresses, static targets, normalised
//! domain keys, the embedded defaults for what is absent).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::jid::DomainPart;
use crate::stream::policy::FederationPolicy;

use super::auth::RawAuth;
use super::error::{invalid, io_error};
use super::{
    C2sSection, Config, ConfigError, DnsSection, InboxSection, Listen, LogFormat, LogSection,
    MetricsSection, S2sSection, SecretBytes, ShutdownSection, StaticTarget, StoreSection,
    TlsConfig,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domains: Option<Vec<String>>,
    shards: Option<usize>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    s2s: RawS2s,
    #[serde(default)]
    inbox: InboxSection,
    #[serde(default)]
    c2s: C2sSection,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    shutdown: ShutdownSection,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    federation: FederationPolicy,
    #[serde(default)]
    limits: super::LimitsSection,
    cluster: Option<super::ClusterSection>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    s2s: Option<Vec<String>>,
    s2s_tls: Option<Vec<String>>,
    c2s: Option<Vec<String>>,
    admin: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    nameservers: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    cache_size: Option<usize>,
    max_in_flight: Option<usize>,
    #[serde(rename = "static")]
    static_targets: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawS2s {
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    negotiation_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stream_header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keepalive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    verify_timeout: Option<Duration>,
    queue_per_domain: Option<usize>,
    send_queue_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    write_stall_timeout: Option<Duration>,
    max_unauthenticated_per_shard: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    dialback_secret: Option<String>,
    max_stanza_size: Option<usize>,
    stream_management: Option<bool>,
    sm_ack_every: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    sm_ack_after: Option<Duration>,
}

/// The normalised form of a domain when it is valid, else the text as written (left for
/// [`Config::validate`] to report).
fn normalise_domain(raw: &str) -> String {
    DomainPart::new(raw)
        .map(|d| d.as_str().to_owned())
        .unwrap_or_else(|_| raw.to_owned())
}

fn parse_socket_addr(key: String, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(key, format!("{text:?} is not ip:port")))
}

fn parse_addr_list(key: &str, list: Vec<String>) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| parse_socket_addr(format!("{key}[{i}]"), text))
        .collect()
}

/// `host:port`, `ip:port` or `[ipv6]:port`.
fn parse_static_target(key: &str, text: &str) -> Result<StaticTarget, ConfigError> {
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(StaticTarget {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let bad = || invalid(key, format!("expected host:port, got {text:?}"));
    let (host, port) = trimmed.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return Err(bad());
    }
    Ok(StaticTarget {
        host: host.to_owned(),
        port,
    })
}

/// Re-keys a map by normalised domain, refusing two keys that normalise alike.
fn normalise_keys<V>(
    table: &str,
    entries: impl IntoIterator<Item = (String, V)>,
) -> Result<HashMap<String, V>, ConfigError> {
    let mut out = HashMap::new();
    let mut written_as: HashMap<String, String> = HashMap::new();
    for (raw, value) in entries {
        let norm = normalise_domain(&raw);
        if let Some(first) = written_as.get(&norm) {
            return Err(invalid(
                format!("{table}.{raw:?}"),
                format!("the same domain as {first:?} (domains compare case-insensitively)"),
            ));
        }
        written_as.insert(norm.clone(), raw);
        out.insert(norm, value);
    }
    Ok(out)
}

impl RawConfig {
    fn into_config(self) -> Result<Config, ConfigError> {
        let d = Config::default();

        let listen = {
            let l = self.listen;
            let dl = d.listen;
            Listen {
                s2s: l
                    .s2s
                    .map(|v| parse_addr_list("listen.s2s", v))
                    .transpose()?
                    .unwrap_or(dl.s2s),
                s2s_tls: l
                    .s2s_tls
                    .map(|v| parse_addr_list("listen.s2s_tls", v))
                    .transpose()?
                    .unwrap_or(dl.s2s_tls),
                c2s: l
                    .c2s
                    .map(|v| parse_addr_list("listen.c2s", v))
                    .transpose()?
                    .unwrap_or(dl.c2s),
                admin: match l.admin {
                    None => dl.admin,
                    Some(text) if text.trim().is_empty() => None,
                    Some(text) => Some(parse_socket_addr("listen.admin".to_owned(), &text)?),
                },
            }
        };

        let mut tls = self.tls;
        for entry in &mut tls.certificates {
            entry.domain = normalise_domain(&entry.domain);
        }

        let dns = {
            let r = self.dns;
            let dd = d.dns;
            let mut targets = Vec::new();
            for (domain, text) in r.static_targets.unwrap_or_default() {
                let target = parse_static_target(&format!("dns.static.{domain:?}"), &text)?;
                targets.push((domain, target));
            }
            DnsSection {
                nameservers: r
                    .nameservers
                    .map(|v| parse_addr_list("dns.nameservers", v))
                    .transpose()?
                    .unwrap_or(dd.nameservers),
                timeout: r.timeout.unwrap_or(dd.timeout),
                cache_size: r.cache_size.unwrap_or(dd.cache_size),
                max_in_flight: r.max_in_flight.unwrap_or(dd.max_in_flight),
                static_targets: normalise_keys("dns.static", targets)?,
            }
        };

        let s2s = {
            let r = self.s2s;
            let ds = d.s2s;
            let dialback_secret = r
                .dialback_secret
                .map(|text| {
                    SecretBytes::from_hex(&text).map_err(|e| {
                        invalid(
                            "s2s.dialback_secret",
                            format!(
                                "not hexadecimal ({e}); generate one with `openssl rand -hex 32`"
                            ),
                        )
                    })
                })
                .transpose()?;
            S2sSection {
                connect_timeout: r.connect_timeout.unwrap_or(ds.connect_timeout),
                negotiation_timeout: r.negotiation_timeout.unwrap_or(ds.negotiation_timeout),
                stream_header_timeout: r.stream_header_timeout.unwrap_or(ds.stream_header_timeout),
                idle_timeout: match r.idle_timeout {
                    None => ds.idle_timeout,
                    Some(Duration::ZERO) => None,
                    Some(t) => Some(t),
                },
                keepalive: r.keepalive.unwrap_or(ds.keepalive),
                verify_timeout: r.verify_timeout.unwrap_or(ds.verify_timeout),
                queue_per_domain: r.queue_per_domain.unwrap_or(ds.queue_per_domain),
                send_queue_bytes: r.send_queue_bytes.unwrap_or(ds.send_queue_bytes),
                write_stall_timeout: r.write_stall_timeout.unwrap_or(ds.write_stall_timeout),
                max_unauthenticated_per_shard: r
                    .max_unauthenticated_per_shard
                    .unwrap_or(ds.max_unauthenticated_per_shard),
                backoff_initial: r.backoff_initial.unwrap_or(ds.backoff_initial),
                backoff_max: r.backoff_max.unwrap_or(ds.backoff_max),
                dialback_secret,
                max_stanza_size: r.max_stanza_size.unwrap_or(ds.max_stanza_size),
                stream_management: r.stream_management.unwrap_or(ds.stream_management),
                sm_ack_every: r.sm_ack_every.unwrap_or(ds.sm_ack_every),
                sm_ack_after: r.sm_ack_after.unwrap_or(ds.sm_ack_after),
            }
        };

        let mut policy_domains: Vec<_> = self.federation.domains.into_iter().collect();
        policy_domains.sort_by(|a, b| a.0.cmp(&b.0));
        let federation = FederationPolicy {
            default: self.federation.default,
            domains: normalise_keys("federation.domains", policy_domains)?,
        };

        Ok(Config {
            domains: self
                .domains
                .map(|v| v.iter().map(|s| normalise_domain(s)).collect())
                .unwrap_or(d.domains),
            shards: self.shards.unwrap_or(d.shards),
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            listen,
            tls,
            dns,
            s2s,
            inbox: self.inbox,
            c2s: self.c2s,
            store: self.store,
            auth: self.auth.into_section()?,
            metrics: MetricsSection {
                listen: match self.metrics.listen {
                    None => None,
                    Some(text) if text.trim().is_empty() => None,
                    Some(text) => Some(parse_socket_addr("metrics.listen".to_owned(), &text)?),
                },
            },
            shutdown: self.shutdown,
            log: LogSection {
                level: self
                    .log
                    .level
                    .unwrap_or_else(|| LogSection::default().level),
                format: match self.log.format {
                    None => LogFormat::default(),
                    Some(name) => LogFormat::from_name(&name).ok_or_else(|| {
                        invalid(
                            "log.format",
                            format!(
                                "{name:?} is not a log format (expected {})",
                                LogFormat::names()
                                    .iter()
                                    .map(|n| format!("{n:?}"))
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            ),
                        )
                    })?,
                },
            },
            federation,
            limits: self.limits,
            cluster: self.cluster,
        })
    }
}

/// `toml`'s message for `e`, which names the line and column when `toml` knows them.
/// For the errors it reports without a position (its recursion limit: keys or values
/// nested too deeply, such as a dotted key of hundreds of parts; fuzz finding 10,
/// `tests/fuzz/README.md`) the message names the line with the most nesting (dots,
/// brackets and braces), where such an error comes from.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let message = e.to_string().trim_end().to_owned();
    if e.span().is_some() {
        return message;
    }
    let deepest = text
        .lines()
        .enumerate()
        .max_by_key(|(i, l)| {
            let depth = l
                .bytes()
                .filter(|b| matches!(b, b'.' | b'[' | b'{'))
                .count();
            (depth, std::cmp::Reverse(*i))
        })
        .map_or(1, |(i, _)| i + 1);
    format!(
        "{message} (TOML parse error without a position; the most deeply nested line is \
         line {deepest})"
    )
}

impl Config {
    /// Parses and validates a configuration file's text.
    ///
    /// Errors: [`ConfigError::Parse`] (TOML syntax, unknown key, wrong type, malformed
    /// duration: `toml`'s message), [`ConfigError::Invalid`] (a malformed address, secret or
    /// static target, or anything [`Config::validate`] refuses).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: None,
            message: parse_message(&e, text),
        })?;
        let config = raw.into_config()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Errors: [`ConfigError::Io`] when the file cannot be read; otherwise those of
    /// [`Config::from_toml_str`], naming `path` as their `file`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| io_error(path, &e))?;
        Config::from_toml_str(&text).map_err(|e| e.in_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `toml` reports its recursion limit without a position; the message still names
    /// a line (fuzz finding 10: a dotted key of hundreds of parts).
    #[test]
    fn a_parse_error_without_a_position_names_the_deepest_line() {
        let text = format!("shards = 2\n{}b = 1\ndata_dir = \"x\"\n", "a.".repeat(400));
        match Config::from_toml_str(&text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("without a position"), "{message}");
                assert!(message.contains("line 2)"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn static_target_forms() {
        let t = parse_static_target("k", "127.0.0.1:15269").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 15269));
        assert_eq!(t.socket_addr(), Some("127.0.0.1:15269".parse().unwrap()));
        let t = parse_static_target("k", "[::1]:5269").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 5269));
        assert_eq!(t.to_string(), "[::1]:5269");
        let t = parse_static_target("k", "xmpp.b.test:5269").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("xmpp.b.test", 5269));
        assert_eq!(t.socket_addr(), None);
        assert_eq!(t.to_string(), "xmpp.b.test:5269");
        for bad in ["b", ":5269", "b:", "b:70000", "::1:5269", "b:x"] {
            let err = parse_static_target("dns.static.\"b.test\"", bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("dns.static.\"b.test\": expected host:port, got {bad:?}")
            );
        }
    }

    #[test]
    fn keys_normalise_and_collide() {
        let map = normalise_keys("dns.static", vec![("B.Test.".to_owned(), 1)]).unwrap();
        assert_eq!(map.get("b.test"), Some(&1));
        let err = normalise_keys(
            "dns.static",
            vec![("B.test".to_owned(), 1), ("b.test".to_owned(), 2)],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("dns.static.\"b.test\": the same domain as \"B.test\""),
            "{err}"
        );
    }
}
