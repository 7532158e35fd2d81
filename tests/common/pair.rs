//! Two S2S endpoints in memory with a simulated clock (quinn-proto's `Pair` pattern):
//! our outbound against our inbound, real rustls handshakes over byte buffers, no sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter::dialback::{DialbackResult, DialbackSecret};
use fedrouter::stream::{
    Event, FederationPolicy, PeerCertVerifier, PeerPolicy, S2sConfig, S2sConnection, Timeouts,
    TlsRole,
};
use fedrouter::tls::{self, CertError, CertifiedDomain, ClientAuth, DomainCertResolver};
use fedrouter::xml::Limits;
use fedrouter_testkit::TestCa;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::RootCertStore;

/// `ca`'s leaf certificate for `domain`, as the [`CertifiedDomain`] the TLS adapter takes.
pub fn certified(ca: &TestCa, domain: &str) -> CertifiedDomain {
    ca.issue(domain)
        .expect("a test leaf")
        .assemble(CertifiedDomain::new)
        .expect("a usable test leaf")
}

/// Verifies with the test CA's roots at a fixed time.
#[derive(Debug)]
pub struct TestVerifier {
    pub roots: RootCertStore,
}

impl PeerCertVerifier for TestVerifier {
    fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        domain: &str,
        at: UnixTime,
    ) -> Result<(), CertError> {
        tls::verify_peer_certificate(chain, domain, &self.roots, at)
    }
}

/// One server's identity and configuration.
pub struct Server {
    pub domain: String,
    pub cfg: Arc<S2sConfig>,
    pub cert: Option<CertifiedDomain>,
    pub roots: Arc<RootCertStore>,
}

impl Server {
    pub fn new(domain: &str, policy: PeerPolicy, ca: &TestCa, with_cert: bool) -> Server {
        Self::with_policy(
            domain,
            FederationPolicy {
                default: policy,
                ..Default::default()
            },
            ca,
            with_cert,
        )
    }

    pub fn with_policy(
        domain: &str,
        policy: FederationPolicy,
        ca: &TestCa,
        with_cert: bool,
    ) -> Server {
        Self::hosting(domain, &[], policy, ca, with_cert)
    }

    /// [`Server::with_policy`] for a server that also hosts `others` (a Google-Apps-style
    /// host: several domains behind one target); its certificate covers `domain` only.
    pub fn hosting(
        domain: &str,
        others: &[&str],
        policy: FederationPolicy,
        ca: &TestCa,
        with_cert: bool,
    ) -> Server {
        tls::install_default_provider();
        let mut local_domains = vec![domain.to_owned()];
        local_domains.extend(others.iter().map(|d| d.to_string()));
        let roots = Arc::new(ca.root_store());
        let cfg = S2sConfig {
            local_domains,
            certificate_domains: if with_cert {
                vec![domain.to_owned()]
            } else {
                vec![]
            },
            policy,
            dialback_secret: DialbackSecret::new(format!("secret of {domain}")),
            stream_id_key: [7; 32],
            cert_verifier: Some(Arc::new(TestVerifier {
                roots: (*roots).clone(),
            })),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            stream_management: None,
        };
        Server {
            domain: domain.to_owned(),
            cfg: Arc::new(cfg),
            cert: with_cert.then(|| certified(ca, domain)),
            roots,
        }
    }

    /// The XEP-0185 verdict this server, as authoritative, gives on a key.
    pub fn authoritative_verdict(
        &self,
        receiving: &str,
        originating: &str,
        stream_id: &str,
        key: &str,
    ) -> DialbackResult {
        if !self.cfg.hosts(originating) {
            return DialbackResult::Invalid;
        }
        if self
            .cfg
            .dialback_secret
            .verify(receiving, originating, stream_id, key)
        {
            DialbackResult::Valid
        } else {
            DialbackResult::Invalid
        }
    }
}

