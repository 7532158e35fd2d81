//! The peer certificate check after the stream header (RFC 6120 §13.7.2.1, XEP-0178 §3):
//! [`verify_peer_certificate`] and the [`RootsVerifier`] the runtime hands the core.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use rustls::RootCertStore;

use super::{provider, server_name};

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
