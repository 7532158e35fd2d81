//! `check`: what a check needs to know about a certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

use crate::tls::{self};

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// What a check needs to know about an end-entity certificate.
pub(super) struct CertFacts {
    pub(super) names: Vec<String>,
    pub(super) covers: bool,
    pub(super) self_signed: bool,
    /// notAfter, seconds since the epoch.
    pub(super) not_after: Option<u64>,
}

impl CertFacts {
    pub(super) fn of(ee: &CertificateDer<'_>, domain: &str) -> CertFacts {
        let parsed = webpki::EndEntityCert::try_from(ee).ok();
        let names = parsed
            .as_ref()
            .map(|c| c.valid_dns_names().map(str::to_owned).collect())
            .unwrap_or_default();
        let covers = match (&parsed, tls::server_name(domain)) {
            (Some(c), Ok(name)) => c.verify_is_valid_for_subject_name(&name).is_ok(),
            _ => false,
        };
        let self_signed = parsed.as_ref().is_some_and(|c| c.issuer() == c.subject());
        CertFacts {
            names,
            covers,
            self_signed,
            not_after: not_after(ee),
        }
    }

    pub(super) fn names_text(&self) -> String {
        if self.names.is_empty() {
            "no DNS name".into()
        } else {
            self.names.join(", ")
        }
    }

    /// Days left (rounded down) when the certificate expires within `window` of `now`
    /// (or has expired: 0).
    pub(super) fn expires_within(&self, now: SystemTime, window: Duration) -> Option<u64> {
        let end = self.not_after?;
        let now = since_epoch(now).as_secs();
        (end < now.saturating_add(window.as_secs())).then(|| end.saturating_sub(now) / 86_400)
    }

    pub(super) fn expiry_text(&self, now: SystemTime) -> String {
        let Some(end) = self.not_after else {
            return "expiry unknown".into();
        };
        let now = since_epoch(now).as_secs();
        if end <= now {
            format!("expired on {}", rfc3339(end))
        } else {
            format!(
                "expires on {} (in {} days)",
                rfc3339(end),
                (end - now) / 86_400
            )
        }
    }
}

pub(super) fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The notAfter of an X.509 certificate (RFC 5280 §4.1.2.5), in seconds since the epoch;
/// `None` when the DER does not parse as a certificate.
pub(super) fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// Seconds since the epoch as an RFC 3339 UTC date and time (`2026-12-06T12:00:00Z`).
pub(super) fn rfc3339(secs: u64) -> String {
    // humantime formats up to 9999-12-31T23:59:59Z, which is also where X.509's
    // GeneralizedTime ends (RFC 5280 §4.1.2.5.2), so the clamp never shows.
    const LAST: u64 = 253_402_300_799;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.min(LAST))).to_string()
}
