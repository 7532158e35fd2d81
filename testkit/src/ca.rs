//! A throw-away certificate authority (rcgen, ECDSA P-256) for tests, benchmarks, `loadgen`
//! and lab set-ups.
//!
//! [`TestCa`] issues leaf certificates the way a public CA does today: a dNSName
//! subjectAltName per name and the serverAuth extended key usage only, which an XMPP server
//! presents in both directions of a server-to-server stream (RFC 6120 §13.7.1.2, XEP-0178
//! §3). [`LeafOptions`] varies that profile (extra names, validity, usages) for the
//! negative cases.
//!
//! What it issues is a plain [`Leaf`] of `rustls-pki-types` values: this crate does not
//! depend on `fedrouter` (whose own unit tests use it, and would otherwise see two
//! different `fedrouter` crates). A caller turns a leaf into its own certificate type with
//! [`Leaf::assemble`], e.g. `leaf.assemble(fedrouter::tls::CertifiedDomain::new)`.

use std::fmt;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// An error generating a certificate authority or a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// rcgen could not generate the certificate, or the name asked for is not a domain.
    #[error("cannot generate a certificate for {name:?}: {reason}")]
    Generate {
        /// The CA name or domain asked for.
        name: String,
        /// What rcgen (or the domain check) reported.
        reason: String,
    },
}

fn generate_error(name: &str, e: impl fmt::Display) -> CaError {
    CaError::Generate {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// Midnight UTC of a date (proleptic Gregorian), e.g. `unix_ymd(2100, 1, 1)`: the validity
/// bounds of [`LeafOptions`] and the verification times of certificate checks in tests.
///
/// Panics on a date that does not exist (the callers pass literals).
pub fn unix_ymd(year: i64, month: u32, day: u32) -> UnixTime {
    let at = humantime::parse_rfc3339(&format!("{year:04}-{month:02}-{day:02}T00:00:00Z"))
        .expect("a valid date");
    UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
}

/// Options for a leaf certificate issued by [`TestCa::issue_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafOptions {
    /// Extra dNSName subjectAltNames after the domain itself (e.g. `*.example.com`).
    pub extra_dns_names: Vec<String>,
    /// Start of validity.
    pub not_before: UnixTime,
    /// End of validity.
    pub not_after: UnixTime,
    /// Include the serverAuth extended key usage (what public CAs issue).
    pub server_auth: bool,
    /// Include the clientAuth extended key usage (public CAs no longer do).
    pub client_auth: bool,
}

impl Default for LeafOptions {
    /// Valid 2020-01-01 to 2100-01-01, serverAuth only, no extra names.
    fn default() -> Self {
        LeafOptions {
            extra_dns_names: Vec::new(),
            not_before: unix_ymd(2020, 1, 1),
            not_after: unix_ymd(2100, 1, 1),
            server_auth: true,
            client_auth: false,
        }
    }
}

/// A certificate chain and private key issued by [`TestCa`], as `rustls-pki-types` values.
///
/// `chain` is the leaf only (the CA certificate is not included; trust it with
/// [`TestCa::root_store`] or write [`TestCa::ca_cert_pem`]). `key` is the leaf's ECDSA
/// P-256 key in PKCS#8 form. `domain` is the name as given to [`TestCa::issue`] (the
/// certificate's dNSName is its IDNA A-label form).
pub struct Leaf {
    /// The domain the leaf was issued for, as written by the caller.
    pub domain: String,
    /// The certificate chain, end-entity first (here: the end-entity certificate alone).
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key (PKCS#8 DER).
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    /// Hands the domain, chain and key to `make`, e.g. a certificate type's constructor:
    /// `ca.issue("a.test")?.assemble(fedrouter::tls::CertifiedDomain::new)` gives what that
    /// constructor returns.
    pub fn assemble<T>(
        self,
        make: impl FnOnce(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) -> T,
    ) -> T {
        make(self.domain, self.chain, self.key)
    }

    /// The chain as PEM `CERTIFICATE` blocks, end-entity first (a `fullchain.pem`).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// The private key as a PEM `PRIVATE KEY` block (PKCS#8; a `privkey.pem`).
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_encode(label, self.key.secret_der())
    }
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Leaf {
            domain: self.domain.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("domain", &self.domain)
            .field("chain_len", &self.chain.len())
            .field("key", &"[secret key elided]")
            .finish()
    }
}

/// A DER value as one PEM block: base64 in lines of 64 characters (RFC 7468 §2).
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

/// The domain as an A-label DNS name (IDNA, RFC 5891), lowercase, no trailing dot; `None`
/// if it is neither a DNS name nor an IP literal.
fn ascii_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let ascii = idna::domain_to_ascii(domain).ok()?;
    // IDNA (non-strict UTS 46) lets some non-DNS characters through; keep only names TLS
    // can carry: DNS names and IP literals.
    ServerName::try_from(ascii.as_str())
        .is_ok()
        .then_some(ascii)
}

/// Sets an rcgen validity period from two [`UnixTime`]s (rcgen takes `time` values, which
/// this crate does not name).
fn set_validity(params: &mut rcgen::CertificateParams, from: UnixTime, to: UnixTime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from.as_secs());
    params.not_after = epoch + Duration::from_secs(to.as_secs());
}

