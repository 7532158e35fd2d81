//! The TLS adapter: rustls configurations for S2S and C2S streams, certificates, and the
//! check of a peer's certificate against the domain its stream header names.
//!
//! The protocol core never does TLS I/O. The runtime wraps a socket in a
//! [`rustls::ServerConnection`] or [`rustls::ClientConnection`] built from the configurations
//! made here, for STARTTLS (RFC 6120 §5) or for direct TLS on `_xmpps-server._tcp` /
//! `_xmpps-client._tcp` targets (XEP-0368), and feeds the plaintext to the core.
//!
//! # Why the server does not check client certificates during the handshake
//!
//! When an S2S peer connects, the handshake happens before its stream header says which
//! domain it speaks for (RFC 6120 §5.4, §13.7.2). So the server configuration
//! *requests* a client certificate but accepts any ([`AcceptAnyClientCert`]); once the header
//! names the peer's domain, the runtime calls [`verify_peer_certificate`] on
//! `peer_certificates()`, and offers SASL EXTERNAL (XEP-0178) only if that succeeds,
//! Server Dialback (XEP-0220) otherwise.
//!
//! That check asks for the *serverAuth* extended key usage, not clientAuth: public CAs no
//! longer issue clientAuth certificates, and an XMPP server presents the same certificate
//! in both directions (RFC 6120 §13.7.1.2, XEP-0178 §3).
//!
//! # Identity
//!
//! Certificates are checked with webpki against the DNS-ID (`dNSName` subjectAltName, RFC
//! 6125) of the domain, which is what public CAs issue. XmppAddr and SRV-ID identifiers
//! (RFC 6120 §13.7.1.4, RFC 7673) are not consulted.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, TrustAnchor, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// ALPN protocol id for server-to-server direct TLS on `_xmpps-server._tcp` targets,
/// `xmpp-server` (XEP-0368 §3; IANA ALPN Protocol IDs registry per XEP-0368 §7, RFC 7301).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// ALPN protocol id for client-to-server direct TLS on `_xmpps-client._tcp` targets,
/// `xmpp-client` (XEP-0368 §3).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// The crypto provider every configuration here is built with: *ring*.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Installs *ring* as the process-wide default rustls [`CryptoProvider`], for code that
/// builds rustls configurations without naming a provider.
///
/// Idempotent: if a default provider is already installed (by an earlier call or by anyone
/// else), it is left as it is. The configurations made by this module do not depend on it:
/// they always use *ring* explicitly.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: there is a default either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// An error loading, generating or assembling certificates and TLS configurations.
///
/// Each message names the file or domain concerned and what is wrong, for an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A certificate file holds no PEM `CERTIFICATE` block.
    #[error("{} holds no PEM certificate (expected a '-----BEGIN CERTIFICATE-----' block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no PEM private key.
    #[error(
        "{} holds no PEM private key (expected '-----BEGIN PRIVATE KEY-----', \
         'RSA PRIVATE KEY' or 'EC PRIVATE KEY')",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file is malformed.
    #[error("{} is not valid PEM: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// A certificate names no DNS domain, so it cannot be assigned to one.
    #[error("the certificate in {} names no DNS domain (it has no dNSName subjectAltName)", path.display())]
    NoDomainName {
        /// The certificate file.
        path: PathBuf,
    },
    /// An end-entity certificate cannot be parsed.
    #[error("{origin}: not a usable X.509 certificate: {reason}")]
    BadCertificate {
        /// The file, or `certificate for DOMAIN` for one built in memory.
        origin: String,
        /// What the parser reported.
        reason: String,
    },
    /// A private key cannot be used, or does not belong to the certificate.
    #[error("{origin}: {reason}")]
    BadKey {
        /// The key file, or `private key for DOMAIN` for one built in memory.
        origin: String,
        /// What is wrong, e.g. that it does not match the certificate's public key.
        reason: String,
    },
    /// A certificate could not be generated (rcgen), e.g. for a name that is not a domain.
    #[error("cannot generate a certificate for {domain:?}: {reason}")]
    Generate {
        /// The domain asked for.
        domain: String,
        /// What rcgen reported.
        reason: String,
    },
    /// Server certificates are to be verified but no trust roots were given.
    #[error(
        "server certificate verification is on but no trusted root certificates are configured"
    )]
    NoTrustRoots,
    /// rustls refused a configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Test and default certificates (rcgen)
// ---------------------------------------------------------------------------------------

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

