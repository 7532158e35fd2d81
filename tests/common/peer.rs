//! A scripted raw S2S peer over a std `TcpStream`: the test writes hand-made XML (whole,
//! or one byte per write) and reads what the server answers, with every wait bounded.
//!
//! It keeps everything received in [`Peer::received`] and offers small, forgiving look-ups
//! over it (the stream id of the server's header, the `type` of a `db:result` answer,
//! whether a stream error arrived), enough for assertions without a full XML parser.
#![allow(dead_code)]

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest wait for a TCP connection to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Granularity of reads while waiting: a read blocks at most this long.
const READ_SLICE: Duration = Duration::from_millis(50);

/// One scripted connection to a server's S2S port.
pub struct Peer {
    stream: TcpStream,
    /// Every byte received so far.
    pub received: Vec<u8>,
    /// The server closed the connection (read returned 0 or failed).
    pub eof: bool,
}

/// A stream header as an S2S peer sends it (RFC 6120 §4.7, dialback namespace declared),
/// `from` omitted when `None`.
pub fn header(from: Option<&str>, to: &str) -> String {
    let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         to='{to}'{from} version='1.0'>"
    )
}

/// A XEP-0220 `db:result` request carrying `key`.
pub fn db_result(from: &str, to: &str, key: &str) -> String {
    format!("<db:result from='{from}' to='{to}'>{key}</db:result>")
}

/// A XEP-0220 §2.1.3 `db:verify` request (a Receiving Server asking the Authoritative
/// Server `to` whether `key` is valid for stream `id`).
pub fn db_verify(from: &str, to: &str, id: &str, key: &str) -> String {
    format!("<db:verify from='{from}' to='{to}' id='{id}'>{key}</db:verify>")
}