/// The parameters of a leaf certificate for `domain` (already an A-label name): dNSName
/// subjectAltNames only (no XmppAddr), digitalSignature, the extended key usages asked for.
fn leaf_params(domain: &str, opts: &LeafOptions) -> Result<rcgen::CertificateParams, CaError> {
    let mut names = vec![domain.to_owned()];
    names.extend(opts.extra_dns_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| generate_error(domain, e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages.clear();
    if opts.server_auth {
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    }
    if opts.client_auth {
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    }
    set_validity(&mut params, opts.not_before, opts.not_after);
    Ok(params)
}

fn key_der(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A throw-away certificate authority (rcgen, ECDSA P-256) for tests, `loadgen` and lab
/// set-ups: it issues leaf certificates the way a public CA does today (dNSName
/// subjectAltName, serverAuth extended key usage only; RFC 6120 §13.7.1.2, XEP-0178).
///
/// Trust it by adding [`TestCa::ca_der`] to a [`RootCertStore`] ([`TestCa::root_store`]).
pub struct TestCa {
    name: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA with a fresh key, subject `CN=name`, valid 2000-01-01 to 2100-01-01.
    ///
    /// Errors: [`CaError::Generate`].
    pub fn new(name: &str) -> Result<Self, CaError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, unix_ymd(2000, 1, 1), unix_ymd(2100, 1, 1));
        let key = rcgen::KeyPair::generate().map_err(|e| generate_error(name, e))?;
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key)
            .map_err(|e| generate_error(name, e))?;
        Ok(TestCa {
            name: name.to_owned(),
            issuer,
        })
    }

    /// The CA's name (its subject common name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate (DER), to add to a trust store.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate as a PEM `CERTIFICATE` block, e.g. for a peer server's CA file.
    pub fn ca_cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A trust store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der())
            .expect("rcgen CA certificates are valid trust anchors");
        roots
    }

    /// A leaf certificate for `domain` with [`LeafOptions::default`]: dNSName = the domain
    /// (IDNA A-labels), serverAuth only, valid 2020-01-01 to 2100-01-01; chain = the leaf.
    ///
    /// Errors: [`CaError::Generate`] for a name that is not a domain.
    pub fn issue(&self, domain: &str) -> Result<Leaf, CaError> {
        self.issue_with(domain, &LeafOptions::default())
    }

    /// A leaf certificate for `domain` that expired on 2001-01-01 (valid from 2000-01-01).
    ///
    /// Errors: as [`TestCa::issue`].
    pub fn issue_expired(&self, domain: &str) -> Result<Leaf, CaError> {
        self.issue_with(
            domain,
            &LeafOptions {
                not_before: unix_ymd(2000, 1, 1),
                not_after: unix_ymd(2001, 1, 1),
                ..LeafOptions::default()
            },
        )
    }

    /// A leaf certificate for `domain` with the given options.
    ///
    /// Errors: as [`TestCa::issue`].
    pub fn issue_with(&self, domain: &str, opts: &LeafOptions) -> Result<Leaf, CaError> {
        let ascii = ascii_domain(domain)
            .ok_or_else(|| generate_error(domain, "not a valid domain name"))?;
        let params = leaf_params(&ascii, opts)?;
        let key = rcgen::KeyPair::generate().map_err(|e| generate_error(domain, e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| generate_error(domain, e))?;
        Ok(Leaf {
            domain: domain.to_owned(),
            chain: vec![cert.der().clone()],
            key: key_der(&key),
        })
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject as _;

    use super::*;

    #[test]
    fn generation_rejects_non_domains() {
        let ca = TestCa::new("ca").unwrap();
        assert_eq!(ca.name(), "ca");
        assert!(ca.ca_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(ca.issue("a b"), Err(CaError::Generate { .. })));
        assert!(matches!(ca.issue(""), Err(CaError::Generate { .. })));
        let err = ca.issue("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot generate a certificate for \"a b\": not a valid domain name"
        );
    }

    #[test]
    fn leaves_keep_the_domain_and_round_trip_through_pem() {
        let ca = TestCa::new("ca").unwrap();
        let leaf = ca.issue("bücher.example").unwrap();
        assert_eq!(leaf.domain, "bücher.example");
        assert_eq!(leaf.chain.len(), 1);
        assert!(matches!(leaf.key, PrivateKeyDer::Pkcs8(_)));

        let chain = CertificateDer::pem_slice_iter(leaf.chain_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(chain, leaf.chain);
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem().as_bytes()).unwrap();
        assert_eq!(key.secret_der(), leaf.key.secret_der());
        assert!(leaf.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));

        let copy = leaf.clone();
        assert_eq!(copy.chain, leaf.chain);
        let shown = format!("{leaf:?}");
        assert!(shown.contains("bücher.example") && shown.contains("elided"));

        let parts =
            leaf.assemble(|domain, chain, key| (domain, chain.len(), key.secret_der().len()));
        assert_eq!(parts.0, "bücher.example");
        assert_eq!(parts.1, 1);
        assert!(parts.2 > 0);
    }

    #[test]
    fn root_store_holds_the_ca() {
        let ca = TestCa::new("ca").unwrap();
        assert_eq!(ca.root_store().len(), 1);
        assert!(!ca.ca_der().is_empty());
        assert_eq!(format!("{ca:?}"), "TestCa { name: \"ca\" }");
    }

    #[test]
    fn dates() {
        assert_eq!(unix_ymd(1970, 1, 1).as_secs(), 0);
        assert_eq!(unix_ymd(2000, 3, 1).as_secs(), 951_868_800);
        let opts = LeafOptions::default();
        assert_eq!(opts.not_before, unix_ymd(2020, 1, 1));
        assert_eq!(opts.not_after, unix_ymd(2100, 1, 1));
        assert!(opts.server_auth && !opts.client_auth);
    }
}
