//! A local domain's certificate chain and private key ([`CertifiedDomain`]), loaded from
//! PEM files or assembled from DER parts, and [`self_signed`], `fedrouter serve`'s stand-in
//! when no certificate is configured.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;

use super::name::ascii_domain;
#[cfg(doc)]
use super::DomainCertResolver;
use super::{provider, TlsError};

/// A local domain's certificate chain and private key: what the server presents for the
/// domain (RFC 6120 §13.7.1.2) and what the client presents for SASL EXTERNAL (XEP-0178).
///
/// `chain` is the end-entity certificate first, then any intermediates (not the root). The
/// constructors check that the chain is not empty, that the end-entity certificate parses
/// and that the key is usable with *ring* and matches the certificate's public key.
pub struct CertifiedDomain {
    domain: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl CertifiedDomain {
    /// Assembles a certified domain from DER parts. `domain` is the XMPP domain it serves
    /// (the SNI key in [`DomainCertResolver`]; the certificate's own dNSNames are added too).
    ///
    /// Errors: [`TlsError::BadCertificate`] for an empty chain or an unparseable end-entity
    /// certificate, [`TlsError::BadKey`] for an unusable or mismatched key.
    pub fn new(
        domain: impl Into<String>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let domain = domain.into();
        let this = CertifiedDomain { domain, chain, key };
        let origin = format!("certificate for {}", this.domain);
        let key_origin = format!("private key for {}", this.domain);
        this.check(&origin, &key_origin)?;
        Ok(this)
    }

    /// Loads a PEM certificate chain (end-entity first) and a PEM private key (PKCS#8,
    /// PKCS#1 or SEC1), as written by ACME clients such as certbot (`fullchain.pem`,
    /// `privkey.pem`).
    ///
    /// The domain is the certificate's first non-wildcard dNSName (else its first dNSName).
    ///
    /// Errors name the file: [`TlsError::Read`], [`TlsError::BadPem`],
    /// [`TlsError::NoCertificate`], [`TlsError::NoPrivateKey`], [`TlsError::NoDomainName`],
    /// [`TlsError::BadCertificate`], [`TlsError::BadKey`] (with the key file as origin, also
    /// when the key does not match the certificate).
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let bad_pem = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        };

        let cert_pem = read(cert_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_pem(cert_path, e))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }

        let key_pem = read(key_path)?;
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(key) => key,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoPrivateKey {
                    path: key_path.to_owned(),
                })
            }
            Err(e) => return Err(bad_pem(key_path, e)),
        };

        let names = dns_names_of(&chain[0]).map_err(|reason| TlsError::BadCertificate {
            origin: cert_path.display().to_string(),
            reason,
        })?;
        let domain = names
            .iter()
            .find(|n| !n.starts_with("*."))
            .or(names.first())
            .cloned()
            .ok_or_else(|| TlsError::NoDomainName {
                path: cert_path.to_owned(),
            })?;

        let this = CertifiedDomain { domain, chain, key };
        this.check(
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )?;
        Ok(this)
    }

    fn check(&self, origin: &str, key_origin: &str) -> Result<(), TlsError> {
        let Some(end_entity) = self.chain.first() else {
            return Err(TlsError::BadCertificate {
                origin: origin.to_owned(),
                reason: "the certificate chain is empty".to_owned(),
            });
        };
        webpki::EndEntityCert::try_from(end_entity).map_err(|e| TlsError::BadCertificate {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
        self.certified_key_inner()
            .map(drop)
            .map_err(|e| TlsError::BadKey {
                origin: key_origin.to_owned(),
                reason: match e {
                    rustls::Error::InconsistentKeys(_) => {
                        format!("the private key does not match the public key of the certificate ({origin})")
                    }
                    other => format!("unusable private key: {other}"),
                },
            })
    }

    fn certified_key_inner(&self) -> Result<CertifiedKey, rustls::Error> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
    }

    /// The rustls signing form of this chain and key, as a server or client certificate.
    ///
    /// Errors: [`TlsError::BadKey`] (cannot happen for a value built by this module's
    /// constructors, which check the key).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        self.certified_key_inner()
            .map(Arc::new)
            .map_err(|e| TlsError::BadKey {
                origin: format!("private key for {}", self.domain),
                reason: e.to_string(),
            })
    }

    /// The XMPP domain this certificate is for.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The certificate chain, end-entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key (DER).
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The end-entity certificate's dNSName subjectAltNames (wildcards included, e.g.
    /// `*.example.com`), in certificate order.
    pub fn dns_names(&self) -> Vec<String> {
        self.chain
            .first()
            .and_then(|c| dns_names_of(c).ok())
            .unwrap_or_default()
    }

    /// The chain as PEM `CERTIFICATE` blocks, end-entity first (a `fullchain.pem`).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// The private key as a PEM block (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`
    /// after its encoding). Handle with care: this is the secret.
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_encode(label, self.key.secret_der())
    }
}