impl Peer {
    /// Connects to `addr` (TCP_NODELAY on).
    ///
    /// Panics when the connection cannot be made within [`CONNECT_TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("peer: connecting to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_read_timeout(Some(READ_SLICE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        Peer {
            stream,
            received: Vec::new(),
            eof: false,
        }
    }

    /// Accepts one connection on `listener` (the test plays a remote server that the
    /// server under test connects to), waiting at most `timeout`; `None` if none came.
    pub fn accept(listener: &std::net::TcpListener, timeout: Duration) -> Option<Peer> {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline; each turn waits at most one read slice.
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_read_timeout(Some(READ_SLICE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        Some(Peer {
            stream,
            received: Vec::new(),
            eof: false,
        })
    }

    /// Sends `bytes` in one write. Errors (the server closed on us) are returned.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `bytes` one byte per `write` call (with TCP_NODELAY each goes out in its
    /// own segment, give or take the kernel's coalescing under load).
    pub fn send_bytewise(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        for b in bytes {
            self.stream.write_all(std::slice::from_ref(b))?;
        }
        Ok(())
    }

    /// Everything received so far, as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// Reads what is there (waiting at most one read slice). Returns the number of bytes
    /// read; sets [`Peer::eof`] when the server closed.
    fn read_some(&mut self) -> usize {
        if self.eof {
            return 0;
        }
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                0
            }
            Ok(n) => {
                self.received.extend_from_slice(&buf[..n]);
                n
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(_) => {
                self.eof = true;
                0
            }
        }
    }

    /// Reads until `pred(received text)` holds, the server closes, or `timeout` passes;
    /// returns whether `pred` holds.
    pub fn read_until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.text()) {
                return true;
            }
            if self.eof || Instant::now() >= deadline {
                return false;
            }
            self.read_some();
        }
    }

    /// Reads until `needle` has been received (see [`Peer::read_until`]).
    pub fn read_until_contains(&mut self, needle: &str, timeout: Duration) -> bool {
        self.read_until(timeout, |t| t.contains(needle))
    }

    /// Reads until the server closes the connection or `timeout` passes; returns whether
    /// it closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.eof && Instant::now() < deadline {
            self.read_some();
        }
        self.eof
    }

    /// Reads for `d` (or until the server closes) and returns what arrived meanwhile.
    pub fn read_for(&mut self, d: Duration) -> String {
        let before = self.received.len();
        let deadline = Instant::now() + d;
        while !self.eof && Instant::now() < deadline {
            self.read_some();
        }
        String::from_utf8_lossy(&self.received[before..]).into_owned()
    }

    /// A barrier on this inbound stream: sends a `db:verify` from `from` (the domain this
    /// stream claims) to `to` (the server's domain), with a key that does not verify, and
    /// reads until the server's answer to it. The server is the Authoritative Server for
    /// `to` and answers on this same stream (XEP-0220 §2.1.3), and it handles a stream's
    /// input in order: whatever it wrote on this stream because of what was sent before
    /// the barrier has been received when the answer arrives. Returns what arrived between
    /// the call and the answer; `None` when no answer came within `timeout` (the stream
    /// was closed, or the server is stuck).
    pub fn barrier(&mut self, from: &str, to: &str, timeout: Duration) -> Option<String> {
        let before = self.received.len();
        let id = format!("barrier-{before}");
        self.send(db_verify(from, to, &id, "0").as_bytes()).ok()?;
        let is_answer =
            |t: &&str| attr(t, "id").as_deref() == Some(id.as_str()) && attr(t, "type").is_some();
        let answered = self.read_until(timeout, |t| {
            tags(t.get(before..).unwrap_or(""), "<db:verify")
                .iter()
                .any(is_answer)
        });
        if !answered {
            return None;
        }
        let text = String::from_utf8_lossy(&self.received[before..]).into_owned();
        let at = tags(&text, "<db:verify")
            .into_iter()
            .find(is_answer)
            .and_then(|t| text.find(t))?;
        Some(text[..at].to_owned())
    }

    /// The `id` of the server's stream header, once received.
    pub fn stream_id(&self) -> Option<String> {
        tag_attr(&self.text(), "<stream:stream", "id")
    }

    /// The `type` of the server's `db:result` answer for `from` (the server's domain) and
    /// `to` (ours), once received.
    pub fn db_result_type(&self, from: &str, to: &str) -> Option<String> {
        let text = self.text();
        tags(&text, "<db:result")
            .into_iter()
            .find(|t| {
                attr(t, "from").as_deref() == Some(from) && attr(t, "to").as_deref() == Some(to)
            })
            .and_then(|t| attr(t, "type"))
    }

    /// The stream error condition received (`not-well-formed`, ...), once received.
    pub fn stream_error(&self) -> Option<String> {
        let text = self.text();
        let start = text.find("<stream:error")?;
        let rest = &text[start..];
        let ns = rest.find("urn:ietf:params:xml:ns:xmpp-streams")?;
        // The condition is the element whose xmlns is the streams namespace: the last
        // '<name ' before that namespace.
        let open = rest[..ns].rfind('<')?;
        let name: String = rest[open + 1..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/' && *c != '>')
            .collect();
        Some(name)
    }

    /// Shuts the connection down both ways.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Ends the connection abruptly: `SO_LINGER` 0, then close, so the kernel sends a TCP
    /// RST instead of a FIN (a peer that dies with stanzas in flight).
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// Every start tag (up to its `>`) in `text` that begins with `prefix`.
pub fn tags<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find(prefix) {
        let start = at + i;
        let Some(end) = text[start..].find('>') else {
            break;
        };
        out.push(&text[start..=start + end]);
        at = start + end + 1;
    }
    out
}

/// The value of attribute `name` in the start tag `tag` (either quote; no unescaping).
pub fn attr(tag: &str, name: &str) -> Option<String> {
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let rest = &tag[i + pat.len()..];
            return rest.find(q).map(|j| rest[..j].to_owned());
        }
    }
    None
}

/// Attribute `name` of the first start tag beginning with `prefix` in `text`.
pub fn tag_attr(text: &str, prefix: &str, name: &str) -> Option<String> {
    tags(text, prefix).first().and_then(|t| attr(t, name))
}

