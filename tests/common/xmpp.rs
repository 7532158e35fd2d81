//! A small BLOCKING XMPP client for end-to-end tests against `fedrouter serve`'s C2S
//! listener over a real `std::net::TcpStream` on loopback: the client's side of RFC 6120
//! stream negotiation (STARTTLS §5 with rustls, SASL §6 with SCRAM-SHA-256 (RFC 7677),
//! SCRAM-SHA-1 (RFC 5802) or PLAIN (RFC 4616), resource binding §7, the legacy session),
//! then stanzas: rosters (RFC 6121 §2), presence and messages.
//!
//! Incoming bytes go through `fedrouter::xml::Framer`; every top-level element is kept as
//! its XML text. [`Client::recv_until`] returns the first element (oldest first, buffered
//! ones included) that a predicate accepts and keeps the others for later calls, so tests
//! can wait for what they care about in any order. Every wait is bounded (default
//! [`TIMEOUT`]); a timeout panics with what was received and not consumed, and with the
//! end of the transcript (both directions).
//!
//! The TLS trust is exactly one certificate file: the self-signed certificate the server
//! generated into `<data_dir>/certs/<domain>.crt` (see `fedrouter::config::CERTS_DIR`).
//!
//! The module needs the SCRAM client of `c2s_client.rs` as a sibling module
//! (`super::c2s_client`): declare both in the test crate, e.g.
//!
//! ```ignore
//! #[path = "common/c2s_client.rs"]
//! mod c2s_client;
//! #[path = "common/xmpp.rs"]
//! mod xmpp;
//! ```
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use fedrouter::store::scram::ScramHash;
use fedrouter::xml::tree::Node;
use fedrouter::xml::{escape_attr, escape_text, ns, Frame, Framer, Namespace};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use super::c2s_client::ScramClient;

/// Default bound of every wait (a reply, a push, a TLS handshake).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `jabber:iq:roster` (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// Resource binding (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// The legacy session (RFC 3921 §3).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0199 ping.
pub const NS_PING: &str = "urn:xmpp:ping";

/// How many transcript lines a panic message shows.
const TRANSCRIPT_TAIL: usize = 40;

/// Where a client connects: the C2S address, the domain it asks for in the stream header
/// (and as TLS SNI), and the certificate file it trusts as its only root.
#[derive(Debug, Clone)]
pub struct Target {
    /// The C2S listener (`listen.c2s`).
    pub addr: SocketAddr,
    /// The hosted domain (`to` of the stream header; SNI; the certificate's name).
    pub domain: String,
    /// PEM file of the certificate to trust: `<data_dir>/certs/<domain>.crt`.
    pub cert: PathBuf,
}

impl Target {
    /// The target for `domain` at `addr` of a server whose `data_dir` is `data_dir`
    /// (its generated self-signed certificate is trusted).
    pub fn new(addr: SocketAddr, domain: &str, data_dir: &Path) -> Target {
        Target {
            addr,
            domain: domain.to_owned(),
            cert: data_dir
                .join(fedrouter::config::CERTS_DIR)
                .join(format!("{domain}.crt")),
        }
    }
}

/// A SASL mechanism the client can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    /// `SCRAM-SHA-256` (RFC 7677).
    ScramSha256,
    /// `SCRAM-SHA-1` (RFC 5802).
    ScramSha1,
    /// `PLAIN` (RFC 4616).
    Plain,
}

impl Mech {
    /// The registered mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mech::ScramSha256 => "SCRAM-SHA-256",
            Mech::ScramSha1 => "SCRAM-SHA-1",
            Mech::Plain => "PLAIN",
        }
    }
}