impl Clone for CertifiedDomain {
    fn clone(&self) -> Self {
        CertifiedDomain {
            domain: self.domain.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for CertifiedDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedDomain")
            .field("domain", &self.domain)
            .field("chain_len", &self.chain.len())
            .field("key", &"[secret key elided]")
            .finish()
    }
}

fn dns_names_of(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    Ok(ee.valid_dns_names().map(str::to_owned).collect())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---------------------------------------------------------------------------------------
// The self-signed stand-in (rcgen)
// ---------------------------------------------------------------------------------------

/// Midnight UTC of a date (proleptic Gregorian), through humantime's RFC 3339 parser.
///
/// Panics on a date that does not exist (the callers pass literals).
fn unix_ymd(year: i64, month: u32, day: u32) -> UnixTime {
    let at = humantime::parse_rfc3339(&format!("{year:04}-{month:02}-{day:02}T00:00:00Z"))
        .expect("a valid date");
    UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
}

/// Sets an rcgen validity period from two [`UnixTime`]s (rcgen takes `time` values, which
/// this crate does not name).
fn set_validity(params: &mut rcgen::CertificateParams, from: UnixTime, to: UnixTime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from.as_secs());
    params.not_after = epoch + Duration::from_secs(to.as_secs());
}

fn generate_error(domain: &str, e: impl fmt::Display) -> TlsError {
    TlsError::Generate {
        domain: domain.to_owned(),
        reason: e.to_string(),
    }
}

/// The parameters of a leaf certificate for `domain` (already an A-label name) as a public
/// CA issues it today: dNSName subjectAltName only (no XmppAddr), digitalSignature, the
/// serverAuth extended key usage only (RFC 6120 §13.7.1.2, XEP-0178), valid 2020-01-01 to
/// 2100-01-01. (`fedrouter_testkit::TestCa` issues the same profile, with variations.)
fn leaf_params(domain: &str) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| generate_error(domain, e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, unix_ymd(2020, 1, 1), unix_ymd(2100, 1, 1));
    Ok(params)
}

fn key_der(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A self-signed certificate for `domain` (ECDSA P-256, dNSName = the domain, serverAuth,
/// valid 2020-01-01 to 2100-01-01): `fedrouter serve`'s stand-in when no certificate is
/// configured. Peers that verify certificates will refuse it (unknown issuer) and fall back
/// to Server Dialback; peers that do not (WebEx-style) will use it for encryption only.
///
/// Errors: [`TlsError::Generate`] for a name that is not a domain.
pub fn self_signed(domain: &str) -> Result<CertifiedDomain, TlsError> {
    let ascii =
        ascii_domain(domain).ok_or_else(|| generate_error(domain, "not a valid domain name"))?;
    let params = leaf_params(&ascii)?;
    let key = rcgen::KeyPair::generate().map_err(|e| generate_error(domain, e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| generate_error(domain, e))?;
    CertifiedDomain::new(domain, vec![cert.der().clone()], key_der(&key))
}