/// One end: the state machine plus, once STARTTLS happened, its rustls connection.
pub struct Side {
    pub conn: S2sConnection,
    pub tls: Option<rustls::Connection>,
    tls_reported: bool,
    pub events: Vec<Event>,
    /// Plaintext this side sent, for assertions.
    pub sent: Vec<u8>,
    client_cert: Option<CertifiedDomain>,
    server_cert: Option<CertifiedDomain>,
    roots: Arc<RootCertStore>,
    verify_server: bool,
}

impl Side {
    fn new(conn: S2sConnection, s: &Server, verify_server: bool) -> Side {
        Side {
            conn,
            tls: None,
            tls_reported: false,
            events: Vec::new(),
            sent: Vec::new(),
            client_cert: s.cert.clone(),
            server_cert: s.cert.clone(),
            roots: s.roots.clone(),
            verify_server,
        }
    }

    /// Moves what this side has to send onto `wire`. True if anything moved.
    fn emit(&mut self, wire: &mut Vec<u8>) -> bool {
        let mut plain = Vec::new();
        self.conn.poll_transmit(&mut plain);
        self.sent.extend_from_slice(&plain);
        let before = wire.len();
        match &mut self.tls {
            Some(t) => {
                if !plain.is_empty() {
                    t.writer().write_all(&plain).unwrap();
                }
                while t.wants_write() {
                    t.write_tls(wire).unwrap();
                }
            }
            None => wire.extend_from_slice(&plain),
        }
        wire.len() > before
    }

    /// Consumes `wire` (bytes from the peer). True if anything was read.
    fn receive(&mut self, wire: &mut Vec<u8>, now: Instant) -> bool {
        if wire.is_empty() {
            return false;
        }
        match &mut self.tls {
            Some(t) => {
                let mut rd = &wire[..];
                while !rd.is_empty() {
                    t.read_tls(&mut rd).unwrap();
                    if let Err(e) = t.process_new_packets() {
                        self.conn.handle_tls_failed(&e.to_string());
                        wire.clear();
                        return true;
                    }
                }
                let mut plain = Vec::new();
                let _ = t.reader().read_to_end(&mut plain);
                if !plain.is_empty() {
                    self.conn.handle_input(&plain, now);
                }
            }
            None => self.conn.handle_input(wire, now),
        }
        wire.clear();
        true
    }

    /// Acts on StartTls, reports a finished handshake, collects other events.
    fn handle_events(&mut self, now: Instant) -> bool {
        let mut progress = false;
        if let Some(t) = &self.tls {
            if !self.tls_reported && !t.is_handshaking() {
                self.tls_reported = true;
                let chain: Vec<CertificateDer<'static>> = t
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                    .unwrap_or_default();
                self.conn
                    .handle_tls_established(chain, now, rustls::pki_types::UnixTime::now());
                progress = true;
            }
        }
        while let Some(ev) = self.conn.poll_event() {
            progress = true;
            if let Event::StartTls(role) = &ev {
                self.tls = Some(match role {
                    TlsRole::Client { sni } => {
                        let cfg = tls::client_config(
                            Some(self.roots.clone()),
                            self.verify_server,
                            self.client_cert.as_ref(),
                            &[],
                        )
                        .unwrap();
                        rustls::Connection::Client(
                            rustls::ClientConnection::new(cfg, tls::server_name(sni).unwrap())
                                .unwrap(),
                        )
                    }
                    TlsRole::Server => {
                        let mut r = DomainCertResolver::new();
                        r.add(
                            self.server_cert
                                .as_ref()
                                .expect("server offered TLS without a cert"),
                        )
                        .unwrap();
                        let cfg = tls::server_config(Arc::new(r), ClientAuth::Request, &[]);
                        rustls::Connection::Server(rustls::ServerConnection::new(cfg).unwrap())
                    }
                });
            }
            self.events.push(ev);
        }
        progress
    }
}

