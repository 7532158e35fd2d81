//! XMPP domains as TLS server names: IDNA A-labels (RFC 5891), the form SNI and dNSName
//! subjectAltNames carry (RFC 6125 §6).

use rustls::pki_types::ServerName;

use super::CertError;

/// The domain as an A-label DNS name (IDNA, RFC 5891), lowercase, no trailing dot; `None`
/// if it is neither a DNS name nor an IP literal.
pub(super) fn ascii_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let ascii = idna::domain_to_ascii(domain).ok()?;
    // IDNA (non-strict UTS 46) lets some non-DNS characters through; keep only names TLS
    // can carry: DNS names and IP literals.
    ServerName::try_from(ascii.as_str())
        .is_ok()
        .then_some(ascii)
}

/// The TLS server name (SNI, and the name a server certificate is checked against) for an
/// XMPP domain: IDNA A-labels, lowercase, no trailing dot (RFC 6125 §6, RFC 5891).
///
/// Errors: [`CertError::BadDomain`] for a string that is not a DNS name or IP address.
pub fn server_name(domain: &str) -> Result<ServerName<'static>, CertError> {
    let bad = || CertError::BadDomain {
        domain: domain.to_owned(),
    };
    let ascii = ascii_domain(domain).ok_or_else(bad)?;
    ServerName::try_from(ascii).map_err(|_| bad())
}