/// One client connection.
pub struct Client {
    /// A label for messages (`"alice"`); set to the JID's localpart by the login helpers.
    pub name: String,
    /// The domain the stream is for.
    pub domain: String,
    /// The full JID once bound.
    pub jid: Option<String>,
    /// Bound of every wait that takes no explicit timeout.
    pub timeout: Duration,
    /// The `ver` of the last roster result or push received (RFC 6121 §2.6).
    pub roster_ver: Option<String>,
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    framer: Framer,
    /// Received elements not consumed yet, oldest first.
    inbox: VecDeque<String>,
    /// Both directions, `C: ` sent / `S: ` received, in order.
    transcript: Vec<String>,
    /// The server closed its stream or the TCP connection.
    eof: bool,
    next_id: u64,
}

impl Client {
    /// Opens a TCP connection to `addr` (nothing sent yet). Panics if it cannot connect
    /// within [`TIMEOUT`].
    pub fn connect(addr: SocketAddr, domain: &str) -> Client {
        let sock = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr} (C2S for {domain}): {e}"));
        Client::on(sock, addr, domain)
    }

    /// [`Client::connect`] from source address `source` (a loopback address of the
    /// test's own, so that the server sees a distinct client address).
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr, domain: &str) -> Client {
        Client::on(connect_from(addr, source), addr, domain)
    }

    fn on(sock: TcpStream, addr: SocketAddr, domain: &str) -> Client {
        sock.set_nodelay(true).expect("TCP_NODELAY");
        sock.set_write_timeout(Some(TIMEOUT))
            .expect("write timeout");
        Client {
            name: format!("client@{addr}"),
            domain: domain.to_owned(),
            jid: None,
            timeout: TIMEOUT,
            roster_ver: None,
            sock,
            tls: None,
            framer: Framer::default(),
            inbox: VecDeque::new(),
            transcript: Vec::new(),
            eof: false,
            next_id: 1,
        }
    }

    /// Connects, STARTTLS, SCRAM-SHA-256 as `user` (a localpart), binds `resource` (a
    /// server-generated one when `None`). Panics on any failure.
    pub fn login(t: &Target, user: &str, password: &str, resource: Option<&str>) -> Client {
        Client::login_with(t, Mech::ScramSha256, user, password, resource)
    }

    /// [`Client::login`] with `mech`.
    pub fn login_with(
        t: &Target,
        mech: Mech,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> Client {
        Client::login_on(
            Client::connect(t.addr, &t.domain),
            t,
            mech,
            user,
            password,
            resource,
        )
    }

    /// [`Client::login_with`] over the connection `c` (opened, nothing sent yet).
    pub fn login_on(
        mut c: Client,
        t: &Target,
        mech: Mech,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> Client {
        c.name = user.to_owned();
        let features = c.open();
        assert!(
            features.contains("<starttls"),
            "{}: no STARTTLS offered: {features}",
            c.name
        );
        c.starttls(&t.cert);
        if let Err(f) = c.auth(mech, user, password) {
            c.fail(&format!("{} login as {user} failed: {f}", mech.name()));
        }
        let features = c.open();
        assert!(
            features.contains(NS_BIND),
            "{}: no bind feature after SASL: {features}",
            c.name
        );
        c.bind(resource);
        c
    }

    /// Connects, STARTTLS and tries `mech` as `user`, expecting a SASL failure: returns
    /// the client (to try again) and the `<failure/>` element. Panics on success.
    pub fn login_failure(t: &Target, mech: Mech, user: &str, password: &str) -> (Client, String) {
        Client::login_failure_on(Client::connect(t.addr, &t.domain), t, mech, user, password)
    }

    /// [`Client::login_failure`] over the connection `c` (opened, nothing sent yet).
    pub fn login_failure_on(
        mut c: Client,
        t: &Target,
        mech: Mech,
        user: &str,
        password: &str,
    ) -> (Client, String) {
        c.name = format!("{user} (expecting failure)");
        c.open();
        c.starttls(&t.cert);
        match c.auth(mech, user, password) {
            Ok(()) => c.fail(&format!("{} as {user} succeeded", mech.name())),
            Err(f) => (c, f),
        }
    }

    // ----- negotiation -----

    /// Sends a stream header and returns the `<stream:features/>` that follows it.
    pub fn open(&mut self) -> String {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='{}' to='{}' version='1.0'>",
            ns::STREAMS,
            escape_attr(&self.domain)
        );
        self.send(&header);
        self.expect("the server's stream header", |x| {
            x.starts_with("<stream:stream")
        });
        self.expect("<stream:features/>", |x| is(x, "features", ns::STREAMS))
    }

    /// `<starttls/>`, `<proceed/>`, the TLS handshake trusting only `cert_file` (server
    /// name: the domain), and the restarted stream; returns the post-TLS features.
    pub fn starttls(&mut self, cert_file: &Path) -> String {
        let config = client_tls(cert_file);
        self.send(&format!("<starttls xmlns='{}'/>", ns::TLS));
        let answer = self.expect("<proceed/> or <failure/>", |x| {
            is(x, "proceed", ns::TLS) || is(x, "failure", ns::TLS)
        });
        if !is(&answer, "proceed", ns::TLS) {
            self.fail(&format!("STARTTLS refused: {answer}"));
        }
        let name = fedrouter::tls::server_name(&self.domain).expect("a domain name");
        let mut tls = rustls::ClientConnection::new(config, name).expect("TLS client");
        let deadline = Instant::now() + self.timeout;
        // Bounded: each turn blocks at most until the deadline; 64 turns is far more than
        // a TLS 1.2 or 1.3 handshake takes.
        for _ in 0..64 {
            if !tls.is_handshaking() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("read timeout");
            if let Err(e) = tls.complete_io(&mut self.sock) {
                self.fail(&format!("TLS handshake: {e}"));
            }
        }
        if tls.is_handshaking() {
            self.fail(&format!("TLS handshake not done within {:?}", self.timeout));
        }
        self.transcript.push("-- TLS established --".into());
        self.tls = Some(tls);
        self.open()
    }

    /// Runs SASL `mech` as `user` (a localpart). `Ok` after `<success/>` (the server's
    /// SCRAM signature checked); `Err` holds the `<failure/>` (or whatever else came).
    /// After success the stream must be reopened ([`Client::open`]).
    pub fn auth(&mut self, mech: Mech, user: &str, password: &str) -> Result<(), String> {
        let sasl_answer = |x: &str| {
            is(x, "challenge", ns::SASL) || is(x, "success", ns::SASL) || is(x, "failure", ns::SASL)
        };
        let hash = match mech {
            Mech::Plain => {
                let initial = format!("\0{user}\0{password}");
                self.send(&format!(
                    "<auth xmlns='{}' mechanism='PLAIN'>{}</auth>",
                    ns::SASL,
                    B64.encode(initial)
                ));
                let answer = self.expect("the PLAIN outcome", sasl_answer);
                return if is(&answer, "success", ns::SASL) {
                    Ok(())
                } else {
                    Err(answer)
                };
            }
            Mech::ScramSha256 => ScramHash::Sha256,
            Mech::ScramSha1 => ScramHash::Sha1,
        };
        let cnonce = format!("{:032x}", rand::random::<u128>());
        let mut scram = ScramClient::new(hash, user, password, &cnonce);
        self.send(&format!(
            "<auth xmlns='{}' mechanism='{}'>{}</auth>",
            ns::SASL,
            mech.name(),
            B64.encode(scram.first())
        ));
        let answer = self.expect("server-first (<challenge/>)", sasl_answer);
        if !is(&answer, "challenge", ns::SASL) {
            return Err(answer);
        }
        let server_first = sasl_payload(&answer);
        let fin = scram.final_message(&server_first);
        self.send(&format!(
            "<response xmlns='{}'>{}</response>",
            ns::SASL,
            B64.encode(fin)
        ));
        let answer = self.expect("server-final (<success/>)", sasl_answer);
        if !is(&answer, "success", ns::SASL) {
            return Err(answer);
        }
        let server_final = sasl_payload(&answer);
        if !scram.verify(&server_final) {
            self.fail(&format!("bad SCRAM server signature in {answer}"));
        }
        Ok(())
    }

    /// Binds `resource` (a server-generated one when `None`); returns the full JID.
    pub fn bind(&mut self, resource: Option<&str>) -> String {
        let inner = resource.map_or(String::new(), |r| {
            format!("<resource>{}</resource>", escape_text(r))
        });
        let answer = self.iq("set", &format!("<bind xmlns='{NS_BIND}'>{inner}</bind>"));
        if attr(&answer, "type").as_deref() != Some("result") {
            self.fail(&format!("bind refused: {answer}"));
        }
        let jid = node(&answer)
            .child("bind", NS_BIND)
            .and_then(|b| b.children.iter().find(|c| c.name == "jid"))
            .map(|j| j.text.clone())
            .unwrap_or_else(|| panic!("{}: no <jid/> in {answer}", self.name));
        self.jid = Some(jid.clone());
        jid
    }

    /// The legacy session iq (RFC 3921 §3); panics unless answered `result`.
    pub fn session(&mut self) {
        let answer = self.iq("set", &format!("<session xmlns='{NS_SESSION}'/>"));
        if attr(&answer, "type").as_deref() != Some("result") {
            self.fail(&format!("session refused: {answer}"));
        }
    }

    // ----- stanzas -----

    /// Sends raw XML (through TLS once negotiated).
    pub fn send(&mut self, xml: &str) {
        self.transcript.push(format!("C: {xml}"));
        let res = match &mut self.tls {
            Some(t) => (|| {
                // rustls buffers a bounded amount of plaintext: encrypt as we go.
                let mut rest = xml.as_bytes();
                for _ in 0..100_000 {
                    if rest.is_empty() {
                        break;
                    }
                    let n = t.writer().write(rest)?;
                    rest = &rest[n..];
                    while t.wants_write() {
                        t.write_tls(&mut self.sock)?;
                    }
                }
                Ok(())
            })(),
            None => self.sock.write_all(xml.as_bytes()),
        };
        if let Err(e) = res {
            self.fail(&format!("sending failed: {e}"));
        }
    }

    /// A fresh stanza id (`c1`, `c2`, ...).
    pub fn next_id(&mut self) -> String {
        let id = format!("c{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// Sends `<iq type=TYPE id=..>payload</iq>` to the account (no `to`) and returns the
    /// answer (`result` or `error`) with that id.
    pub fn iq(&mut self, type_: &str, payload: &str) -> String {
        let id = self.next_id();
        self.send(&format!("<iq type='{type_}' id='{id}'>{payload}</iq>"));
        self.expect_iq_answer(&id)
    }

    /// Waits for the `result` or `error` iq with `id`.
    pub fn expect_iq_answer(&mut self, id: &str) -> String {
        self.expect(&format!("iq result/error id={id}"), |x| {
            is_stanza(x, "iq")
                && attr(x, "id").as_deref() == Some(id)
                && matches!(attr(x, "type").as_deref(), Some("result" | "error"))
        })
    }

    /// The first received element (buffered ones first) that `pred` accepts, waiting up
    /// to `timeout`; others stay buffered. Panics on timeout or when the server closed
    /// the connection, showing what was received.
    pub fn recv_until(&mut self, pred: impl FnMut(&str) -> bool, timeout: Duration) -> String {
        self.recv_what("an element matching the predicate", pred, timeout)
    }

    /// [`Client::recv_until`] with [`Client::timeout`] and a description of what is
    /// awaited, for the panic message.
    pub fn expect(&mut self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        let timeout = self.timeout;
        self.recv_what(what, pred, timeout)
    }

    /// Like [`Client::recv_until`], `None` on timeout instead of a panic (still panics
    /// when the connection is closed with nothing matching).
    pub fn try_recv(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline: each turn either consumes input or blocks until it.
        loop {
            if let Some(i) = self.inbox.iter().position(|x| pred(x)) {
                return self.inbox.remove(i);
            }
            if self.eof {
                return None;
            }
            if !self.read_some(deadline) {
                return None;
            }
        }
    }

    fn recv_what(
        &mut self,
        what: &str,
        pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> String {
        match self.try_recv(pred, timeout) {
            Some(x) => x,
            None if self.eof => self.fail(&format!("connection closed while waiting for {what}")),
            None => self.fail(&format!("no {what} within {timeout:?}")),
        }
    }

    /// Takes every buffered element that `pred` accepts (no waiting).
    pub fn take_buffered(&mut self, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
        let (hit, keep): (Vec<String>, Vec<String>) = std::mem::take(&mut self.inbox)
            .into_iter()
            .partition(|x| pred(x));
        self.inbox = keep.into();
        hit
    }

    /// A round trip to the server (XEP-0199 ping to the account): everything the
    /// server's user shard sent this session before the answer is buffered afterwards.
    pub fn sync(&mut self) {
        let answer = self.iq("get", &format!("<ping xmlns='{NS_PING}'/>"));
        if attr(&answer, "type").as_deref() != Some("result") {
            self.fail(&format!("ping refused: {answer}"));
        }
    }

    /// After a [`Client::sync`], panics if any buffered element matches `pred`
    /// (`what` describes it).
    pub fn assert_none(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) {
        self.sync();
        let hits: Vec<String> = self.inbox.iter().filter(|x| pred(x)).cloned().collect();
        if !hits.is_empty() {
            self.fail(&format!("unexpected {what}: {hits:?}"));
        }
    }

    // ----- rosters (RFC 6121 §2) -----

    /// Roster get (§2.2): the `<item/>`s, each as XML; records the `ver`. Panics on an
    /// error answer.
    pub fn roster_get(&mut self) -> Vec<String> {
        let answer = self.iq("get", &format!("<query xmlns='{NS_ROSTER}'/>"));
        if attr(&answer, "type").as_deref() != Some("result") {
            self.fail(&format!("roster get refused: {answer}"));
        }
        let n = node(&answer);
        let Some(q) = n.child("query", NS_ROSTER) else {
            // §2.6.3: an empty result means "your version is current".
            return Vec::new();
        };
        if let Some(v) = q.attr("ver") {
            self.roster_ver = Some(v.to_owned());
        }
        q.children
            .iter()
            .filter(|c| c.name == "item")
            .map(to_xml)
            .collect()
    }

    /// Roster set (§2.3) of `item_xml` (an `<item/>`): the answer (`result` or `error`).
    pub fn roster_set(&mut self, item_xml: &str) -> String {
        self.iq(
            "set",
            &format!("<query xmlns='{NS_ROSTER}'>{item_xml}</query>"),
        )
    }

    /// Waits for a roster push (§2.1.6) about `contact` (bare JID, compared without case),
    /// acknowledges it with a `result`, records its `ver` and returns its `<item/>` as XML.
    pub fn expect_roster_push(&mut self, contact: &str) -> String {
        let want = contact.to_ascii_lowercase();
        let push = self.expect(&format!("a roster push for {contact}"), |x| {
            is_stanza(x, "iq")
                && attr(x, "type").as_deref() == Some("set")
                && push_item(x).is_some_and(|i| {
                    i.attr("jid").map(str::to_ascii_lowercase).as_deref() == Some(want.as_str())
                })
        });
        let n = node(&push);
        if let Some(v) = n.child("query", NS_ROSTER).and_then(|q| q.attr("ver")) {
            self.roster_ver = Some(v.to_owned());
        }
        let id = n.attr("id").unwrap_or_default().to_owned();
        self.send(&format!("<iq type='result' id='{}'/>", escape_attr(&id)));
        to_xml(&push_item(&push).expect("matched"))
    }

    // ----- presence and messages -----

    /// Waits for a `<presence/>` from `from` (bare or full JID; a bare one matches any
    /// resource) whose `type` is `type_` (`None`: available presence).
    pub fn expect_presence(&mut self, from: &str, type_: Option<&str>) -> String {
        let what = format!("presence type={type_:?} from {from}");
        self.expect(&what, |x| {
            is_stanza(x, "presence")
                && attr(x, "type").as_deref() == type_
                && attr(x, "from").is_some_and(|f| jid_matches(&f, from))
        })
    }

    /// Waits for a `<message/>` from `from` (bare or full JID, as above).
    pub fn expect_message(&mut self, from: &str) -> String {
        self.expect(&format!("message from {from}"), |x| {
            is_stanza(x, "message") && attr(x, "from").is_some_and(|f| jid_matches(&f, from))
        })
    }

    /// Waits for an error stanza (`type='error'`) of kind `kind` with id `id`; returns it.
    pub fn expect_error(&mut self, kind: &str, id: &str) -> String {
        self.expect(&format!("{kind} error id={id}"), |x| {
            is_stanza(x, kind)
                && attr(x, "type").as_deref() == Some("error")
                && attr(x, "id").as_deref() == Some(id)
        })
    }

    // ----- the end of the stream -----

    /// Waits for a `<stream:error/>`; returns its condition.
    pub fn expect_stream_error(&mut self) -> String {
        let e = self.expect("<stream:error/>", |x| is(x, "error", ns::STREAMS));
        condition(&e).unwrap_or_else(|| panic!("{}: no condition in {e}", self.name))
    }

    /// Waits until the server closes the stream (`</stream:stream>`) or the connection.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + self.timeout;
        // Bounded by the deadline.
        while !self.eof {
            if !self.read_some(deadline) {
                self.fail(&format!("not closed within {:?}", self.timeout));
            }
        }
    }

    /// Whether the server closed the stream or the connection (as seen so far).
    pub fn is_closed(&self) -> bool {
        self.eof
    }

    /// Closes our stream (`</stream:stream>`).
    pub fn close(&mut self) {
        if !self.eof {
            self.send("</stream:stream>");
        }
    }

    /// The transcript so far (`C:` sent, `S:` received), one line each.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// Panics with `msg`, what is buffered and the end of the transcript.
    pub fn fail(&self, msg: &str) -> ! {
        let start = self.transcript.len().saturating_sub(TRANSCRIPT_TAIL);
        panic!(
            "{} ({}): {msg}\n  buffered, not consumed: {:#?}\n  transcript (last {}):\n    {}",
            self.name,
            self.jid.as_deref().unwrap_or("unbound"),
            self.inbox,
            self.transcript.len() - start,
            self.transcript[start..].join("\n    ")
        )
    }

    // ----- input -----

    /// One read (blocking until `deadline` at most): `false` when nothing came in time.
    fn read_some(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.sock
            .set_read_timeout(Some(left))
            .expect("read timeout");
        let mut buf = vec![0u8; 32 * 1024];
        let n = match self.sock.read(&mut buf) {
            Ok(0) => {
                self.closed("TCP connection closed by the server");
                return true;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => return true,
            Err(e) => {
                self.closed(&format!("TCP read error: {e}"));
                return true;
            }
        };
        let plain = match &mut self.tls {
            None => buf[..n].to_vec(),
            Some(t) => {
                let mut wire = &buf[..n];
                let mut plain = Vec::new();
                let mut tls_closed = false;
                // Bounded: each turn consumes at least one byte of `wire`.
                while !wire.is_empty() {
                    match t.read_tls(&mut wire) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => panic!("{}: rustls read_tls: {e}", self.name),
                    }
                    if let Err(e) = t.process_new_packets() {
                        let msg = format!("TLS error: {e}");
                        self.closed(&msg);
                        return true;
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        match t.reader().read(&mut chunk) {
                            Ok(0) => {
                                tls_closed = true;
                                break;
                            }
                            Ok(k) => plain.extend_from_slice(&chunk[..k]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                tls_closed = true;
                                break;
                            }
                        }
                    }
                }
                if tls_closed {
                    self.framer.feed(&plain);
                    self.frames();
                    self.closed("TLS close_notify");
                    return true;
                }
                plain
            }
        };
        self.framer.feed(&plain);
        self.frames();
        true
    }

    fn closed(&mut self, why: &str) {
        if !self.eof {
            self.transcript.push(format!("-- {why} --"));
        }
        self.eof = true;
    }

    /// Drains the framer into the inbox.
    fn frames(&mut self) {
        // Bounded: each frame consumes buffered bytes.
        loop {
            let frame = match self.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    self.closed(&format!("malformed XML from the server: {e}"));
                    self.fail(&format!("the server sent malformed XML ({e})"));
                }
            };
            let text = match &frame {
                Frame::Header(h) => format!(
                    "<stream:stream from={:?} id={:?} version={:?}>",
                    h.from.as_deref().unwrap_or(""),
                    h.id.as_deref().unwrap_or(""),
                    h.version.as_deref().unwrap_or("")
                ),
                Frame::Element(e) => e.as_str().to_owned(),
                Frame::Close => "</stream:stream>".to_owned(),
            };
            self.transcript.push(format!("S: {text}"));
            self.inbox.push_back(text);
            match &frame {
                Frame::Element(e) if e.is("proceed", &Namespace::Tls) => {
                    // What follows are TLS records, and then a new stream.
                    self.framer.discard_buffered();
                    self.framer.reset();
                    return;
                }
                Frame::Element(e) if e.is("success", &Namespace::Sasl) => {
                    // RFC 6120 §6.4.6: a new stream follows.
                    self.framer.reset();
                }
                Frame::Close => {
                    self.closed("</stream:stream> from the server");
                    return;
                }
                _ => {}
            }
        }
    }
}

