//! The connecting side: [`client_config`] for outbound streams, with the standard webpki
//! verifier or, by policy, [`NoServerVerification`].

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[cfg(doc)]
use super::server_name;
use super::{provider, CertifiedDomain, TlsError};

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
            .with_client_auth_cert(cert.chain().to_vec(), cert.key().clone_key())
            .map_err(|e| TlsError::BadKey {
                origin: format!("private key for {}", cert.domain()),
                reason: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
