//! Why a peer's certificate does not authenticate it (RFC 6120 §13.7.2, XEP-0178 §3): the
//! verdict type shared by the stream cores and the certificate checks of the adapters.

use rustls_pki_types::UnixTime;

/// Why a peer's certificate does not authenticate it for a domain (RFC 6120 §13.7.2,
/// XEP-0178 §3). The messages are written for an operator reading a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The peer sent no certificate (e.g. it has none, or the listener did not ask).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate (or one in its chain) is past its notAfter time.
    #[error("the peer's certificate expired on {}", crate::stream::cert::utc(*not_after))]
    Expired {
        /// The certificate's notAfter.
        not_after: UnixTime,
    },
    /// The certificate (or one in its chain) is before its notBefore time.
    #[error("the peer's certificate is not valid before {}", crate::stream::cert::utc(*not_before))]
    NotValidYet {
        /// The certificate's notBefore.
        not_before: UnixTime,
    },
    /// The chain does not lead to a trusted root (self-signed, private CA, or a missing
    /// intermediate certificate).
    #[error(
        "the peer's certificate is not issued by a trusted certificate authority \
         (self-signed, private CA, or missing intermediate)"
    )]
    UnknownIssuer,
    /// The certificate is valid but not for this domain.
    #[error("the peer's certificate is not valid for {domain} (no matching dNSName)")]
    WrongName {
        /// The domain the stream header claimed.
        domain: String,
    },
    /// The certificate's extended key usage does not include serverAuth.
    #[error("the peer's certificate is not for use by a server (its extended key usage lacks serverAuth)")]
    WrongUsage,
    /// The certificate is not valid DER-encoded X.509.
    #[error("the peer's certificate is malformed (not valid DER-encoded X.509)")]
    BadEncoding,
    /// The domain to check against is not a DNS name.
    #[error("{domain:?} is not a valid domain name to check a certificate against")]
    BadDomain {
        /// The string given.
        domain: String,
    },
    /// Any other reason webpki gave (bad signature, revoked, unsupported algorithm...).
    #[error("the peer's certificate was rejected: {0}")]
    Other(String),
}

/// `t` as an RFC 3339 UTC date and time to the second (`2026-12-06T12:00:00Z`).
pub(crate) fn utc(t: UnixTime) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}