/// A stand-in remote server run by the test itself: it accepts S2S streams on `addr` for
/// one domain and drives each with the library's own sans-IO receiving side
/// ([`S2sConnection::inbound`]), Google-style (plain TCP, dialback). As the authoritative
/// server it answers `db:verify` with its secret (XEP-0185); as the receiving server it
/// accepts every `db:result` without checking back (it is a test double). Every stanza it
/// receives is kept, so a test can see exactly what the server under test sent.
///
/// [`FakeServer::pause`] makes it a peer that stopped reading: it neither accepts nor
/// reads nor writes until [`FakeServer::resume`], and keeps its sockets open meanwhile, so
/// what the server under test sends piles up in the kernel's buffers and then in its own.
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stanzas: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Pause requested by the test.
    pause: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The thread saw the pause request and is touching no socket.
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A [`FakeServer`] connection's stanza count while it waits to reset.
const RESETTING: usize = usize::MAX;

/// How a [`FakeServer`] differs from the default Google-style test double.
#[derive(Debug, Default, Clone, Copy)]
pub struct FakeOptions {
    /// XEP-0198 offered on its inbound streams, with this cadence (it answers `<r/>`).
    pub stream_management: Option<fedrouter::stream::sm::AckPolicy>,
    /// Reset (TCP RST) the first connection on which it has received this many stanzas, with any unread bytes and without sending the acknowledgements it
    /// owed: a peer whose connection dies with stanzas in flight.
    pub reset_first_after: Option<usize>,
}

/// Longest wait for the fake server's thread to take a pause or resume into account.
const PAUSE_ACK: Duration = Duration::from_secs(10);

impl FakeServer {
    /// Listens on `addr` for streams to `domain`, with dialback `secret`.
    pub fn start(
        addr: SocketAddr,
        domain: &str,
        secret: fedrouter::dialback::DialbackSecret,
    ) -> FakeServer {
        Self::start_with(addr, domain, secret, FakeOptions::default())
    }

