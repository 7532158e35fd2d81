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
//!
//! # Files
//!
//! - `certified.rs`: [`CertifiedDomain`] (a local domain's chain and key, from PEM files or
//!   DER parts) and [`self_signed`].
//! - `server.rs`: the listener side: [`DomainCertResolver`] (SNI), [`ClientAuth`],
//!   [`AcceptAnyClientCert`], [`server_config`].
//! - `client.rs`: the connecting side: [`NoServerVerification`], [`client_config`].
//! - `verify.rs`: the peer certificate check after the stream header:
//!   [`verify_peer_certificate`], [`RootsVerifier`].
//! - `name.rs`: domains as TLS server names ([`server_name`]).
//!
//! Test certificates come from `fedrouter_testkit::TestCa` (not linked into the server).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

mod certified;
mod client;
mod name;
mod server;
mod verify;

#[cfg(test)]
mod tests;

pub use certified::{self_signed, CertifiedDomain};
pub use client::{client_config, NoServerVerification};
pub use name::server_name;
pub use server::{server_config, AcceptAnyClientCert, ClientAuth, DomainCertResolver};
pub use verify::{verify_peer_certificate, CertError, RootsVerifier};

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
