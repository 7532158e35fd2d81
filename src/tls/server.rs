//! The listener side: the certificate chosen by SNI among the local domains
//! ([`DomainCertResolver`]), whether a client certificate is requested ([`ClientAuth`],
//! [`AcceptAnyClientCert`]) and the [`server_config`] built from them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use super::name::ascii_domain;
use super::{provider, CertifiedDomain, TlsError};
#[cfg(doc)]
use super::{verify_peer_certificate, ALPN_XMPP_SERVER};

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