/// Our outbound stream (`a`, from server `a_srv`) against our inbound (`b`).
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub a_srv: Server,
    pub b_srv: Server,
    pub now: Instant,
    to_b: Vec<u8>,
    to_a: Vec<u8>,
    /// Answer b's VerifyNeeded with a's authoritative verdict automatically.
    pub auto_verify: bool,
}

impl Pair {
    pub fn new(a_srv: Server, b_srv: Server) -> Pair {
        let now = Instant::now();
        let verify_a = a_srv
            .cfg
            .policy
            .for_domain(&b_srv.domain)
            .verify_certificates;
        let a =
            S2sConnection::outbound(a_srv.cfg.clone(), &a_srv.domain, &b_srv.domain, false, now);
        let b = S2sConnection::inbound(b_srv.cfg.clone(), 1, None, now);
        Pair {
            a: Side::new(a, &a_srv, verify_a),
            b: Side::new(b, &b_srv, true),
            a_srv,
            b_srv,
            now,
            to_b: Vec::new(),
            to_a: Vec::new(),
            auto_verify: true,
        }
    }

    /// [`Pair::new`] with a verify-only outbound stream (XEP-0220 §2.1.3) as `a`:
    /// queue its `db:verify`s with `send_db_verify`, then [`Pair::drive`].
    pub fn verify_only(a_srv: Server, b_srv: Server) -> Pair {
        let mut p = Pair::new(a_srv, b_srv);
        p.a.conn = S2sConnection::verify_only(
            p.a_srv.cfg.clone(),
            &p.a_srv.domain,
            &p.b_srv.domain,
            false,
            p.now,
        );
        p
    }

    /// Runs both ends until neither has anything to do (bounded).
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            let now = self.now;
            let mut p = false;
            p |= self.a.emit(&mut self.to_b);
            p |= self.b.receive(&mut self.to_b, now);
            p |= self.b.emit(&mut self.to_a);
            p |= self.b.handle_events(now);
            p |= self.a.receive(&mut self.to_a, now);
            p |= self.a.emit(&mut self.to_b);
            p |= self.a.handle_events(now);
            if self.auto_verify {
                p |= self.answer_verifications();
            }
            if !p {
                return;
            }
        }
        panic!("pair did not settle");
    }

    fn answer_verifications(&mut self) -> bool {
        let mut progress = false;
        let pending: Vec<(String, String, String, String)> = self
            .b
            .events
            .iter()
            .filter_map(|e| match e {
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => Some((
                    local.clone(),
                    remote.clone(),
                    stream_id.clone(),
                    key.clone(),
                )),
                _ => None,
            })
            .collect();
        self.b
            .events
            .retain(|e| !matches!(e, Event::VerifyNeeded { .. }));
        for (local, remote, id, key) in pending {
            let verdict = self.a_srv.authoritative_verdict(&local, &remote, &id, &key);
            self.b
                .conn
                .handle_dialback_verdict(&local, &remote, verdict, self.now);
            progress = true;
        }
        progress
    }

    /// Advances the simulated clock and fires both ends' timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.conn.handle_timeout(self.now);
        self.b.conn.handle_timeout(self.now);
        self.drive();
    }

    /// Injects raw bytes as if `a` had sent them to `b` (plaintext only).
    pub fn inject_to_b(&mut self, bytes: &[u8]) {
        assert!(self.b.tls.is_none());
        self.to_b.extend_from_slice(bytes);
        self.drive();
    }
}

/// One connection driven by hand with raw bytes and a simulated clock, recording every
/// byte it transmitted and every event it emitted: for tests that play the peer
/// themselves or replay captured traffic.
pub struct Wire {
    pub conn: S2sConnection,
    pub now: Instant,
    /// Everything the connection transmitted so far (plaintext).
    pub sent: Vec<u8>,
    /// Every event so far, in order.
    pub events: Vec<Event>,
}

impl Wire {
    /// A fresh inbound connection (plain TCP).
    pub fn inbound(cfg: Arc<S2sConfig>) -> Wire {
        let now = Instant::now();
        Self::wrap(S2sConnection::inbound(cfg, 1, None, now), now)
    }

