//! Several nodes serving one deployment (`[cluster]`, issue 17, DESIGN.md "Cluster"):
//! the node's name, the NATS servers that carry membership and cross-node stanzas, and
//! the timings of membership. Without the section fedrouter runs alone, as before.

use std::time::Duration;

use serde::Deserialize;

use super::error::invalid;
use super::ConfigError;

/// Longest node name (it is a NATS subject token).
pub const MAX_NODE_NAME: usize = 64;

/// Largest `cluster.backlog`.
pub const MAX_CLUSTER_BACKLOG: usize = 1_000_000;

/// The cluster (`[cluster]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's name, key `cluster.node`: unique in the cluster, 1 to
    /// [`MAX_NODE_NAME`] characters from `A-Z a-z 0-9 - _` (it names the node's NATS
    /// subject). Required.
    pub node: String,
    /// The NATS servers, key `cluster.nats`: URLs such as `nats://127.0.0.1:4222` (the
    /// client tries them in turn). Required, at least one.
    pub nats: Vec<String>,
    /// The subject prefix, key `cluster.subject_prefix`: lets several deployments share
    /// one NATS; default `"fedrouter"`; a NATS subject token (same characters as
    /// `cluster.node`).
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// How often this node announces itself, key `cluster.heartbeat`; default 1s; more
    /// than 0s.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long a member may stay silent before the others count it dead and take over
    /// what it owned, key `cluster.failure_timeout`; default 3s; at least twice
    /// `cluster.heartbeat`.
    #[serde(default = "default_failure_timeout", with = "humantime_serde")]
    pub failure_timeout: Duration,
    /// Stanzas held for one other node while they cannot be published to it (NATS down
    /// or slow), key `cluster.backlog`; default 10000; 1 to [`MAX_CLUSTER_BACKLOG`].
    /// Past it, stanzas are bounced with `remote-server-timeout` (RFC 6120 §8.3.3.17).
    #[serde(default = "default_backlog")]
    pub backlog: usize,
    /// Where this node's clients are sent when they connect to another node
    /// (`host:port`, the text of the RFC 6120 §4.9.3.19 `<see-other-host/>` stream
    /// error), key `cluster.c2s_address`; default: the first `listen.c2s` address.
    #[serde(default)]
    pub c2s_address: Option<String>,
    /// Where a client's session lives when another node owns its bare JID, key
    /// `cluster.c2s_sessions`: `"stay"` (default) keeps it on the node the client
    /// connected to, which relays its stanzas to and from the owner over NATS (every
    /// client works); `"redirect"` sends the client to the owner with
    /// `<see-other-host/>` after authentication (RFC 6120 §4.9.3.19), which saves the
    /// relay for clients that follow it.
    #[serde(default)]
    pub c2s_sessions: C2sSessions,
    /// Longest wait for the first NATS connection at start, key
    /// `cluster.connect_timeout`; default 5s; more than 0s. Later losses are retried
    /// with back-off for as long as the process runs.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Where the sessions of users another node owns live (`cluster.c2s_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum C2sSessions {
    /// On the node the client connected to; the owner relays (DESIGN.md "Cluster").
    #[default]
    Stay,
    /// On the owner: the client is sent there with `<see-other-host/>`.
    Redirect,
}