    /// [`FakeServer::start`] with [`FakeOptions`].
    pub fn start_with(
        addr: SocketAddr,
        domain: &str,
        secret: fedrouter::dialback::DialbackSecret,
        opts: FakeOptions,
    ) -> FakeServer {
        use fedrouter::stream::{FederationPolicy, PeerPolicy, S2sConfig, Timeouts};
        use std::sync::atomic::Ordering;
        use std::sync::{Arc, Mutex};

        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("fake server: binding {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let cfg = Arc::new(S2sConfig {
            local_domains: vec![domain.to_owned()],
            certificate_domains: Vec::new(),
            policy: FederationPolicy {
                default: PeerPolicy::google(),
                ..Default::default()
            },
            dialback_secret: secret,
            stream_id_key: rand::random(),
            cert_verifier: None,
            limits: fedrouter::xml::Limits::default(),
            timeouts: Timeouts::default(),
            stream_management: opts.stream_management,
        });
        let stanzas = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pause = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (got, st) = (Arc::clone(&stanzas), Arc::clone(&stop));
        let (pa, fr, acc) = (
            Arc::clone(&pause),
            Arc::clone(&frozen),
            Arc::clone(&accepted),
        );
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(TcpStream, fedrouter::stream::S2sConnection, usize)> = Vec::new();
            // `reset_first_after` applies once, to the first connection that carries that
            // many stanzas (a dialback verification connection carries none).
            let mut reset_done = opts.reset_first_after.is_none();
            let mut nonce = 0u64;
            let mut buf = [0u8; 8192];
            // Bounded: ends when `stop` is set, or after 10 minutes as a backstop.
            let end = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                if pa.load(Ordering::SeqCst) {
                    // Paused: no accept, no read, no write; the sockets stay open.
                    fr.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                fr.store(false, Ordering::SeqCst);
                let mut idle = true;
                if let Ok((s, _)) = listener.accept() {
                    acc.fetch_add(1, Ordering::SeqCst);
                    s.set_nonblocking(true).expect("nonblocking");
                    let _ = s.set_nodelay(true);
                    nonce += 1;
                    let c = fedrouter::stream::S2sConnection::inbound(
                        Arc::clone(&cfg),
                        nonce,
                        None,
                        Instant::now(),
                    );
                    conns.push((s, c, 0));
                    idle = false;
                }
                conns.retain_mut(|(s, c, count)| {
                    let now = Instant::now();
                    if *count == RESETTING {
                        // Reads nothing more; resets as soon as unread bytes wait in the
                        // socket, so that the RST discards stanzas the sender's kernel
                        // already took (lost, unless the sender sends them again).
                        let mut one = [0u8; 1];
                        return match s.peek(&mut one) {
                            Ok(n) if n > 0 => {
                                let _ =
                                    socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
                                false
                            }
                            Ok(_) => false,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                            Err(_) => false,
                        };
                    }
                    let open = match s.read(&mut buf) {
                        Ok(0) => false,
                        Ok(n) => {
                            c.handle_input(&buf[..n], now);
                            idle = false;
                            true
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                        Err(e) if e.kind() == ErrorKind::Interrupted => true,
                        Err(_) => false,
                    };
                    c.handle_timeout(now);
                    while let Some(ev) = c.poll_event() {
                        match ev {
                            fedrouter::stream::Event::VerifyNeeded { local, remote, .. } => {
                                c.handle_dialback_verdict(
                                    &local,
                                    &remote,
                                    fedrouter::dialback::DialbackResult::Valid,
                                    now,
                                );
                            }
                            fedrouter::stream::Event::Stanza { element, .. } => {
                                got.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(element.as_str().to_owned());
                                *count += 1;
                            }
                            _ => {}
                        }
                    }
                    if !reset_done && opts.reset_first_after.is_some_and(|n| *count >= n) {
                        // An abrupt end, without writing the acknowledgements just
                        // counted: see RESETTING above.
                        reset_done = true;
                        *count = RESETTING;
                        return true;
                    }
                    let mut out = Vec::new();
                    c.poll_transmit(&mut out);
                    if !out.is_empty() {
                        // Small writes to a loopback socket: a blocking write is fine.
                        let _ = s.set_nonblocking(false);
                        let ok = s.write_all(&out).is_ok();
                        let _ = s.set_nonblocking(true);
                        if !ok {
                            return false;
                        }
                    }
                    open && !c.is_closed()
                });
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        FakeServer {
            addr,
            stanzas,
            stop,
            pause,
            frozen,
            accepted,
            thread: Some(thread),
        }
    }

    /// Stops reading (and accepting and writing): returns once the server's thread no
    /// longer touches any socket. Panics if it does not take the pause within
    /// [`PAUSE_ACK`].
    pub fn pause(&self) {
        self.pause_switch(true);
    }

    /// Reads again what piled up meanwhile (see [`FakeServer::pause`]); returns once the
    /// thread runs again.
    pub fn resume(&self) {
        self.pause_switch(false);
    }

    fn pause_switch(&self, on: bool) {
        use std::sync::atomic::Ordering;
        self.pause.store(on, Ordering::SeqCst);
        let deadline = Instant::now() + PAUSE_ACK;
        // Bounded by the deadline.
        while self.frozen.load(Ordering::SeqCst) != on {
            assert!(
                Instant::now() < deadline,
                "fake server {}: pause = {on} not taken within {PAUSE_ACK:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many stanzas it received so far.
    pub fn stanza_count(&self) -> usize {
        self.stanzas.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The stanzas received after the first `start` ones (for a test that reads many
    /// incrementally rather than copying them all at each look).
    pub fn stanzas_from(&self, start: usize) -> Vec<String> {
        let all = self.stanzas.lock().unwrap_or_else(|e| e.into_inner());
        all.get(start..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// Every stanza received so far (as sent, one string each).
    pub fn stanzas(&self) -> Vec<String> {
        self.stanzas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (bounded by `timeout`) for a received stanza containing every one of
    /// `needles`.
    pub fn wait_stanza(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .stanzas()
                .into_iter()
                .find(|s| needles.iter().all(|n| s.contains(n)))
            {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
