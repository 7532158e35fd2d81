//! A scripted XMPP client against our C2S state machine, in memory with a simulated clock
//! (quinn-proto's `Pair` pattern, like `pair.rs` for S2S): real rustls on both ends over
//! byte buffers, a client-side SCRAM (RFC 5802 / RFC 7677) computed with the `pbkdf2`,
//! `hmac`, `sha1` and `sha2` crates, and a runtime stand-in that answers credential look-ups
//! from a user table.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use fedrouter::store::scram::{ScramCredentials, ScramHash};
use fedrouter::stream::c2s::{C2sConfig, C2sConnection, Event};
use fedrouter::stream::TlsRole;
use fedrouter::tls::{self, CertifiedDomain, ClientAuth, DomainCertResolver};
use fedrouter::xml::{Frame, Framer, Namespace};
use fedrouter_testkit::TestCa;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub const DOMAIN: &str = "example.com";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// The client and the server connection with what flows between them.
pub struct Harness {
    pub conn: C2sConnection,
    pub cfg: Arc<C2sConfig>,
    pub now: Instant,
    /// Every event the server emitted, in order (also those the harness answered).
    pub events: Vec<Event>,
    /// Everything the server transmitted, as plaintext.
    pub server_sent: Vec<u8>,
    /// Every frame the client received, rendered as text (see [`render`]).
    pub transcript: Vec<String>,
    /// Bare JID → password.
    pub users: HashMap<String, String>,
    /// PBKDF2 rounds of the stored credentials.
    pub iterations: u32,
    /// Answer `CredentialsNeeded` from `users` inside [`Harness::drive`].
    pub auto_credentials: bool,
    /// Size of the pieces the server's plaintext input is fed in (1 = a byte at a time).
    pub chunk: usize,
    server_tls_cfg: Arc<rustls::ServerConfig>,
    client_tls_cfg: Arc<rustls::ClientConfig>,
    server_tls: Option<rustls::ServerConnection>,
    tls_reported: bool,
    client_tls: Option<rustls::ClientConnection>,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    framer: Framer,
    frames: Vec<Frame>,
    creds_cache: HashMap<(String, ScramHash), ScramCredentials>,
}

/// A frame as text: elements as received, headers as `<stream:stream from=.. to=.. id=..>`.
pub fn render(f: &Frame) -> String {
    match f {
        Frame::Header(h) => format!(
            "<stream:stream from={:?} to={:?} id={:?} version={:?}>",
            h.from, h.to, h.id, h.version
        ),
        Frame::Element(e) => e.as_str().to_owned(),
        Frame::Close => "</stream:stream>".to_owned(),
    }
}

impl Harness {
    /// A server for [`DOMAIN`] with the default configuration changed by `tweak`, and a
    /// client that has connected (nothing sent yet).
    pub fn new(tweak: impl FnOnce(&mut C2sConfig)) -> Harness {
        tls::install_default_provider();
        let ca = TestCa::new("c2s test CA").unwrap();
        let cert = ca
            .issue(DOMAIN)
            .unwrap()
            .assemble(CertifiedDomain::new)
            .unwrap();
        let mut resolver = DomainCertResolver::new();
        resolver.add(&cert).unwrap();
        let server_tls_cfg = tls::server_config(Arc::new(resolver), ClientAuth::None, &[]);
        let client_tls_cfg =
            tls::client_config(Some(Arc::new(ca.root_store())), true, None, &[]).unwrap();
        let mut cfg = C2sConfig::new(vec![DOMAIN.to_owned()], [9; 32]);
        tweak(&mut cfg);
        let cfg = Arc::new(cfg);
        let now = Instant::now();
        Harness {
            conn: C2sConnection::new(cfg.clone(), 42, false, now),
            cfg,
            now,
            events: Vec::new(),
            server_sent: Vec::new(),
            transcript: Vec::new(),
            users: HashMap::new(),
            iterations: 64,
            auto_credentials: true,
            chunk: usize::MAX,
            server_tls_cfg,
            client_tls_cfg,
            server_tls: None,
            tls_reported: false,
            client_tls: None,
            to_server: Vec::new(),
            to_client: Vec::new(),
            framer: Framer::default(),
            frames: Vec::new(),
            creds_cache: HashMap::new(),
        }
    }

    pub fn add_user(&mut self, localpart: &str, password: &str) {
        self.users
            .insert(format!("{localpart}@{DOMAIN}"), password.to_owned());
    }