/// The parameters of a leaf certificate for `domain` (already an A-label name): dNSName
/// subjectAltNames only (no XmppAddr), digitalSignature, the extended key usages asked for.
fn leaf_params(domain: &str, opts: &LeafOptions) -> Result<rcgen::CertificateParams, TlsError> {
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
    /// Errors: [`TlsError::Generate`].
    pub fn new(name: &str) -> Result<Self, TlsError> {
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
    /// Errors: [`TlsError::Generate`] for a name that is not a domain.
    pub fn issue(&self, domain: &str) -> Result<CertifiedDomain, TlsError> {
        self.issue_with(domain, &LeafOptions::default())
    }

    /// A leaf certificate for `domain` that expired on 2001-01-01 (valid from 2000-01-01).
    ///
    /// Errors: as [`TestCa::issue`].
    pub fn issue_expired(&self, domain: &str) -> Result<CertifiedDomain, TlsError> {
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
    pub fn issue_with(
        &self,
        domain: &str,
        opts: &LeafOptions,
    ) -> Result<CertifiedDomain, TlsError> {
        let ascii = ascii_domain(domain)
            .ok_or_else(|| generate_error(domain, "not a valid domain name"))?;
        let params = leaf_params(&ascii, opts)?;
        let key = rcgen::KeyPair::generate().map_err(|e| generate_error(domain, e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| generate_error(domain, e))?;
        CertifiedDomain::new(domain, vec![cert.der().clone()], key_der(&key))
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
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
    let params = leaf_params(&ascii, &LeafOptions::default())?;
    let key = rcgen::KeyPair::generate().map_err(|e| generate_error(domain, e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| generate_error(domain, e))?;
    CertifiedDomain::new(domain, vec![cert.der().clone()], key_der(&key))
}

// ---------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------

/// Chooses the server certificate by the client's SNI (RFC 6066 §3) among the local domains:
/// the initiating entity names the domain it wants, which its certificate check (RFC 6120
/// §13.7.2.1) will then expect.
///
/// Lookup of an SNI name, case-insensitively and without a trailing dot: the certificate
/// added for exactly that name; else one whose dNSName is the wildcard `*.parent`; else the
/// default. Without SNI (older S2S peers, IP literals) it is the default. The default is
/// the first certificate added, unless [`DomainCertResolver::set_default`] says otherwise.
#[derive(Default)]
pub struct DomainCertResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl DomainCertResolver {
    /// An empty resolver: every handshake fails (no certificate) until one is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a local domain's certificate under its [`CertifiedDomain::domain`] (replacing
    /// an earlier certificate for that name) and under each of its dNSNames not already
    /// taken. The first certificate added becomes the default.
    ///
    /// Errors: [`TlsError::BadKey`] (not for values built by this module's constructors).
    pub fn add(&mut self, cert: &CertifiedDomain) -> Result<(), TlsError> {
        let key = cert.certified_key()?;
        for name in cert.dns_names() {
            self.by_name
                .entry(normalize_sni(&name))
                .or_insert_with(|| key.clone());
        }
        let domain = ascii_domain(cert.domain()).unwrap_or_else(|| normalize_sni(cert.domain()));
        self.by_name.insert(domain, key.clone());
        self.default.get_or_insert(key);
        Ok(())
    }

    /// Makes the certificate for `domain` the default; `false` (and no change) if no
    /// certificate was added for that name.
    pub fn set_default(&mut self, domain: &str) -> bool {
        match self.lookup_exact(domain) {
            Some(key) => {
                self.default = Some(key);
                true
            }
            None => false,
        }
    }

    /// The local domains (and certificate names) known, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    fn lookup_exact(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = ascii_domain(name).unwrap_or_else(|| normalize_sni(name));
        self.by_name.get(&name).cloned()
    }

    /// The certificate chosen for an SNI name (`None`: no SNI), as the handshake would
    /// choose it; `None` if there is none, which fails the handshake.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let name = normalize_sni(sni);
        if let Some(key) = self.by_name.get(&name) {
            return Some(key.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.by_name.get(&format!("*.{parent}")) {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

fn normalize_sni(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl fmt::Debug for DomainCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        f.debug_struct("DomainCertResolver")
            .field("names", &names)
            .field("has_default", &self.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for DomainCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name())
    }
}

/// Whether the server asks the client for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No CertificateRequest is sent: for C2S listeners (clients authenticate with SASL
    /// PLAIN/SCRAM, RFC 6120 §6).
    None,
    /// A certificate is requested but never required, and any certificate is accepted
    /// during the handshake ([`AcceptAnyClientCert`]); it is checked with
    /// [`verify_peer_certificate`] once the stream header names the peer (S2S, RFC 6120
    /// §13.7.1.2, XEP-0178).
    Request,
}

/// A client-certificate verifier that offers client authentication, does not require it,
/// and accepts any certificate chain, for S2S listeners ([`ClientAuth::Request`]).
///
/// The chain is not trusted by being accepted: the peer's domain is unknown during the
/// handshake, so the runtime must call [`verify_peer_certificate`] after the stream header
/// before relying on it (SASL EXTERNAL, XEP-0178). The handshake signature is still checked,
/// so the peer did prove possession of the certificate's key.
#[derive(Debug)]
pub struct AcceptAnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnyClientCert {
    /// The verifier, with *ring*'s signature algorithms.
    pub fn new() -> Self {
        AcceptAnyClientCert {
            provider: provider(),
        }
    }
}

impl Default for AcceptAnyClientCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client then sends whatever certificate it has (RFC 8446 §4.2.4).
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server configuration for a listener (STARTTLS, RFC 6120 §5.4; direct TLS, XEP-0368):
/// TLS 1.2 and 1.3 (RFC 7590 §3), *ring*, the certificate chosen by SNI from `resolver`,
/// client certificates per `client_auth`, and `alpn` as the server's ALPN protocols (e.g.
/// `&[ALPN_XMPP_SERVER]` on a direct-TLS S2S port; empty for STARTTLS).
///
/// With a non-empty `alpn`, a client that offers ALPN but none of these protocols is
/// refused (`no_application_protocol`); a client that offers none is accepted.
pub fn server_config(
    resolver: Arc<DomainCertResolver>,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Request => {
            builder.with_client_cert_verifier(Arc::new(AcceptAnyClientCert::new()))
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// A server-certificate verifier that accepts **any** certificate for any name: the TLS
/// session then encrypts but does not authenticate the peer.
///
/// Policy only: for peers configured as "optional TLS, no certificate check" (WebEx-style).
/// Such a stream must authenticate the peer some other way (Server Dialback, XEP-0220) and
/// must never be treated as certificate-authenticated. The handshake signature is still
/// checked against the presented certificate's key.
#[derive(Debug)]
pub struct NoServerVerification {
    provider: Arc<CryptoProvider>,
}

impl NoServerVerification {
    /// The verifier, with *ring*'s signature algorithms.
    pub fn new() -> Self {
        NoServerVerification {
            provider: provider(),
        }
    }
}

impl Default for NoServerVerification {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client configuration for an outbound stream (S2S to a remote domain, or `loadgen`'s
/// C2S clients): TLS 1.2 and 1.3 (RFC 7590 §3), *ring*, and
///
/// - `verify == true`: the standard webpki verifier over `roots`: chain to a root,
///   serverAuth usage, validity, and the name given as the connection's server name, which
///   must be the remote domain ([`server_name`]; RFC 6120 §13.7.2.1);
/// - `verify == false`: [`NoServerVerification`] (`roots` is ignored);
/// - `our_cert`: the client certificate to present (SASL EXTERNAL, XEP-0178), or none;
/// - `alpn`: the ALPN protocols to offer (XEP-0368 direct TLS), empty for none.
///
/// Errors: [`TlsError::NoTrustRoots`] when `verify` is on and `roots` is `None` or empty;
/// [`TlsError::BadKey`] if `our_cert`'s key is unusable.
pub fn client_config(
    roots: Option<Arc<RootCertStore>>,
    verify: bool,
    our_cert: Option<&CertifiedDomain>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let builder = if verify {
        let roots = roots
            .filter(|r| !r.is_empty())
            .ok_or(TlsError::NoTrustRoots)?;
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification::new()))
    };
    let mut config = match our_cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
            .map_err(|e| TlsError::BadKey {
                origin: format!("private key for {}", cert.domain),
                reason: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// Peer certificate check after the stream header
// ---------------------------------------------------------------------------------------

pub use crate::stream::CertError;

/// The [`CertError`] for what webpki said about `domain`'s chain.
// `RequiredEkuNotFound` is deprecated in favour of its `Context` form; both are matched.
#[allow(deprecated)]
fn cert_error(error: webpki::Error, domain: &str) -> CertError {
    {
        use webpki::Error as E;
        match error {
            E::CertExpired { not_after, .. } => CertError::Expired { not_after },
            E::CertNotValidYet { not_before, .. } => CertError::NotValidYet { not_before },
            E::UnknownIssuer => CertError::UnknownIssuer,
            E::CertNotValidForName(_) => CertError::WrongName {
                domain: domain.to_owned(),
            },
            E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => CertError::WrongUsage,
            E::BadDer
            | E::BadDerTime
            | E::TrailingData(_)
            | E::UnsupportedCertVersion
            | E::MalformedExtensions
            | E::ExtensionValueInvalid
            | E::InvalidCertValidity
            | E::InvalidSerialNumber
            | E::EmptyEkuExtension => CertError::BadEncoding,
            other => CertError::Other(other.to_string()),
        }
    }
}

/// [`crate::stream::PeerCertVerifier`] over trust anchors and the wall clock: what the
/// runtime uses to decide whether a peer's certificate allows SASL EXTERNAL (RFC 6120
/// §13.7.1.2, XEP-0178 §3), and what `loadgen`'s peers use to check the SUT's.
#[derive(Debug, Clone)]
pub struct RootsVerifier {
    roots: Arc<RootCertStore>,
}

impl RootsVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: Arc<RootCertStore>) -> Self {
        RootsVerifier { roots }
    }
}

impl crate::stream::PeerCertVerifier for RootsVerifier {
    /// [`verify_peer_certificate`] at `at` (the time the stream's TLS handshake completed).
    fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        domain: &str,
        at: UnixTime,
    ) -> Result<(), CertError> {
        verify_peer_certificate(chain, domain, &self.roots, at)
    }
}

/// Checks that a peer's certificate chain (`peer_certificates()`, end-entity first)
/// authenticates it as `domain`, the domain its stream header claimed (RFC 6120
/// §13.7.2.1, XEP-0178 §3): the chain leads to one of `roots`, every certificate is valid
/// at `now`, the end-entity's extended key usage allows serverAuth (or is absent; RFC 5280
/// §4.2.1.12), and it has a dNSName matching `domain` (wildcards per RFC 6125; the domain
/// is converted to IDNA A-labels first).
///
/// Used for both directions: a connecting S2S peer presents its server certificate as a
/// TLS client certificate, with serverAuth only (RFC 6120 §13.7.1.2). Revocation is not
/// checked. `now` comes from the runtime's clock.
///
/// Errors: the [`CertError`] that says why, checking in this order: presence, domain
/// syntax, encoding, chain and validity, usage, name.
pub fn verify_peer_certificate(
    chain: &[CertificateDer<'_>],
    domain: &str,
    roots: &RootCertStore,
    now: UnixTime,
) -> Result<(), CertError> {
    let (end_entity, intermediates) = chain.split_first().ok_or(CertError::NoCertificate)?;
    let name = server_name(domain)?;
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| cert_error(e, domain))?;
    let anchors: &[TrustAnchor<'static>] = &roots.roots;
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        anchors,
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| cert_error(e, domain))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| cert_error(e, domain))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::{CertificateError, ClientConnection, ServerConnection};

    use super::*;

    /// The validation time of the certificate checks: 2026-01-01 (fixed, so the tests do not
    /// depend on the clock; the in-memory handshakes use rustls's clock, inside every
    /// test certificate's validity but the expired one's).
    fn now() -> UnixTime {
        unix_ymd(2026, 1, 1)
    }

    /// Which side of an in-memory handshake failed.
    #[derive(Debug)]
    enum Failed {
        Client(rustls::Error),
        Server(rustls::Error),
    }

    /// Runs a real TLS handshake between two in-memory endpoints: each side's `write_tls`
    /// output is fed to the other's `read_tls` through a `Vec`, no sockets.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), Failed> {
        for _ in 0..16 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            let mut rd = &to_server[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().map_err(Failed::Server)?;
            }
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            let mut rd = &to_client[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().map_err(Failed::Client)?;
            }
            if !client.is_handshaking()
                && !server.is_handshaking()
                && !client.wants_write()
                && !server.wants_write()
            {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn resolver(certs: &[&CertifiedDomain]) -> Arc<DomainCertResolver> {
        let mut resolver = DomainCertResolver::new();
        for cert in certs {
            resolver.add(cert).unwrap();
        }
        Arc::new(resolver)
    }

    fn connect(
        client_config: Arc<ClientConfig>,
        server_config: Arc<ServerConfig>,
        sni: &str,
    ) -> (ClientConnection, ServerConnection, Result<(), Failed>) {
        let mut client = ClientConnection::new(client_config, server_name(sni).unwrap()).unwrap();
        let mut server = ServerConnection::new(server_config).unwrap();
        let result = handshake(&mut client, &mut server);
        (client, server, result)
    }

    fn roots(ca: &TestCa) -> Arc<RootCertStore> {
        Arc::new(ca.root_store())
    }

    fn is_name_error(e: &Failed) -> bool {
        matches!(
            e,
            Failed::Client(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        )
    }

    #[test]
    fn sni_picks_the_domain_certificate_and_data_flows() {
        let ca = TestCa::new("fedrouter test CA").unwrap();
        let a = ca.issue("a.example").unwrap();
        let b = ca.issue("b.example").unwrap();
        let server = server_config(resolver(&[&a, &b]), ClientAuth::None, &[]);
        let client = client_config(Some(roots(&ca)), true, None, &[]).unwrap();

        for (sni, expected) in [("b.example", &b), ("a.example", &a), ("B.Example", &b)] {
            let (mut c, mut s, result) = connect(client.clone(), server.clone(), sni);
            result.unwrap();
            assert_eq!(s.server_name(), Some(sni.to_ascii_lowercase().as_str()));
            assert_eq!(c.peer_certificates().unwrap()[0], expected.chain()[0]);

            // Application data (the XMPP stream) flows through the session.
            c.writer().write_all(b"<stream:stream>").unwrap();
            handshake(&mut c, &mut s).unwrap();
            let mut got = [0u8; 15];
            s.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"<stream:stream>");
        }
    }

    #[test]
    fn without_sni_the_default_certificate_is_used() {
        let ca = TestCa::new("ca").unwrap();
        let a = ca.issue("a.example").unwrap();
        let b = ca.issue("b.example").unwrap();
        let mut res = DomainCertResolver::new();
        res.add(&a).unwrap();
        res.add(&b).unwrap();
        assert!(res.set_default("b.example"));
        assert!(!res.set_default("nobody.example"));
        let server = server_config(Arc::new(res), ClientAuth::None, &[]);

        let mut client = (*client_config(None, false, None, &[]).unwrap()).clone();
        client.enable_sni = false;
        let (c, s, result) = connect(Arc::new(client), server.clone(), "a.example");
        result.unwrap();
        assert_eq!(s.server_name(), None);
        assert_eq!(c.peer_certificates().unwrap()[0], b.chain()[0]);

        // An SNI for no local domain also gets the default.
        let client = client_config(None, false, None, &[]).unwrap();
        let (c, _, result) = connect(client, server, "unknown.example");
        result.unwrap();
        assert_eq!(c.peer_certificates().unwrap()[0], b.chain()[0]);
    }

    #[test]
    fn resolver_lookup_normalises_and_matches_wildcards() {
        let ca = TestCa::new("ca").unwrap();
        let a = ca.issue("a.example").unwrap();
        let wild = ca
            .issue_with(
                "muc.example",
                &LeafOptions {
                    extra_dns_names: vec!["*.muc.example".to_owned()],
                    ..LeafOptions::default()
                },
            )
            .unwrap();
        let res = resolver(&[&a, &wild]);
        let leaf = |sni: Option<&str>| res.lookup(sni).unwrap().cert[0].clone();
        assert_eq!(leaf(Some("A.EXAMPLE.")), a.chain()[0]);
        assert_eq!(leaf(Some("muc.example")), wild.chain()[0]);
        assert_eq!(leaf(Some("room.muc.example")), wild.chain()[0]);
        assert_eq!(leaf(Some("x.room.muc.example")), a.chain()[0]);
        assert_eq!(leaf(None), a.chain()[0]);
        assert!(DomainCertResolver::new()
            .lookup(Some("a.example"))
            .is_none());
        assert_eq!(wild.dns_names(), ["muc.example", "*.muc.example"]);
    }

    #[test]
    fn server_sees_the_client_chain_and_checks_it_after_the_header() {
        let ca = TestCa::new("ca").unwrap();
        let local = ca.issue("cupdomain.com").unwrap();
        // The peer's certificate has serverAuth only, as public CAs now issue them.
        let peer = ca.issue("gmail.com").unwrap();
        let server = server_config(resolver(&[&local]), ClientAuth::Request, &[]);
        let client = client_config(Some(roots(&ca)), true, Some(&peer), &[]).unwrap();

        let (_, s, result) = connect(client, server, "cupdomain.com");
        result.unwrap();
        let presented = s.peer_certificates().expect("client certificate received");
        assert_eq!(presented, peer.chain());

        // The stream header then says from='gmail.com': the late check.
        let roots = ca.root_store();
        assert_eq!(
            verify_peer_certificate(presented, "gmail.com", &roots, now()),
            Ok(())
        );
        assert_eq!(
            verify_peer_certificate(presented, "evil.example", &roots, now()),
            Err(CertError::WrongName {
                domain: "evil.example".to_owned()
            })
        );
    }

    #[test]
    fn request_mode_accepts_missing_and_untrusted_client_certificates() {
        let ca = TestCa::new("ca").unwrap();
        let local = ca.issue("cupdomain.com").unwrap();
        let server = server_config(resolver(&[&local]), ClientAuth::Request, &[]);
        let roots = ca.root_store();

        // No client certificate: the handshake succeeds; the late check says so.
        let client = client_config(Some(Arc::new(roots.clone())), true, None, &[]).unwrap();
        let (_, s, result) = connect(client, server.clone(), "cupdomain.com");
        result.unwrap();
        assert!(s.peer_certificates().is_none());
        assert_eq!(
            verify_peer_certificate(&[], "gmail.com", &roots, now()),
            Err(CertError::NoCertificate)
        );

        // A self-signed client certificate: accepted by the handshake, refused after.
        let peer = self_signed("webex.example").unwrap();
        let client = client_config(Some(Arc::new(roots.clone())), true, Some(&peer), &[]).unwrap();
        let (_, s, result) = connect(client, server, "cupdomain.com");
        result.unwrap();
        let presented = s.peer_certificates().unwrap();
        assert_eq!(
            verify_peer_certificate(presented, "webex.example", &roots, now()),
            Err(CertError::UnknownIssuer)
        );
    }

    #[test]
    fn client_auth_none_does_not_request_a_certificate() {
        let ca = TestCa::new("ca").unwrap();
        let local = ca.issue("cupdomain.com").unwrap();
        let peer = ca.issue("gmail.com").unwrap();
        let server = server_config(resolver(&[&local]), ClientAuth::None, &[]);
        let client = client_config(Some(roots(&ca)), true, Some(&peer), &[]).unwrap();
        let (_, s, result) = connect(client, server, "cupdomain.com");
        result.unwrap();
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn verifying_client_rejects_wrong_name_and_unknown_ca() {
        let ca = TestCa::new("ca").unwrap();
        let local = ca.issue("a.example").unwrap();
        let server = server_config(resolver(&[&local]), ClientAuth::None, &[]);
        let client = client_config(Some(roots(&ca)), true, None, &[]).unwrap();

        // The server only has a.example's certificate; we wanted evil.example.
        let (_, _, result) = connect(client.clone(), server, "evil.example");
        let err = result.unwrap_err();
        assert!(is_name_error(&err), "{err:?}");

        // A server certificate from a CA we do not trust.
        let other = TestCa::new("other ca").unwrap();
        let foreign = other.issue("a.example").unwrap();
        let server = server_config(resolver(&[&foreign]), ClientAuth::None, &[]);
        let (_, _, result) = connect(client, server, "a.example");
        assert!(matches!(
            result,
            Err(Failed::Client(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )))
        ));
    }

    #[test]
    fn non_verifying_client_accepts_any_server_certificate() {
        let ca = TestCa::new("ca").unwrap();
        let local = ca.issue("a.example").unwrap();
        let client = client_config(None, false, None, &[]).unwrap();

        let server = server_config(resolver(&[&local]), ClientAuth::None, &[]);
        let (c, _, result) = connect(client.clone(), server, "evil.example");
        result.unwrap();
        assert_eq!(c.peer_certificates().unwrap()[0], local.chain()[0]);

        let expired = ca.issue_expired("a.example").unwrap();
        let ss = self_signed("b.example").unwrap();
        for cert in [&expired, &ss] {
            let server = server_config(resolver(&[cert]), ClientAuth::None, &[]);
            let (_, _, result) = connect(client.clone(), server, "a.example");
            result.unwrap();
        }
    }

    #[test]
    fn alpn_xmpp_server_is_negotiated() {
        let ca = TestCa::new("ca").unwrap();
        let local = ca.issue("a.example").unwrap();
        let server = server_config(
            resolver(&[&local]),
            ClientAuth::Request,
            &[ALPN_XMPP_SERVER],
        );
        let client = client_config(Some(roots(&ca)), true, None, &[ALPN_XMPP_SERVER]).unwrap();
        let (c, s, result) = connect(client, server.clone(), "a.example");
        result.unwrap();
        assert_eq!(c.alpn_protocol(), Some(ALPN_XMPP_SERVER));
        assert_eq!(s.alpn_protocol(), Some(ALPN_XMPP_SERVER));

        // A C2S client on the S2S port is refused.
        let c2s = client_config(Some(roots(&ca)), true, None, &[ALPN_XMPP_CLIENT]).unwrap();
        let (_, _, result) = connect(c2s, server.clone(), "a.example");
        assert!(matches!(
            result,
            Err(Failed::Server(rustls::Error::NoApplicationProtocol))
        ));

        // A client that offers no ALPN (STARTTLS-style) is still served.
        let plain = client_config(Some(roots(&ca)), true, None, &[]).unwrap();
        let (c, _, result) = connect(plain, server, "a.example");
        result.unwrap();
        assert_eq!(c.alpn_protocol(), None);
    }

    #[test]
    fn verify_peer_certificate_outcomes() {
        let ca = TestCa::new("ca").unwrap();
        let roots = ca.root_store();
        let check = |cert: &CertifiedDomain, domain: &str| {
            verify_peer_certificate(cert.chain(), domain, &roots, now())
        };

        let good = ca.issue("gmail.com").unwrap();
        assert_eq!(check(&good, "gmail.com"), Ok(()));
        assert_eq!(check(&good, "GMAIL.com."), Ok(()));
        assert_eq!(
            check(&good, "example.org"),
            Err(CertError::WrongName {
                domain: "example.org".to_owned()
            })
        );

        let other = TestCa::new("other").unwrap().issue("gmail.com").unwrap();
        assert_eq!(check(&other, "gmail.com"), Err(CertError::UnknownIssuer));
        let ss = self_signed("gmail.com").unwrap();
        assert_eq!(check(&ss, "gmail.com"), Err(CertError::UnknownIssuer));

        let expired = ca.issue_expired("gmail.com").unwrap();
        assert_eq!(
            check(&expired, "gmail.com"),
            Err(CertError::Expired {
                not_after: unix_ymd(2001, 1, 1)
            })
        );
        let future = ca
            .issue_with(
                "gmail.com",
                &LeafOptions {
                    not_before: unix_ymd(2090, 1, 1),
                    ..LeafOptions::default()
                },
            )
            .unwrap();
        assert_eq!(
            check(&future, "gmail.com"),
            Err(CertError::NotValidYet {
                not_before: unix_ymd(2090, 1, 1)
            })
        );

        // Usage: serverAuth only passes (above); serverAuth+clientAuth and no EKU pass;
        // clientAuth only does not.
        let both = LeafOptions {
            client_auth: true,
            ..LeafOptions::default()
        };
        let none = LeafOptions {
            server_auth: false,
            ..LeafOptions::default()
        };
        let client_only = LeafOptions {
            server_auth: false,
            client_auth: true,
            ..LeafOptions::default()
        };
        assert_eq!(
            check(&ca.issue_with("gmail.com", &both).unwrap(), "gmail.com"),
            Ok(())
        );
        assert_eq!(
            check(&ca.issue_with("gmail.com", &none).unwrap(), "gmail.com"),
            Ok(())
        );
        assert_eq!(
            check(
                &ca.issue_with("gmail.com", &client_only).unwrap(),
                "gmail.com"
            ),
            Err(CertError::WrongUsage)
        );

        // Wildcards cover one label, not the apex.
        let wild = ca
            .issue_with(
                "chat.example",
                &LeafOptions {
                    extra_dns_names: vec!["*.chat.example".to_owned()],
                    ..LeafOptions::default()
                },
            )
            .unwrap();
        assert_eq!(check(&wild, "rooms.chat.example"), Ok(()));
        assert_eq!(check(&wild, "chat.example"), Ok(()));
        assert!(matches!(
            check(&wild, "a.b.chat.example"),
            Err(CertError::WrongName { .. })
        ));

        // Internationalised domains are checked by their A-labels.
        let idn = ca.issue("bücher.example").unwrap();
        assert_eq!(idn.dns_names(), ["xn--bcher-kva.example"]);
        assert_eq!(check(&idn, "bücher.example"), Ok(()));
        assert_eq!(check(&idn, "xn--bcher-kva.example"), Ok(()));

        // Malformed input.
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert_eq!(
            verify_peer_certificate(&garbage, "gmail.com", &roots, now()),
            Err(CertError::BadEncoding)
        );
        assert_eq!(
            check(&good, "not a domain"),
            Err(CertError::BadDomain {
                domain: "not a domain".to_owned()
            })
        );
        assert_eq!(
            verify_peer_certificate(&[], "gmail.com", &roots, now()),
            Err(CertError::NoCertificate)
        );
    }

    #[test]
    fn cert_errors_read_well() {
        let expired = CertError::Expired {
            not_after: unix_ymd(2001, 1, 1),
        };
        assert_eq!(
            expired.to_string(),
            "the peer's certificate expired on 2001-01-01T00:00:00Z"
        );
        assert_eq!(
            CertError::WrongName {
                domain: "gmail.com".to_owned()
            }
            .to_string(),
            "the peer's certificate is not valid for gmail.com (no matching dNSName)"
        );
        assert!(CertError::UnknownIssuer
            .to_string()
            .contains("not issued by a trusted certificate authority"));
        assert_eq!(unix_ymd(1970, 1, 1).as_secs(), 0);
        assert_eq!(unix_ymd(2000, 3, 1).as_secs(), 951_868_800);
    }

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "fedrouter-tls-{tag}-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn pem_files_round_trip() {
        let ca = TestCa::new("ca").unwrap();
        let issued = ca.issue("cupdomain.com").unwrap();
        let dir = Scratch::new("roundtrip");
        // A full chain: the leaf then the CA.
        let chain_pem = issued.chain_pem() + &ca.ca_cert_pem();
        let cert_path = dir.write("fullchain.pem", &chain_pem);
        let key_path = dir.write("privkey.pem", &issued.key_pem());

        let loaded = CertifiedDomain::from_pem_files(&cert_path, &key_path).unwrap();
        assert_eq!(loaded.domain(), "cupdomain.com");
        assert_eq!(loaded.chain(), [issued.chain()[0].clone(), ca.ca_der()]);
        assert_eq!(loaded.key().secret_der(), issued.key().secret_der());

        // The loaded certificate serves a verified handshake.
        let server = server_config(resolver(&[&loaded]), ClientAuth::None, &[]);
        let client = client_config(Some(roots(&ca)), true, None, &[]).unwrap();
        connect(client, server, "cupdomain.com").2.unwrap();

        // Debug does not print the key.
        let shown = format!("{loaded:?}");
        assert!(shown.contains("cupdomain.com") && shown.contains("elided"));
    }

    #[test]
    fn pem_file_errors_name_the_file_and_problem() {
        let ca = TestCa::new("ca").unwrap();
        let issued = ca.issue("cupdomain.com").unwrap();
        let other = ca.issue("cupdomain.com").unwrap();
        let dir = Scratch::new("errors");
        let cert = dir.write("cert.pem", &issued.chain_pem());
        let key = dir.write("key.pem", &issued.key_pem());
        let other_key = dir.write("other-key.pem", &other.key_pem());
        let missing = dir.0.join("missing.pem");

        let err = CertifiedDomain::from_pem_files(&missing, &key).unwrap_err();
        assert!(matches!(&err, TlsError::Read { path, .. } if *path == missing));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        // Certificate and key files swapped.
        assert_eq!(
            CertifiedDomain::from_pem_files(&key, &cert).unwrap_err(),
            TlsError::NoCertificate { path: key.clone() }
        );
        let err = CertifiedDomain::from_pem_files(&cert, &cert).unwrap_err();
        assert_eq!(err, TlsError::NoPrivateKey { path: cert.clone() });
        assert!(
            err.to_string()
                .contains("cert.pem holds no PEM private key"),
            "{err}"
        );

        // A key that belongs to another certificate.
        let err = CertifiedDomain::from_pem_files(&cert, &other_key).unwrap_err();
        match &err {
            TlsError::BadKey { origin, reason } => {
                assert!(origin.ends_with("other-key.pem"));
                assert!(reason.contains("does not match"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }

        // Broken PEM.
        let broken = dir.write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        assert!(matches!(
            CertifiedDomain::from_pem_files(&broken, &key),
            Err(TlsError::BadPem { .. })
        ));

        // In-memory assembly checks too.
        assert!(matches!(
            CertifiedDomain::new("x.example", Vec::new(), issued.key().clone_key()),
            Err(TlsError::BadCertificate { .. })
        ));
        assert!(matches!(
            CertifiedDomain::new(
                "x.example",
                issued.chain().to_vec(),
                other.key().clone_key()
            ),
            Err(TlsError::BadKey { .. })
        ));
    }

    #[test]
    fn client_config_needs_roots_to_verify() {
        assert_eq!(
            client_config(None, true, None, &[]).unwrap_err(),
            TlsError::NoTrustRoots
        );
        assert_eq!(
            client_config(Some(Arc::new(RootCertStore::empty())), true, None, &[]).unwrap_err(),
            TlsError::NoTrustRoots
        );
        assert!(client_config(None, false, None, &[]).is_ok());
    }

    #[test]
    fn default_provider_install_is_idempotent() {
        install_default_provider();
        install_default_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn generation_rejects_non_domains() {
        assert!(matches!(self_signed(""), Err(TlsError::Generate { .. })));
        let ca = TestCa::new("ca").unwrap();
        assert_eq!(ca.name(), "ca");
        assert!(ca.ca_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(ca.issue("a b"), Err(TlsError::Generate { .. })));
    }
}