/// A rustls client configuration trusting exactly the certificates in `cert_file` (PEM).
pub fn client_tls(cert_file: &Path) -> Arc<rustls::ClientConfig> {
    fedrouter::tls::install_default_provider();
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", cert_file.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", cert_file.display()));
    assert!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_file.display()
    );
    for c in certs {
        roots
            .add(c)
            .unwrap_or_else(|e| panic!("trust {}: {e}", cert_file.display()));
    }
    fedrouter::tls::client_config(Some(Arc::new(roots)), true, None, &[])
        .expect("TLS client configuration")
}

// ---------------------------------------------------------------------------------------
// Reading received XML
// ---------------------------------------------------------------------------------------

/// Whether `xml` is one element (not a rendered stream header or close).
fn is_element(xml: &str) -> bool {
    !xml.starts_with("<stream:stream") && !xml.starts_with("</")
}

/// The tree of one received element (prefix `stream` bound as on the stream; the default
/// namespace `jabber:client`). Panics if `xml` is not one element.
pub fn node(xml: &str) -> Node {
    try_node(xml).unwrap_or_else(|| panic!("not one XML element: {xml}"))
}

fn try_node(xml: &str) -> Option<Node> {
    if !is_element(xml) {
        return None;
    }
    let mut f = Framer::default();
    f.feed(
        format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='{}' version='1.0'>",
            ns::STREAMS
        )
        .as_bytes(),
    );
    f.feed(xml.as_bytes());
    match f.next_frame() {
        Ok(Some(Frame::Header(_))) => {}
        _ => return None,
    }
    match f.next_frame() {
        Ok(Some(Frame::Element(e))) => Node::parse(&e).ok(),
        _ => None,
    }
}

