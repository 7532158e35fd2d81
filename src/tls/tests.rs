//! Unit tests of the TLS adapter: real handshakes between in-memory endpoints, the peer
//! certificate check, PEM files.

use std::io::{Read, Write};

use fedrouter_testkit::{unix_ymd, CaError, Leaf, LeafOptions, TestCa};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
};

use super::*;

/// A [`TestCa`] leaf as the adapter's [`CertifiedDomain`] (through [`CertifiedDomain::new`]).
fn certified(leaf: Result<Leaf, CaError>) -> CertifiedDomain {
    leaf.expect("a test leaf")
        .assemble(CertifiedDomain::new)
        .expect("a usable test leaf")
}

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
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Failed> {
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
    let a = certified(ca.issue("a.example"));
    let b = certified(ca.issue("b.example"));
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
    let a = certified(ca.issue("a.example"));
    let b = certified(ca.issue("b.example"));
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
    let a = certified(ca.issue("a.example"));
    let wild = certified(ca.issue_with(
        "muc.example",
        &LeafOptions {
            extra_dns_names: vec!["*.muc.example".to_owned()],
            ..LeafOptions::default()
        },
    ));
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
    let local = certified(ca.issue("cupdomain.com"));
    // The peer's certificate has serverAuth only, as public CAs now issue them.
    let peer = certified(ca.issue("gmail.com"));
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
    let local = certified(ca.issue("cupdomain.com"));
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
    let local = certified(ca.issue("cupdomain.com"));
    let peer = certified(ca.issue("gmail.com"));
    let server = server_config(resolver(&[&local]), ClientAuth::None, &[]);
    let client = client_config(Some(roots(&ca)), true, Some(&peer), &[]).unwrap();
    let (_, s, result) = connect(client, server, "cupdomain.com");
    result.unwrap();
    assert!(s.peer_certificates().is_none());
}

#[test]
fn verifying_client_rejects_wrong_name_and_unknown_ca() {
    let ca = TestCa::new("ca").unwrap();
    let local = certified(ca.issue("a.example"));
    let server = server_config(resolver(&[&local]), ClientAuth::None, &[]);
    let client = client_config(Some(roots(&ca)), true, None, &[]).unwrap();

    // The server only has a.example's certificate; we wanted evil.example.
    let (_, _, result) = connect(client.clone(), server, "evil.example");
    let err = result.unwrap_err();
    assert!(is_name_error(&err), "{err:?}");

    // A server certificate from a CA we do not trust.
    let other = TestCa::new("other ca").unwrap();
    let foreign = certified(other.issue("a.example"));
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
    let local = certified(ca.issue("a.example"));
    let client = client_config(None, false, None, &[]).unwrap();

    let server = server_config(resolver(&[&local]), ClientAuth::None, &[]);
    let (c, _, result) = connect(client.clone(), server, "evil.example");
    result.unwrap();
    assert_eq!(c.peer_certificates().unwrap()[0], local.chain()[0]);

    let expired = certified(ca.issue_expired("a.example"));
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
    let local = certified(ca.issue("a.example"));
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

    let good = certified(ca.issue("gmail.com"));
    assert_eq!(check(&good, "gmail.com"), Ok(()));
    assert_eq!(check(&good, "GMAIL.com."), Ok(()));
    assert_eq!(
        check(&good, "example.org"),
        Err(CertError::WrongName {
            domain: "example.org".to_owned()
        })
    );

    let other = certified(TestCa::new("other").unwrap().issue("gmail.com"));
    assert_eq!(check(&other, "gmail.com"), Err(CertError::UnknownIssuer));
    let ss = self_signed("gmail.com").unwrap();
    assert_eq!(check(&ss, "gmail.com"), Err(CertError::UnknownIssuer));

    let expired = certified(ca.issue_expired("gmail.com"));
    assert_eq!(
        check(&expired, "gmail.com"),
        Err(CertError::Expired {
            not_after: unix_ymd(2001, 1, 1)
        })
    );
    let future = certified(ca.issue_with(
        "gmail.com",
        &LeafOptions {
            not_before: unix_ymd(2090, 1, 1),
            ..LeafOptions::default()
        },
    ));
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
        check(&certified(ca.issue_with("gmail.com", &both)), "gmail.com"),
        Ok(())
    );
    assert_eq!(
        check(&certified(ca.issue_with("gmail.com", &none)), "gmail.com"),
        Ok(())
    );
    assert_eq!(
        check(
            &certified(ca.issue_with("gmail.com", &client_only)),
            "gmail.com"
        ),
        Err(CertError::WrongUsage)
    );

    // Wildcards cover one label, not the apex.
    let wild = certified(ca.issue_with(
        "chat.example",
        &LeafOptions {
            extra_dns_names: vec!["*.chat.example".to_owned()],
            ..LeafOptions::default()
        },
    ));
    assert_eq!(check(&wild, "rooms.chat.example"), Ok(()));
    assert_eq!(check(&wild, "chat.example"), Ok(()));
    assert!(matches!(
        check(&wild, "a.b.chat.example"),
        Err(CertError::WrongName { .. })
    ));

    // Internationalised domains are checked by their A-labels.
    let idn = certified(ca.issue("bücher.example"));
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
    let issued = certified(ca.issue("cupdomain.com"));
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
    let issued = certified(ca.issue("cupdomain.com"));
    let other = certified(ca.issue("cupdomain.com"));
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
    assert!(matches!(self_signed("a b"), Err(TlsError::Generate { .. })));
}