    /// A fresh outbound connection from `local` to `remote` (plain TCP); its stream header
    /// is already in `sent`.
    pub fn outbound(cfg: Arc<S2sConfig>, local: &str, remote: &str) -> Wire {
        let now = Instant::now();
        Self::wrap(S2sConnection::outbound(cfg, local, remote, false, now), now)
    }

    /// A fresh verify-only outbound connection (XEP-0220 §2.1.3) from `local` to
    /// `remote` (plain TCP); its stream header is already in `sent`.
    pub fn verify_only(cfg: Arc<S2sConfig>, local: &str, remote: &str) -> Wire {
        let now = Instant::now();
        Self::wrap(
            S2sConnection::verify_only(cfg, local, remote, false, now),
            now,
        )
    }

    fn wrap(conn: S2sConnection, now: Instant) -> Wire {
        let mut w = Wire {
            conn,
            now,
            sent: Vec::new(),
            events: Vec::new(),
        };
        w.pump();
        w
    }

    /// Collects what the connection has to send and its events; returns the new bytes.
    pub fn pump(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.conn.poll_transmit(&mut out);
        self.sent.extend_from_slice(&out);
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
        }
        out
    }

    /// Feeds bytes from the peer; returns what the connection sent in response.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.conn.handle_input(bytes, self.now);
        self.pump()
    }

    /// Advances the clock by `d` and fires the timers; returns what was sent.
    pub fn advance(&mut self, d: Duration) -> Vec<u8> {
        self.now += d;
        self.conn.handle_timeout(self.now);
        self.pump()
    }

    /// Answers a `VerifyNeeded`; returns what was sent.
    pub fn verdict(&mut self, local: &str, remote: &str, result: DialbackResult) -> Vec<u8> {
        self.conn
            .handle_dialback_verdict(local, remote, result, self.now);
        self.pump()
    }

    /// Reports a completed TLS handshake (no peer certificate); returns what was sent.
    pub fn tls_established(&mut self) -> Vec<u8> {
        self.conn
            .handle_tls_established(Vec::new(), self.now, UnixTime::now());
        self.pump()
    }

    /// The `(local, remote, stream_id, key)` of every `VerifyNeeded` since event `from`.
    pub fn verify_needed_since(&self, from: usize) -> Vec<(String, String, String, String)> {
        self.events[from..]
            .iter()
            .filter_map(|e| match e {
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => Some((
                    local.clone(),
                    remote.clone(),
                    stream_id.clone(),
                    key.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The bytes of every `Event::Stanza`, in order.
    pub fn stanzas(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Stanza { element, .. } => Some(element.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    /// Why the stream ended, if it did.
    pub fn closed(&self) -> Option<&fedrouter::stream::CloseReason> {
        self.events.iter().find_map(|e| match e {
            Event::Closed(r) => Some(r),
            _ => None,
        })
    }
}

/// Parses bytes a connection sent, one stream document per `<?xml ` (a restart after
/// STARTTLS or SASL starts a new one), into frames. Panics on anything a peer could not
/// parse: what we send must be well-formed.
pub fn sent_documents(bytes: &[u8]) -> Vec<Vec<fedrouter::xml::Frame>> {
    let mut starts: Vec<usize> = memchr::memmem::find_iter(bytes, b"<?xml ").collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    starts.push(bytes.len());
    let mut docs = Vec::new();
    for w in starts.windows(2) {
        let mut f = fedrouter::xml::Framer::default();
        f.feed(&bytes[w[0]..w[1]]);
        let mut frames = Vec::new();
        while let Some(fr) = f.next_frame().unwrap_or_else(|e| {
            panic!(
                "we sent malformed XML ({e}): {:?}",
                String::from_utf8_lossy(bytes)
            )
        }) {
            frames.push(fr);
        }
        docs.push(frames);
    }
    docs
}