/// Whether `xml` is an element named `name` in namespace `ns_name`.
pub fn is(xml: &str, name: &str, ns_name: &str) -> bool {
    try_node(xml).is_some_and(|n| n.name == name && n.ns == ns_name)
}

/// Whether `xml` is a stanza (`message`, `presence`, `iq` in `jabber:client`) named `kind`.
pub fn is_stanza(xml: &str, kind: &str) -> bool {
    is(xml, kind, ns::CLIENT)
}

/// Attribute `name` of the top element of `xml` (unescaped); `None` when absent or when
/// `xml` is not an element.
pub fn attr(xml: &str, name: &str) -> Option<String> {
    try_node(xml).and_then(|n| n.attr(name).map(str::to_owned))
}

/// The character data of the first child element named `child` (any namespace), e.g. the
/// `<body/>` of a message.
pub fn child_text(xml: &str, child: &str) -> Option<String> {
    try_node(xml).and_then(|n| {
        n.children
            .iter()
            .find(|c| c.name == child)
            .map(|c| c.text.clone())
    })
}

/// The error condition of `xml`: a SASL `<failure/>`'s child, a `<stream:error/>`'s
/// `xmpp-streams` child, or a stanza error's (`<error/>` child) `xmpp-stanzas` child.
pub fn condition(xml: &str) -> Option<String> {
    let n = try_node(xml)?;
    let first_in = |n: &Node, ns_name: &str| {
        n.children
            .iter()
            .find(|c| c.ns == ns_name)
            .map(|c| c.name.clone())
    };
    if n.name == "failure" {
        return n.children.first().map(|c| c.name.clone());
    }
    if n.name == "error" && n.ns == ns::STREAMS {
        return first_in(&n, ns::STREAM_ERRORS);
    }
    let e = n.children.iter().find(|c| c.name == "error")?;
    first_in(e, ns::STANZA_ERRORS)
}

