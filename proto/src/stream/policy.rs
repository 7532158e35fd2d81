//! Federation policy per remote domain: TLS, authentication method, certificate checks,
//! allow/deny. Loaded from configuration (TOML via serde).
//!
//! The three profiles real federations need:
//!
//! | profile | `tls` | `auth` | `verify_certificates` |
//! |---|---|---|---|
//! | Google-style ([`PeerPolicy::google`]) | `disabled` | `dialback` | `false` |
//! | WebEx-style ([`PeerPolicy::webex`]) | `optional` | `dialback` | `false` |
//! | strict ([`PeerPolicy::strict`]) | `required` | `sasl-external` | `true` |

use std::collections::HashMap;

use serde::Deserialize;

/// Whether a stream to or from the peer uses STARTTLS (RFC 6120 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    /// TLS must be negotiated before authentication; a peer that does not offer or accept
    /// it is refused.
    Required,
    /// TLS is offered and used when the peer offers it; plain TCP otherwise.
    #[default]
    Optional,
    /// TLS is neither offered nor used (plain TCP, as Google Talk federated).
    Disabled,
}

/// Which authentication method may authenticate the peer's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPolicy {
    /// SASL EXTERNAL when the certificate allows it, else Server Dialback.
    #[default]
    Any,
    /// Server Dialback only (XEP-0220).
    Dialback,
    /// SASL EXTERNAL with a certificate only (XEP-0178).
    SaslExternal,
}

/// Policy for one remote domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerPolicy {
    /// STARTTLS use.
    pub tls: TlsPolicy,
    /// Authentication methods accepted and used.
    pub auth: AuthPolicy,
    /// Check the peer's certificate against its domain (inbound: to offer SASL EXTERNAL;
    /// outbound: the runtime's TLS client verifies the server certificate). `false`
    /// accepts any certificate, which only encrypts.
    pub verify_certificates: bool,
    /// Whether federation with the domain is allowed at all.
    pub allow: bool,
    /// XEP-0288 bidirectional streams with the domain (default `true`): offered on its
    /// inbound streams (`urn:xmpp:features:bidi`) and requested on our outbound streams
    /// to it when it offers them, so that one TCP connection carries both directions.
    /// `false` for a peer that misbehaves on bidirectional streams: each direction then
    /// has its own stream, as without XEP-0288.
    pub bidi: bool,
    /// XEP-0220 §2.4 multiplexing by target (default `true`): when the domain resolves
    /// (DNS SRV) to the same target host and port as an authenticated outbound stream of
    /// ours to another domain, the domain is authenticated on that stream with another
    /// `db:result` instead of a new connection, where policies and the certificate allow
    /// it (`S2sConnection::request_dialback_for`). `false` here, or for the domain whose
    /// stream it would join, gives the domain a stream of its own.
    pub multiplex: bool,
}

impl Default for PeerPolicy {
    /// Any standards-compliant server: TLS optional, SASL EXTERNAL or dialback, verified
    /// certificates.
    fn default() -> Self {
        PeerPolicy {
            tls: TlsPolicy::Optional,
            auth: AuthPolicy::Any,
            verify_certificates: true,
            allow: true,
            bidi: true,
            multiplex: true,
        }
    }
}

impl PeerPolicy {
    /// Google-style peers: plain TCP and Server Dialback.
    pub fn google() -> Self {
        PeerPolicy {
            tls: TlsPolicy::Disabled,
            auth: AuthPolicy::Dialback,
            verify_certificates: false,
            allow: true,
            bidi: true,
            multiplex: true,
        }
    }

    /// WebEx-style peers: TLS when offered, no certificate check, dialback.
    pub fn webex() -> Self {
        PeerPolicy {
            tls: TlsPolicy::Optional,
            auth: AuthPolicy::Dialback,
            verify_certificates: false,
            allow: true,
            bidi: true,
            multiplex: true,
        }
    }

    /// Strict peers: TLS required, certificates verified, SASL EXTERNAL.
    pub fn strict() -> Self {
        PeerPolicy {
            tls: TlsPolicy::Required,
            auth: AuthPolicy::SaslExternal,
            verify_certificates: true,
            allow: true,
            bidi: true,
            multiplex: true,
        }
    }

    /// Whether dialback may authenticate the peer.
    pub fn allows_dialback(&self) -> bool {
        matches!(self.auth, AuthPolicy::Any | AuthPolicy::Dialback)
    }

    /// Whether SASL EXTERNAL may authenticate the peer.
    pub fn allows_external(&self) -> bool {
        matches!(self.auth, AuthPolicy::Any | AuthPolicy::SaslExternal)
    }
}

/// Policy for every remote domain: a default plus per-domain overrides (keys are
/// lowercase domains).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FederationPolicy {
    /// Policy for domains without an entry in `domains`.
    pub default: PeerPolicy,
    /// Per-domain policy.
    pub domains: HashMap<String, PeerPolicy>,
}

impl FederationPolicy {
    /// The policy for `domain` (case-insensitive, trailing dot ignored).
    pub fn for_domain(&self, domain: &str) -> PeerPolicy {
        let d = domain.strip_suffix('.').unwrap_or(domain);
        if let Some(p) = self.domains.get(d) {
            return *p;
        }
        if d.bytes().any(|b| b.is_ascii_uppercase()) {
            if let Some(p) = self.domains.get(&d.to_ascii_lowercase()) {
                return *p;
            }
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_toml() {
        let p: FederationPolicy = toml::from_str(
            r#"
            [default]
            tls = "required"
            auth = "sasl-external"
            [domains."gmail.com"]
            tls = "disabled"
            auth = "dialback"
            verify_certificates = false
            [domains."webex.com"]
            tls = "optional"
            auth = "dialback"
            verify_certificates = false
            [domains."evil.example"]
            allow = false
            "#,
        )
        .unwrap();
        assert_eq!(p.for_domain("gmail.com"), PeerPolicy::google());
        assert_eq!(p.for_domain("WebEx.com."), PeerPolicy::webex());
        assert_eq!(p.for_domain("other.example"), PeerPolicy::strict());
        assert!(!p.for_domain("evil.example").allow);
        assert!(p.for_domain("evil.example").bidi, "bidi defaults to on");
    }

    #[test]
    fn bidi_switch_per_domain() {
        let p: FederationPolicy = toml::from_str(
            r#"
            [domains."flaky.example"]
            bidi = false
            "#,
        )
        .unwrap();
        assert!(!p.for_domain("flaky.example").bidi);
        assert!(p.for_domain("other.example").bidi);
        let err = toml::from_str::<FederationPolicy>("[default]\nbidi = \"no\"\n").unwrap_err();
        assert!(err.to_string().contains("bidi"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<FederationPolicy>("[default]\ntls_mode = \"on\"\n").unwrap_err();
        assert!(err.to_string().contains("tls_mode"), "{err}");
        let err =
            toml::from_str::<FederationPolicy>("[default]\ntls = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }
}