    /// The stored credentials of `jid` for `hash`, as the store would give them.
    pub fn credentials(&mut self, jid: &str, hash: ScramHash) -> Option<ScramCredentials> {
        let password = self.users.get(jid)?.clone();
        let iterations = self.iterations;
        Some(
            self.creds_cache
                .entry((jid.to_owned(), hash))
                .or_insert_with(|| {
                    let salt = Sha256::digest(jid.as_bytes());
                    ScramCredentials::derive(&password, hash, &salt[..16], iterations).unwrap()
                })
                .clone(),
        )
    }

    // ----- the client's side -----

    /// Sends bytes from the client (through TLS once negotiated) and runs both ends.
    pub fn send(&mut self, xml: &str) {
        match &mut self.client_tls {
            Some(t) => {
                // rustls buffers a bounded amount: encrypt as we go.
                let mut rest = xml.as_bytes();
                while !rest.is_empty() {
                    let n = t.writer().write(rest).unwrap();
                    rest = &rest[n..];
                    while t.wants_write() {
                        t.write_tls(&mut self.to_server).unwrap();
                    }
                }
            }
            None => self.to_server.extend_from_slice(xml.as_bytes()),
        }
        self.drive();
    }

    /// Sends a client stream header to `to`.
    pub fn header_to(&mut self, to: &str) {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
        ));
    }

    /// Sends a client stream header to [`DOMAIN`].
    pub fn header(&mut self) {
        self.header_to(DOMAIN);
    }

    /// Frames received since the last call.
    pub fn take(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.frames)
    }

    /// Frames received since the last call, as text.
    pub fn take_xml(&mut self) -> Vec<String> {
        self.take().iter().map(render).collect()
    }

    /// The one element received since the last call (panics otherwise).
    pub fn take_one(&mut self) -> String {
        let got = self.take_xml();
        assert_eq!(got.len(), 1, "expected one element, got {got:?}");
        got.into_iter().next().unwrap()
    }

    /// Opens a stream and returns the features element (after the header).
    pub fn open(&mut self) -> String {
        self.header();
        let got = self.take_xml();
        assert_eq!(got.len(), 2, "header and features expected: {got:?}");
        assert!(got[0].starts_with("<stream:stream from=Some(\"example.com\")"));
        got[1].clone()
    }

    /// `<starttls/>`, `<proceed/>` and the TLS handshake.
    pub fn starttls(&mut self) {
        self.send(&format!("<starttls xmlns='{NS_TLS}'/>"));
        assert_eq!(
            self.take_xml(),
            vec![format!("<proceed xmlns='{NS_TLS}'/>")]
        );
        let t = self.client_tls.as_ref().expect("client TLS started");
        assert!(!t.is_handshaking(), "TLS handshake finished");
        assert!(self.conn.is_tls());
    }

    /// Opens, negotiates TLS, opens again; returns the post-TLS features.
    pub fn open_tls(&mut self) -> String {
        let f = self.open();
        assert!(f.contains("<starttls"), "{f}");
        self.starttls();
        self.open()
    }

    /// Sends `<auth/>` with `initial` (base64-encoded here).
    pub fn send_auth(&mut self, mechanism: &str, initial: &[u8]) {
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{}</auth>",
            B64.encode(initial)
        ));
    }

    /// A full SCRAM exchange; `Err` holds the `<failure/>` (or whatever came instead).
    pub fn scram(&mut self, user: &str, password: &str, hash: ScramHash) -> Result<(), String> {
        self.scram_with_nonce(user, password, hash, "fyko+d2lbbFgONRv9qkxdawL")
            .map(|_| ())
    }

    /// A full SCRAM exchange with a given client nonce; `Ok` holds server-first.
    pub fn scram_with_nonce(
        &mut self,
        user: &str,
        password: &str,
        hash: ScramHash,
        cnonce: &str,
    ) -> Result<String, String> {
        let mut client = ScramClient::new(hash, user, password, cnonce);
        self.send_auth(hash.mechanism(), client.first().as_bytes());
        let challenge = self.take_one();
        let server_first = sasl_data(&challenge, "challenge").ok_or(challenge)?;
        let server_first = String::from_utf8(server_first).unwrap();
        let fin = client.final_message(&server_first);
        self.send(&format!(
            "<response xmlns='{NS_SASL}'>{}</response>",
            B64.encode(fin)
        ));
        let answer = self.take_one();
        let server_final = sasl_data(&answer, "success").ok_or(answer)?;
        assert!(
            client.verify(&String::from_utf8(server_final).unwrap()),
            "server signature"
        );
        Ok(server_first)
    }

    /// SASL PLAIN; `Err` holds the `<failure/>`.
    pub fn plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        self.send_auth("PLAIN", format!("\0{user}\0{password}").as_bytes());
        let answer = self.take_one();
        if answer == format!("<success xmlns='{NS_SASL}'/>") {
            Ok(())
        } else {
            Err(answer)
        }
    }

    /// TLS, SCRAM-SHA-256 as `user`, and the post-SASL stream; returns its features.
    pub fn login(&mut self, user: &str, password: &str) -> String {
        self.open_tls();
        self.scram(user, password, ScramHash::Sha256).unwrap();
        self.open()
    }

    /// Sends a bind request with `resource`.
    pub fn request_bind(&mut self, id: &str, resource: Option<&str>) {
        let inner = resource.map_or(String::new(), |r| format!("<resource>{r}</resource>"));
        self.send(&format!(
            "<iq type='set' id='{id}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>"
        ));
    }

    /// Login and bind `user@example.com/resource`.
    pub fn bound(&mut self, user: &str, password: &str, resource: &str) {
        self.login(user, password);
        self.request_bind("b1", Some(resource));
        let jid = format!("{user}@{DOMAIN}/{resource}");
        self.conn.handle_bind(Ok(&jid), self.now).unwrap();
        self.drive();
        let got = self.take_one();
        assert!(got.contains(&format!("<jid>{jid}</jid>")), "{got}");
    }

    // ----- time and the runtime's side -----

    /// Advances the clock, fires the server's timers and runs both ends.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.conn.handle_timeout(self.now);
        self.drive();
    }

    /// Why the server closed, if it did.
    pub fn closed(&self) -> Option<&fedrouter::stream::CloseReason> {
        self.events.iter().find_map(|e| match e {
            Event::Closed(r) => Some(r),
            _ => None,
        })
    }

    /// Runs both ends until neither has anything to do (bounded).
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            let mut p = false;
            p |= self.client_flush();
            p |= self.server_receive();
            p |= self.server_emit();
            p |= self.server_events();
            p |= self.server_emit();
            p |= self.client_receive();
            if !p {
                return;
            }
        }
        panic!("c2s harness did not settle");
    }

    fn client_flush(&mut self) -> bool {
        let Some(t) = &mut self.client_tls else {
            return false;
        };
        let mut moved = false;
        while t.wants_write() {
            t.write_tls(&mut self.to_server).unwrap();
            moved = true;
        }
        moved
    }

    fn feed_server(&mut self, plain: &[u8]) {
        for piece in plain.chunks(self.chunk.max(1)) {
            self.conn.handle_input(piece, self.now);
        }
    }

    fn server_receive(&mut self) -> bool {
        if self.to_server.is_empty() {
            return false;
        }
        let wire = std::mem::take(&mut self.to_server);
        match &mut self.server_tls {
            Some(t) => {
                // Read plaintext after each record batch: rustls holds only a little.
                let mut rd = &wire[..];
                let mut plain = Vec::new();
                while !rd.is_empty() {
                    t.read_tls(&mut rd).unwrap();
                    if let Err(e) = t.process_new_packets() {
                        self.conn.handle_tls_failed(&e.to_string());
                        return true;
                    }
                    let _ = t.reader().read_to_end(&mut plain);
                }
                self.feed_server(&plain);
            }
            None => self.feed_server(&wire),
        }
        true
    }

    fn server_emit(&mut self) -> bool {
        let mut plain = Vec::new();
        self.conn.poll_transmit(&mut plain);
        self.server_sent.extend_from_slice(&plain);
        let before = self.to_client.len();
        match &mut self.server_tls {
            Some(t) => {
                if !plain.is_empty() {
                    t.writer().write_all(&plain).unwrap();
                }
                while t.wants_write() {
                    t.write_tls(&mut self.to_client).unwrap();
                }
            }
            None => self.to_client.extend_from_slice(&plain),
        }
        self.to_client.len() > before
    }

    fn server_events(&mut self) -> bool {
        let mut progress = false;
        if let Some(t) = &self.server_tls {
            if !self.tls_reported && !t.is_handshaking() {
                self.tls_reported = true;
                self.conn.handle_tls_established(Vec::new(), self.now);
                progress = true;
            }
        }
        while let Some(ev) = self.conn.poll_event() {
            progress = true;
            match &ev {
                Event::StartTls(role) => {
                    assert_eq!(*role, TlsRole::Server);
                    self.server_tls =
                        Some(rustls::ServerConnection::new(self.server_tls_cfg.clone()).unwrap());
                }
                Event::CredentialsNeeded { jid, mechanism } if self.auto_credentials => {
                    let hash = mechanism.hash().unwrap_or(ScramHash::Sha256);
                    let creds = self.credentials(jid, hash);
                    self.events.push(ev);
                    self.conn.handle_credentials(creds, self.now).unwrap();
                    continue;
                }
                _ => {}
            }
            self.events.push(ev);
        }
        progress
    }

    fn client_receive(&mut self) -> bool {
        if self.to_client.is_empty() {
            return false;
        }
        let wire = std::mem::take(&mut self.to_client);
        match &mut self.client_tls {
            Some(t) => {
                let mut rd = &wire[..];
                let mut plain = Vec::new();
                while !rd.is_empty() {
                    t.read_tls(&mut rd).unwrap();
                    t.process_new_packets().unwrap();
                    let _ = t.reader().read_to_end(&mut plain);
                }
                self.framer.feed(&plain);
            }
            None => self.framer.feed(&wire),
        }
        loop {
            let frame = match self.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => panic!(
                    "the server sent malformed XML ({e}): {}",
                    String::from_utf8_lossy(&self.server_sent)
                ),
            };
            self.transcript.push(render(&frame));
            let mut stop = false;
            if let Frame::Element(el) = &frame {
                if el.is("proceed", &Namespace::Tls) {
                    self.framer.discard_buffered();
                    self.framer.reset();
                    let name = tls::server_name(DOMAIN).unwrap();
                    self.client_tls = Some(
                        rustls::ClientConnection::new(self.client_tls_cfg.clone(), name).unwrap(),
                    );
                    stop = true;
                } else if el.is("success", &Namespace::Sasl) {
                    self.framer.reset();
                }
            }
            self.frames.push(frame);
            if stop {
                break;
            }
        }
        true
    }
}