/// Whether received JID `got` is `want` (bare `want`: any resource of it), without case.
pub fn jid_matches(got: &str, want: &str) -> bool {
    let got = got.to_ascii_lowercase();
    let want = want.to_ascii_lowercase();
    if want.contains('/') {
        got == want
    } else {
        got.split('/').next() == Some(want.as_str())
    }
}

/// The `<item/>` of a roster push or result `xml`, if it is one.
fn push_item(xml: &str) -> Option<Node> {
    let n = try_node(xml)?;
    let q = n.child("query", NS_ROSTER)?;
    q.children.iter().find(|c| c.name == "item").cloned()
}

/// Serialises `n` back to XML (attributes and text escaped; no namespace declarations, as
/// the children of a roster query carry none).
pub fn to_xml(n: &Node) -> String {
    let mut s = format!("<{}", n.name);
    for (k, v) in &n.attrs {
        s.push_str(&format!(" {k}='{}'", escape_attr(v)));
    }
    if n.children.is_empty() && n.text.is_empty() {
        s.push_str("/>");
        return s;
    }
    s.push('>');
    s.push_str(&escape_text(&n.text));
    for c in &n.children {
        s.push_str(&to_xml(c));
    }
    s.push_str(&format!("</{}>", n.name));
    s
}

/// The base64 payload of a SASL element, decoded as UTF-8.
fn sasl_payload(xml: &str) -> String {
    let n = node(xml);
    let text = n.text.trim();
    let raw = if text == "=" {
        Vec::new()
    } else {
        B64.decode(text)
            .unwrap_or_else(|e| panic!("bad base64 in {xml}: {e}"))
    };
    String::from_utf8(raw).unwrap_or_else(|e| panic!("SASL payload of {xml} is not UTF-8: {e}"))
}

/// A TCP connection to `addr` from source address `source` (port chosen by the kernel),
/// within [`TIMEOUT`]. Panics when it cannot be made.
pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    sock.bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    sock.connect_timeout(&addr.into(), TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr} from {source}: {e}"));
    sock.into()
}
