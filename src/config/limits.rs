//! Flood limits (`[limits]`, issue 21): subscription requests per remote domain and per
//! local recipient, and client connections and SASL failures per source address. The
//! defaults are far above what a normal federation or client population does; past a
//! limit, requests are refused (never stored) and a WARN names the domain or address.

use std::time::Duration;

use serde::Deserialize;

use super::error::invalid;
use super::ConfigError;

/// Largest count or rate accepted for any `limits.*` key.
pub const MAX_LIMIT: u32 = 10_000_000;

/// Longest `limits.c2s_auth_failure_window` (one day).
pub const MAX_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(86_400);

/// Flood limits (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most unanswered inbound subscription requests (RFC 6121 §3.1.3, "Pending In" rows
    /// in the store) from one remote domain, across all local users, key
    /// `limits.pending_subscriptions_per_domain`; default 10000; 1 to [`MAX_LIMIT`]. One
    /// more is answered with the stanza error `resource-constraint` (RFC 6120
    /// §8.3.3.18) and not stored. Hosted domains are not counted.
    pub pending_subscriptions_per_domain: u32,
    /// Most unanswered inbound subscription requests to one local user, from anyone, key
    /// `limits.pending_subscriptions_per_user`; default 500; 1 to [`MAX_LIMIT`]. One more
    /// is answered with `resource-constraint` and not stored.
    pub pending_subscriptions_per_user: u32,
    /// Subscription requests (`<presence type='subscribe'/>`) accepted from one remote
    /// domain per minute, with a burst of as many, key
    /// `limits.subscriptions_per_minute_per_domain`; default 3000; 1 to [`MAX_LIMIT`].
    /// Beyond it a request is answered with `policy-violation` (RFC 6120 §8.3.3.12) and
    /// not stored.
    pub subscriptions_per_minute_per_domain: u32,
    /// Most client connections from one IP address that have not authenticated yet, key
    /// `limits.c2s_unauthenticated_per_address`; default 256 (room for clients behind
    /// one NAT or TCP load balancer); 1 to [`MAX_LIMIT`]. One more
    /// gets the stream error `policy-violation` (RFC 6120 §4.9.3.14) and is closed.
    pub c2s_unauthenticated_per_address: u32,
    /// SASL failures (RFC 6120 §6.4.5) from one IP address within
    /// `limits.c2s_auth_failure_window` after which that address is refused until the
    /// window ends, key `limits.c2s_auth_failures_per_address`; default 30; 1 to
    /// [`MAX_LIMIT`]. A refused address's connections get the stream error
    /// `policy-violation` and are closed.
    pub c2s_auth_failures_per_address: u32,
    /// The window of `limits.c2s_auth_failures_per_address`, key
    /// `limits.c2s_auth_failure_window`; default 5 min; more than 0s, at most one day.
    #[serde(with = "humantime_serde")]
    pub c2s_auth_failure_window: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            pending_subscriptions_per_domain: 10_000,
            pending_subscriptions_per_user: 500,
            subscriptions_per_minute_per_domain: 3000,
            c2s_unauthenticated_per_address: 256,
            c2s_auth_failures_per_address: 30,
            c2s_auth_failure_window: Duration::from_secs(300),
        }
    }
}

impl LimitsSection {
    /// Every count in 1 to [`MAX_LIMIT`], the window more than 0s and at most
    /// [`MAX_AUTH_FAILURE_WINDOW`].
    ///
    /// Errors: [`ConfigError::Invalid`] naming the key (`limits.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            (
                "limits.pending_subscriptions_per_domain",
                self.pending_subscriptions_per_domain,
            ),
            (
                "limits.pending_subscriptions_per_user",
                self.pending_subscriptions_per_user,
            ),
            (
                "limits.subscriptions_per_minute_per_domain",
                self.subscriptions_per_minute_per_domain,
            ),
            (
                "limits.c2s_unauthenticated_per_address",
                self.c2s_unauthenticated_per_address,
            ),
            (
                "limits.c2s_auth_failures_per_address",
                self.c2s_auth_failures_per_address,
            ),
        ] {
            if !(1..=MAX_LIMIT).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between 1 and {MAX_LIMIT}, got {value}"),
                ));
            }
        }
        let w = self.c2s_auth_failure_window;
        if w.is_zero() || w > MAX_AUTH_FAILURE_WINDOW {
            return Err(invalid(
                "limits.c2s_auth_failure_window",
                format!(
                    "must be more than 0s and at most 1day, got {}",
                    humantime::format_duration(w)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_key() {
        LimitsSection::default().validate().expect("defaults");
        let bad = LimitsSection {
            pending_subscriptions_per_user: 0,
            ..LimitsSection::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("limits.pending_subscriptions_per_user"), "{e}");
        let bad = LimitsSection {
            c2s_auth_failure_window: Duration::ZERO,
            ..LimitsSection::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("limits.c2s_auth_failure_window"), "{e}");
    }

    #[test]
    fn read_from_the_file() {
        use crate::config::Config;
        let c = Config::from_toml_str(
            "[limits]\npending_subscriptions_per_user = 7\nc2s_auth_failure_window = \"1h\"\n",
        )
        .expect("valid");
        assert_eq!(c.limits.pending_subscriptions_per_user, 7);
        assert_eq!(c.limits.c2s_auth_failure_window, Duration::from_secs(3600));
        assert_eq!(
            c.limits.pending_subscriptions_per_domain,
            LimitsSection::default().pending_subscriptions_per_domain
        );
        let e = Config::from_toml_str("[limits]\nsubscriptions_per_minute_per_domain = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.subscriptions_per_minute_per_domain"),
            "{e}"
        );
        let e = Config::from_toml_str("[limits]\nsubscriptions_per_hour = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("subscriptions_per_hour"), "{e}");
    }
}