/// The base64 payload of `<name xmlns=sasl>...</name>`, decoded; `None` if `xml` is not
/// that element.
pub fn sasl_data(xml: &str, name: &str) -> Option<Vec<u8>> {
    let open = format!("<{name} xmlns='{NS_SASL}'>");
    let rest = xml.strip_prefix(&open)?;
    let body = rest.strip_suffix(&format!("</{name}>"))?;
    Some(B64.decode(body).unwrap())
}

/// The client side of SCRAM (RFC 5802 §3, §5), `n,,` (no channel binding).
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    cnonce: String,
    bare: String,
    server_signature: Vec<u8>,
}

impl ScramClient {
    pub fn new(hash: ScramHash, user: &str, password: &str, cnonce: &str) -> ScramClient {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            password: password.to_owned(),
            cnonce: cnonce.to_owned(),
            bare: format!("n={name},r={cnonce}"),
            server_signature: Vec::new(),
        }
    }

    /// client-first-message.
    pub fn first(&self) -> String {
        format!("n,,{}", self.bare)
    }

    /// client-final-message for `server_first` (`r=..,s=..,i=..`).
    pub fn final_message(&mut self, server_first: &str) -> String {
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {server_first}"))
                .to_owned()
        };
        let nonce = attr("r=");
        assert!(nonce.starts_with(&self.cnonce), "server nonce extends ours");
        let salt = B64.decode(attr("s=")).unwrap();
        let iterations: u32 = attr("i=").parse().unwrap();
        let salted = hi(self.hash, self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(self.hash, &salted, b"Client Key");
        let stored_key = digest(self.hash, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.bare);
        let signature = hmac(self.hash, &stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(self.hash, &salted, b"Server Key");
        self.server_signature = hmac(self.hash, &server_key, auth.as_bytes());
        format!("{without_proof},p={}", B64.encode(proof))
    }

    /// Whether server-final (`v=..`) proves the server knows our credentials.
    pub fn verify(&self, server_final: &str) -> bool {
        server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .is_some_and(|v| v == self.server_signature)
    }
}

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha256 => {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

fn hi(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut out = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
            out.to_vec()
        }
        ScramHash::Sha256 => {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out.to_vec()
        }
    }
}