fn default_prefix() -> String {
    "fedrouter".to_owned()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_failure_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_backlog() -> usize {
    10_000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Whether `s` is a NATS subject token we accept: 1 to [`MAX_NODE_NAME`] characters
/// from `A-Z a-z 0-9 - _`.
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NODE_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterSection {
    /// Checks every key's range and form.
    ///
    /// Errors: [`ConfigError::Invalid`] naming the key (`cluster.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_subject_token(&self.node) {
            return Err(invalid(
                "cluster.node",
                format!(
                    "{:?}: must be 1 to {MAX_NODE_NAME} characters from A-Z a-z 0-9 - _",
                    self.node
                ),
            ));
        }
        if !is_subject_token(&self.subject_prefix) {
            return Err(invalid(
                "cluster.subject_prefix",
                format!(
                    "{:?}: must be 1 to {MAX_NODE_NAME} characters from A-Z a-z 0-9 - _",
                    self.subject_prefix
                ),
            ));
        }
        if self.nats.is_empty() {
            return Err(invalid(
                "cluster.nats",
                "needs at least one NATS server URL",
            ));
        }
        for url in &self.nats {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                return Err(invalid(
                    "cluster.nats",
                    format!("{url:?} is not a NATS server URL ({e})"),
                ));
            }
        }
        if self.heartbeat.is_zero() {
            return Err(invalid("cluster.heartbeat", "must be more than 0s"));
        }
        if self.failure_timeout < self.heartbeat * 2 {
            return Err(invalid(
                "cluster.failure_timeout",
                format!(
                    "must be at least twice cluster.heartbeat ({}), got {}",
                    humantime::format_duration(self.heartbeat * 2),
                    humantime::format_duration(self.failure_timeout)
                ),
            ));
        }
        if !(1..=MAX_CLUSTER_BACKLOG).contains(&self.backlog) {
            return Err(invalid(
                "cluster.backlog",
                format!(
                    "must be between 1 and {MAX_CLUSTER_BACKLOG}, got {}",
                    self.backlog
                ),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("cluster.connect_timeout", "must be more than 0s"));
        }
        if let Some(a) = &self.c2s_address {
            if a.trim().is_empty() || a.contains(['<', '>', '&', ' ']) {
                return Err(invalid(
                    "cluster.c2s_address",
                    format!("{a:?}: expected host:port"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[store]\nbackend = \"postgres\"\nurl = \"postgresql://u@127.0.0.1/db\"\n\
        [s2s]\ndialback_secret = \"00112233445566778899aabbccddeeff\"\n";

    fn parse(cluster: &str) -> Result<Config, String> {
        Config::from_toml_str(&format!("{BASE}[cluster]\n{cluster}")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_values() {
        let c = parse("node = \"n1\"\nnats = [\"nats://127.0.0.1:4222\"]\n").expect("valid");
        let cl = c.cluster.expect("section");
        assert_eq!(cl.node, "n1");
        assert_eq!(cl.heartbeat, std::time::Duration::from_secs(1));
        assert_eq!(cl.failure_timeout, std::time::Duration::from_secs(3));
        assert_eq!(cl.backlog, 10_000);
        assert_eq!(cl.subject_prefix, "fedrouter");
        assert!(Config::from_toml_str("").unwrap().cluster.is_none());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("node = \"n.1\"\nnats = [\"nats://127.0.0.1:4222\"]\n", "cluster.node"),
            ("node = \"n1\"\nnats = []\n", "cluster.nats"),
            ("node = \"n1\"\nnats = [\"http://x:y:z\"]\n", "cluster.nats"),
            (
                "node = \"n1\"\nnats = [\"nats://127.0.0.1:4222\"]\nheartbeat = \"2s\"\nfailure_timeout = \"3s\"\n",
                "cluster.failure_timeout",
            ),
            (
                "node = \"n1\"\nnats = [\"nats://127.0.0.1:4222\"]\nbacklog = 0\n",
                "cluster.backlog",
            ),
            ("nats = [\"nats://127.0.0.1:4222\"]\n", "node"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn a_cluster_needs_the_shared_store_and_secret() {
        let e = Config::from_toml_str(
            "[cluster]\nnode = \"n1\"\nnats = [\"nats://127.0.0.1:4222\"]\n\
             [s2s]\ndialback_secret = \"00112233445566778899aabbccddeeff\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.backend"), "{e}");
        let e = Config::from_toml_str(
            "[cluster]\nnode = \"n1\"\nnats = [\"nats://127.0.0.1:4222\"]\n\
             [store]\nbackend = \"postgres\"\nurl = \"postgresql://u@127.0.0.1/db\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s2s.dialback_secret"), "{e}");
    }
}
