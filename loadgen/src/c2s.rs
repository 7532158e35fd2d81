//! An asynchronous (tokio) XMPP client-to-server session: the client's side of RFC 6120
//! stream negotiation against any server (fedrouter, Prosody, ejabberd), then a split
//! stream whose [`Writer`] and [`Reader`] halves can live in separate tasks.
//!
//! ```text
//!  TCP connect ─► <stream:stream to=domain> ─► <stream:features/>
//!    ─► <starttls/> ◄ <proceed/> ─► TLS handshake (rustls) ─► new stream    (§5, if TlsMode::Required)
//!    ─► <auth/> ◄► <challenge/>/<response/> ◄ <success/> ─► new stream     (§6: SCRAM-SHA-256,
//!                                                                           SCRAM-SHA-1, PLAIN)
//!    ─► <iq><bind/></iq> ◄ full JID                                         (§7)
//!    ─► <iq><session/></iq> if the server requires it                       (RFC 3921 §3)
//!    ─► Session { writer, reader }:  Writer::send ──► socket ──► Reader::next (Framer)
//! ```
//!
//! SASL mechanisms are the `sasl` crate's clients (xmpp-rs). Incoming bytes are read
//! straight into the [`Framer`]'s buffer (no extra copy; the buffer's memory is reused once
//! the elements handed out are dropped) and come out as [`Element`]s, refcounted views of
//! that buffer. Each negotiation step is bounded by [`ClientOptions::timeout`]; after
//! [`login`] nothing is bounded: wrap calls in `tokio::time::timeout` as needed.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use fedrouter::xml::tree::Node;
use fedrouter::xml::{
    escape_attr, escape_text, ns, Element, Frame, Framer, Limits, Namespace, StreamHeader, XmlError,
};
use sasl::client::mechanisms::{Plain, Scram};
use sasl::client::Mechanism;
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Resource binding namespace (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// The legacy session namespace (RFC 3921 §3).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// The roster namespace (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";

/// Bytes reserved in the framer's buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Most SASL challenge/response round trips accepted (SCRAM needs two).
const MAX_SASL_ROUNDS: usize = 8;
/// Most unrelated elements skipped while waiting for a bind or session answer.
const MAX_SKIPPED: usize = 64;

// ---------------------------------------------------------------------------------------
// Options and errors
// ---------------------------------------------------------------------------------------

/// Whether and how the session negotiates TLS.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// STARTTLS (RFC 6120 §5) is mandatory: a server that does not offer it fails the
    /// login with [`C2sError::NoStartTls`]. The server certificate is checked (webpki:
    /// chain, validity, the domain as name, RFC 6120 §13.7.2.1) against `roots`;
    /// `None` = no certificate check at all (encrypts, does not authenticate the server;
    /// [`fedrouter::tls::NoServerVerification`]).
    Required {
        /// The trust anchors, or `None` for no certificate check.
        roots: Option<Arc<rustls::RootCertStore>>,
    },
    /// Plain TCP, no STARTTLS. SASL PLAIN is never used (the password would travel in
    /// clear); the server must offer a SCRAM mechanism.
    Disabled,
}

/// Where and how [`login`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server's C2S listener (e.g. `127.0.0.1:5222`); connected directly, no DNS.
    pub addr: SocketAddr,
    /// The XMPP domain: `to` of the stream header, TLS SNI and certificate name, and the
    /// domainpart of the users' JIDs.
    pub domain: String,
    /// TLS policy.
    pub tls: TlsMode,
    /// Bound of each negotiation step (connect, each stream header and features, STARTTLS,
    /// the TLS handshake, SASL, bind, session): [`C2sError::Timeout`] names the step.
    pub timeout: Duration,
}

/// Why a login, a read or a write failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum C2sError {
    /// A socket error (other than the peer closing, [`C2sError::Closed`]).
    #[error("I/O error ({0:?}): {1}")]
    Io(io::ErrorKind, String),
    /// The named negotiation step did not complete within [`ClientOptions::timeout`].
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The TLS configuration, server name or handshake failed (rustls's message), e.g.
    /// a certificate that does not chain to the given roots.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server sent XML the framer rejects (RFC 6120 §11).
    #[error("malformed XML from the server: {0}")]
    Xml(XmlError),
    /// The server closed the stream with `<stream:error/>` (RFC 6120 §4.9): `condition`
    /// is the `urn:ietf:params:xml:ns:xmpp-streams` element's name (`host-unknown`,
    /// `policy-violation`, ...), `text` the optional `<text/>`.
    #[error("stream error <{condition}/>{}", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
    StreamError {
        /// The defined condition (§4.9.3).
        condition: String,
        /// The descriptive text (§4.9.2), if any.
        text: Option<String>,
    },
    /// SASL `<failure/>` (RFC 6120 §6.5): `condition` is its child's name, e.g.
    /// `not-authorized` for a wrong password.
    #[error("authentication failed: <{condition}/>")]
    AuthFailed {
        /// The SASL failure condition (§6.5).
        condition: String,
    },
    /// The server offers no mechanism this client may use (SCRAM-SHA-256, SCRAM-SHA-1,
    /// or PLAIN over TLS).
    #[error("no usable SASL mechanism offered")]
    NoMechanism,
    /// The SASL exchange broke: a bad server SCRAM signature (the server does not know
    /// the password), undecodable data, too many round trips.
    #[error("SASL: {0}")]
    Sasl(String),
    /// [`TlsMode::Required`] but the server does not offer STARTTLS (§5.3.1).
    #[error("the server does not offer STARTTLS")]
    NoStartTls,
    /// [`TlsMode::Disabled`] but the server requires STARTTLS before SASL.
    #[error("the server requires STARTTLS")]
    TlsRequiredByServer,
    /// Resource binding failed (§7): the stanza error condition or what was missing.
    #[error("resource binding: {0}")]
    Bind(String),
    /// The required legacy session (RFC 3921 §3) was refused: the error condition.
    #[error("session establishment: {0}")]
    Session(String),
    /// The server sent something out of place during negotiation.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed the connection (TCP EOF) or the stream (`</stream:stream>`)
    /// during negotiation, or the connection without a closing tag afterwards.
    #[error("connection closed by the server")]
    Closed,
    /// The server closed the stream with `<see-other-host/>` (RFC 6120 §4.9.3.19): the
    /// client must connect to `host` (`host:port`, the condition element's text; a
    /// fedrouter cluster node sends it right after SASL success to a user another node
    /// owns, and to the sessions of users whose owner changed).
    #[error("see-other-host: {host}")]
    SeeOtherHost {
        /// Where to connect: `host:port`, `host`, or `[IPv6]:port` (§4.9.3.19).
        host: String,
    },
}

impl From<io::Error> for C2sError {
    fn from(e: io::Error) -> C2sError {
        if let Some(t) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return C2sError::Tls(t.to_string());
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => C2sError::Closed,
            kind => C2sError::Io(kind, e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------------------

/// Plain TCP or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads once into the framer's buffer (append only). `Ok(0)`: end of stream.
async fn fill<R: AsyncRead + Unpin>(io: &mut R, framer: &mut Framer) -> io::Result<usize> {
    let buf = framer.buffer_mut();
    buf.reserve(READ_CHUNK);
    io.read_buf(buf).await
}

// ---------------------------------------------------------------------------------------
// The session after login
// ---------------------------------------------------------------------------------------

/// A logged-in session: the bound JID and the two halves of the stream.
#[derive(Debug)]
pub struct Session {
    /// The full JID the server bound (RFC 6120 §7.6.1), e.g. `user@domain/resource`.
    pub jid: String,
    /// The SASL mechanism that authenticated the session (`"SCRAM-SHA-256"`,
    /// `"SCRAM-SHA-1"` or `"PLAIN"`).
    pub mechanism: &'static str,
    /// The sending half.
    pub writer: Writer,
    /// The receiving half.
    pub reader: Reader,
}

/// The sending half of a session; `Send`, usable from any task.
pub struct Writer {
    io: WriteHalf<Transport>,
    /// Stanzas queued by [`Writer::queue`], written by the next flush; reused.
    buf: Vec<u8>,
    /// Set once our `</stream:stream>` is sent: the reader then takes an EOF as a clean end.
    closing: Arc<AtomicBool>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &self.buf.len())
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish()
    }
}

impl Writer {
    /// Sends `xml` (one or more complete stanzas, written as given: the caller escapes;
    /// `from` may be omitted, the server stamps it, RFC 6120 §8.1.2.1) together with
    /// anything queued by [`Writer::queue`], and flushes.
    ///
    /// Waits while the socket is full (TCP back-pressure); no timeout. Not cancel-safe:
    /// dropping the future may leave a partial stanza on the stream.
    ///
    /// Errors: [`C2sError::Closed`] when the connection is gone, [`C2sError::Io`],
    /// [`C2sError::Tls`].
    pub async fn send(&mut self, xml: &[u8]) -> Result<(), C2sError> {
        if self.buf.is_empty() {
            self.io.write_all(xml).await?;
        } else {
            self.buf.extend_from_slice(xml);
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Appends `xml` to the send buffer without writing: many stanzas then go out in one
    /// write (one TLS record per 16 KiB instead of one per stanza) at the next
    /// [`Writer::flush`] or [`Writer::send`].
    pub fn queue(&mut self, xml: &[u8]) {
        self.buf.extend_from_slice(xml);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued and flushes. Errors as [`Writer::send`].
    pub async fn flush(&mut self) -> Result<(), C2sError> {
        self.send(&[]).await
    }

    /// Requests the roster (RFC 6121 §2.1.3): `<iq type='get' id=ID><query
    /// xmlns='jabber:iq:roster'/></iq>`. The result arrives on the [`Reader`] as an `iq`
    /// of type `result` with the same `id`. Errors as [`Writer::send`].
    pub async fn request_roster(&mut self, id: &str) -> Result<(), C2sError> {
        let xml = format!(
            "<iq type='get' id='{}'><query xmlns='{NS_ROSTER}'/></iq>",
            escape_attr(id)
        );
        self.send(xml.as_bytes()).await
    }

    /// Sends initial presence, `<presence/>` (RFC 6121 §4.2): the server then broadcasts
    /// it to the user's subscribers and sends the contacts' presence back. Errors as
    /// [`Writer::send`].
    pub async fn send_initial_presence(&mut self) -> Result<(), C2sError> {
        self.send(b"<presence/>").await
    }

    /// Closes the stream (RFC 6120 §4.4): writes what is queued and `</stream:stream>`,
    /// then shuts the write side down (TLS `close_notify`, TCP FIN). The [`Reader`] stays
    /// usable until the server's own closing tag, after which it returns `Ok(None)`.
    /// Calling it again does nothing.
    ///
    /// Errors: as [`Writer::send`]; a connection already gone counts as closed (`Ok`).
    pub async fn close(&mut self) -> Result<(), C2sError> {
        if self.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let res = async {
            self.send(b"</stream:stream>").await?;
            self.io.shutdown().await?;
            Ok(())
        }
        .await;
        match res {
            Err(C2sError::Closed) => Ok(()),
            other => other,
        }
    }
}

/// The receiving half of a session; `Send`, usable from any task.
pub struct Reader {
    io: ReadHalf<Transport>,
    framer: Framer,
    /// `</stream:stream>` seen (or EOF after our close): every later call is `Ok(None)`.
    done: bool,
    closing: Arc<AtomicBool>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("buffered", &self.framer.buffered())
            .field("done", &self.done)
            .finish()
    }
}

impl Reader {
    /// The next top-level element: a stanza (`message`, `presence`, `iq` in
    /// `jabber:client`) or another top-level element (e.g. XEP-0198 nonzas), as received.
    /// Attribute values in its routing view are raw (still escaped);
    /// [`fedrouter::xml::tree::Node::parse`] gives a tree.
    ///
    /// `Ok(None)` once the server closed its stream (`</stream:stream>`, RFC 6120 §4.4),
    /// or closed the connection after our [`Writer::close`]; every later call returns
    /// `Ok(None)` too. Waits without a timeout. Cancel-safe: a dropped call loses nothing.
    ///
    /// Errors: [`C2sError::StreamError`] for `<stream:error/>` (§4.9);
    /// [`C2sError::Closed`] for an EOF without a closing tag; [`C2sError::Xml`] for
    /// malformed XML (sticky); [`C2sError::Io`], [`C2sError::Tls`].
    pub async fn next(&mut self) -> Result<Option<Element>, C2sError> {
        if self.done {
            return Ok(None);
        }
        // Bounded: each turn yields a frame, or reads at least one byte, or ends.
        loop {
            match self.framer.next_frame().map_err(C2sError::Xml)? {
                Some(Frame::Element(e)) => {
                    if e.is("error", &Namespace::Streams) {
                        return Err(stream_error(&e));
                    }
                    return Ok(Some(e));
                }
                Some(Frame::Close) => {
                    self.done = true;
                    return Ok(None);
                }
                Some(Frame::Header(_)) => {
                    return Err(C2sError::Protocol(
                        "a stream header in the middle of the stream".into(),
                    ))
                }
                None => {}
            }
            let n = match fill(&mut self.io, &mut self.framer).await {
                Ok(n) => n,
                Err(e) => {
                    let e = C2sError::from(e);
                    if e == C2sError::Closed && self.closing.load(Ordering::Acquire) {
                        self.done = true;
                        return Ok(None);
                    }
                    return Err(e);
                }
            };
            if n == 0 {
                if self.closing.load(Ordering::Acquire) {
                    self.done = true;
                    return Ok(None);
                }
                return Err(C2sError::Closed);
            }
        }
    }

    /// Bytes received and not yet returned as elements.
    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }
}

// ---------------------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------------------

/// Logs in as `user` (a localpart; the JID is `user@opts.domain`) with `password` and binds
/// `resource` (RFC 6120 §7; `""` lets the server generate one), following RFC 6120: TCP
/// connect, stream header (§4.7), STARTTLS (§5) when [`TlsMode::Required`], SASL (§6)
/// with the first mechanism of SCRAM-SHA-256 (RFC 7677), SCRAM-SHA-1 (RFC 5802), PLAIN
/// (RFC 4616, only over TLS) that the server offers, the stream restart, resource binding,
/// and the legacy session (RFC 3921 §3) when the server advertises it without
/// `<optional/>`. The roster and initial presence are left to the caller
/// ([`Writer::request_roster`], [`Writer::send_initial_presence`]).
///
/// Each step is bounded by [`ClientOptions::timeout`].
///
/// Errors: [`C2sError::AuthFailed`] (`not-authorized`: wrong user or password),
/// [`C2sError::NoMechanism`], [`C2sError::NoStartTls`], [`C2sError::TlsRequiredByServer`],
/// [`C2sError::Tls`] (handshake, certificate), [`C2sError::StreamError`] (e.g.
/// `host-unknown`), [`C2sError::Bind`], [`C2sError::Session`], [`C2sError::Timeout`],
/// [`C2sError::Closed`], [`C2sError::Io`], [`C2sError::Sasl`], [`C2sError::Xml`],
/// [`C2sError::Protocol`].
pub async fn login(
    opts: &ClientOptions,
    user: &str,
    password: &str,
    resource: &str,
) -> Result<Session, C2sError> {
    let step = Step::new(opts.timeout, "connect");
    let tcp = timeout_at(step.deadline, TcpStream::connect(opts.addr))
        .await
        .map_err(|_| C2sError::Timeout(step.name))??;
    tcp.set_nodelay(true)?;
    let mut conn = Conn {
        io: Transport::Plain(tcp),
        framer: Framer::new(Limits::default()),
        domain: &opts.domain,
        timeout: opts.timeout,
    };
    let mut features = conn.open().await?;

    let tls = match &opts.tls {
        TlsMode::Required { roots } => {
            if features.child("starttls", ns::TLS).is_none() {
                return Err(C2sError::NoStartTls);
            }
            conn = conn.starttls(roots.clone()).await?;
            features = conn.open().await?;
            true
        }
        TlsMode::Disabled => false,
    };

    let offered: Vec<&str> = features
        .child("mechanisms", ns::SASL)
        .map(|m| {
            m.children
                .iter()
                .filter(|c| c.name == "mechanism")
                .map(|c| c.text.trim())
                .collect()
        })
        .unwrap_or_default();
    let Some(mech) = Mech::choose(&offered, tls) else {
        let tls_required = features
            .child("starttls", ns::TLS)
            .is_some_and(|s| s.child("required", ns::TLS).is_some());
        return Err(if !tls && tls_required {
            C2sError::TlsRequiredByServer
        } else {
            C2sError::NoMechanism
        });
    };
    conn.auth(&step.next("sasl"), mech, user, password).await?;
    // RFC 6120 §6.4.6: after <success/>, a new stream (the server waits for our header).
    // A cluster node that does not own the user ends the old stream instead, with
    // <see-other-host/> (§4.9.3.19): told apart by the first bytes after <success/>.
    let step = step.next("stream header");
    conn.send_header(&step).await?;
    conn.error_before_restart(&step).await?;
    conn.framer.reset();
    features = conn.read_features(&step).await?;

    if features.child("bind", NS_BIND).is_none() {
        return Err(C2sError::Bind("no <bind/> feature after SASL".into()));
    }
    let jid = conn.bind(&step.next("bind"), resource).await?;
    if let Some(s) = features.child("session", NS_SESSION) {
        if s.child("optional", NS_SESSION).is_none() {
            conn.session(&step.next("session")).await?;
        }
    }

    let closing = Arc::new(AtomicBool::new(false));
    let (r, w) = tokio::io::split(conn.io);
    Ok(Session {
        jid,
        mechanism: mech.name(),
        writer: Writer {
            io: w,
            buf: Vec::new(),
            closing: Arc::clone(&closing),
        },
        reader: Reader {
            io: r,
            framer: conn.framer,
            done: false,
            closing,
        },
    })
}

/// The negotiation step in progress and its deadline.
struct Step {
    name: &'static str,
    deadline: Instant,
    timeout: Duration,
}

impl Step {
    fn new(timeout: Duration, name: &'static str) -> Step {
        Step {
            name,
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    fn next(&self, name: &'static str) -> Step {
        Step::new(self.timeout, name)
    }
}

/// A SASL mechanism this client runs, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mech {
    fn name(self) -> &'static str {
        match self {
            Mech::ScramSha256 => "SCRAM-SHA-256",
            Mech::ScramSha1 => "SCRAM-SHA-1",
            Mech::Plain => "PLAIN",
        }
    }

    /// The best mechanism in `offered`; PLAIN only when `tls`.
    fn choose(offered: &[&str], tls: bool) -> Option<Mech> {
        [Mech::ScramSha256, Mech::ScramSha1, Mech::Plain]
            .into_iter()
            .filter(|m| tls || *m != Mech::Plain)
            .find(|m| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name())))
    }

    fn client(self, user: &str, password: &str) -> Result<Box<dyn Mechanism + Send>, C2sError> {
        let creds = Credentials::default()
            .with_username(user)
            .with_password(password)
            .with_channel_binding(ChannelBinding::None);
        let sasl_err = |e: sasl::client::MechanismError| C2sError::Sasl(e.to_string());
        Ok(match self {
            Mech::ScramSha256 => {
                Box::new(Scram::<Sha256>::from_credentials(creds).map_err(sasl_err)?)
            }
            Mech::ScramSha1 => Box::new(Scram::<Sha1>::from_credentials(creds).map_err(sasl_err)?),
            Mech::Plain => Box::new(Plain::from_credentials(creds).map_err(sasl_err)?),
        })
    }
}

/// The stream during negotiation.
struct Conn<'a> {
    io: Transport,
    framer: Framer,
    domain: &'a str,
    timeout: Duration,
}

impl Conn<'_> {
    async fn write(&mut self, step: &Step, xml: &[u8]) -> Result<(), C2sError> {
        timeout_at(step.deadline, async {
            self.io.write_all(xml).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| C2sError::Timeout(step.name))??;
        Ok(())
    }

    /// The next frame, reading as needed until the step's deadline.
    async fn frame(&mut self, step: &Step) -> Result<Frame, C2sError> {
        // Bounded: each turn yields a frame, or reads at least one byte, or ends; and
        // the deadline bounds the reads.
        loop {
            if let Some(f) = self.framer.next_frame().map_err(C2sError::Xml)? {
                return Ok(f);
            }
            let n = timeout_at(step.deadline, fill(&mut self.io, &mut self.framer))
                .await
                .map_err(|_| C2sError::Timeout(step.name))??;
            if n == 0 {
                return Err(C2sError::Closed);
            }
        }
    }

    /// The next top-level element; a stream error or close is an error.
    async fn element(&mut self, step: &Step) -> Result<Element, C2sError> {
        match self.frame(step).await? {
            Frame::Element(e) if e.is("error", &Namespace::Streams) => Err(stream_error(&e)),
            Frame::Element(e) => Ok(e),
            Frame::Close => Err(C2sError::Closed),
            Frame::Header(_) => Err(C2sError::Protocol("an unexpected stream header".into())),
        }
    }

    /// Sends our stream header (RFC 6120 §4.7), waits for the server's and for its
    /// `<stream:features/>` (§4.3.2).
    async fn open(&mut self) -> Result<Node, C2sError> {
        let step = &Step::new(self.timeout, "stream header");
        self.send_header(step).await?;
        self.read_features(step).await
    }

    /// Sends our stream header (RFC 6120 §4.7).
    async fn send_header(&mut self, step: &Step) -> Result<(), C2sError> {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{}' \
             version='1.0' xml:lang='en'>",
            ns::CLIENT,
            ns::STREAMS,
            escape_attr(self.domain)
        );
        self.write(step, header.as_bytes()).await
    }

    /// After SASL `<success/>` (the framer still on the old stream): when the server's
    /// next bytes are `<stream:error`, it closed the old stream instead of waiting for the
    /// restart (a cluster node's `<see-other-host/>`, RFC 6120 §4.9.3.19): that error is
    /// returned. Anything else (its new header) is left for [`Conn::read_features`].
    async fn error_before_restart(&mut self, step: &Step) -> Result<(), C2sError> {
        const ERROR: &[u8] = b"<stream:error";
        // Bounded: each turn decides, or reads at least one byte, or ends; the deadline
        // bounds the reads.
        loop {
            let buf = self.framer.buffer_mut();
            if let Some(i) = buf
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                let rest = &buf[i..];
                let n = rest.len().min(ERROR.len());
                if rest[..n] != ERROR[..n] {
                    return Ok(());
                }
                if n == ERROR.len() {
                    return Err(match self.frame(step).await? {
                        Frame::Element(e) if e.is("error", &Namespace::Streams) => stream_error(&e),
                        _ => C2sError::Protocol("a malformed stream error after SASL".into()),
                    });
                }
            }
            let n = timeout_at(step.deadline, fill(&mut self.io, &mut self.framer))
                .await
                .map_err(|_| C2sError::Timeout(step.name))??;
            if n == 0 {
                return Err(C2sError::Closed);
            }
        }
    }

    /// Waits for the server's stream header and its `<stream:features/>` (§4.3.2).
    async fn read_features(&mut self, step: &Step) -> Result<Node, C2sError> {
        let h: StreamHeader = match self.frame(step).await? {
            Frame::Header(h) => h,
            Frame::Element(e) if e.is("error", &Namespace::Streams) => {
                return Err(stream_error(&e))
            }
            _ => {
                return Err(C2sError::Protocol(
                    "no stream header from the server".into(),
                ))
            }
        };
        if h.content_ns != Namespace::Client {
            return Err(C2sError::Protocol(
                "the server's stream is not jabber:client".into(),
            ));
        }
        let step = &step.next("stream features");
        let el = self.element(step).await?;
        if !el.is("features", &Namespace::Streams) {
            return Err(C2sError::Protocol(format!(
                "expected <stream:features/>, got <{}>",
                el.qname()
            )));
        }
        node(&el)
    }

    /// STARTTLS (RFC 6120 §5.4): `<starttls/>`, `<proceed/>`, the TLS handshake over the
    /// same TCP connection. The framer then expects a new stream.
    async fn starttls(
        mut self,
        roots: Option<Arc<rustls::RootCertStore>>,
    ) -> Result<Self, C2sError> {
        let step = Step::new(self.timeout, "starttls");
        self.write(&step, format!("<starttls xmlns='{}'/>", ns::TLS).as_bytes())
            .await?;
        let el = self.element(&step).await?;
        if el.is("failure", &Namespace::Tls) {
            return Err(C2sError::Tls(
                "the server refused STARTTLS (<failure/>)".into(),
            ));
        }
        if !el.is("proceed", &Namespace::Tls) {
            return Err(C2sError::Protocol(format!(
                "expected <proceed/>, got <{}>",
                el.qname()
            )));
        }
        // What follows are TLS records, then a new stream (§5.4.3.3).
        self.framer.discard_buffered();
        self.framer.reset();
        let verify = roots.is_some();
        let config = fedrouter::tls::client_config(roots, verify, None, &[])
            .map_err(|e| C2sError::Tls(e.to_string()))?;
        let name =
            fedrouter::tls::server_name(self.domain).map_err(|e| C2sError::Tls(e.to_string()))?;
        let Transport::Plain(tcp) = self.io else {
            return Err(C2sError::Protocol("STARTTLS on a TLS stream".into()));
        };
        let step = step.next("tls handshake");
        let tls = timeout_at(
            step.deadline,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| C2sError::Timeout(step.name))??;
        Ok(Conn {
            io: Transport::Tls(Box::new(tls)),
            framer: self.framer,
            domain: self.domain,
            timeout: self.timeout,
        })
    }

    /// SASL (RFC 6120 §6.4) with `mech`; `Ok` after `<success/>` with the server's SCRAM
    /// signature checked.
    async fn auth(
        &mut self,
        step: &Step,
        mech: Mech,
        user: &str,
        password: &str,
    ) -> Result<(), C2sError> {
        let mut client = mech.client(user, password)?;
        let initial = client.initial();
        let xml = format!(
            "<auth xmlns='{}' mechanism='{}'>{}</auth>",
            ns::SASL,
            mech.name(),
            encode(&initial)
        );
        self.write(step, xml.as_bytes()).await?;
        let sasl_err = |e: sasl::client::MechanismError| C2sError::Sasl(e.to_string());
        // Whether the server's final message (SCRAM `v=`) came in a challenge already, as
        // some older servers send it (RFC 6120 §6.3.10 prefers <success/>).
        let mut verified = false;
        let mut challenges = 0;
        for _ in 0..MAX_SASL_ROUNDS {
            let el = self.element(step).await?;
            if *el.namespace() != Namespace::Sasl {
                return Err(C2sError::Protocol(format!(
                    "expected a SASL element, got <{}>",
                    el.qname()
                )));
            }
            match el.name() {
                "challenge" => {
                    let data = decode(&el)?;
                    challenges += 1;
                    let response = if mech != Mech::Plain && challenges > 1 {
                        client.success(&data).map_err(sasl_err)?;
                        verified = true;
                        Vec::new()
                    } else {
                        client.response(&data).map_err(sasl_err)?
                    };
                    let xml = format!(
                        "<response xmlns='{}'>{}</response>",
                        ns::SASL,
                        encode(&response)
                    );
                    self.write(step, xml.as_bytes()).await?;
                }
                "success" => {
                    let data = decode(&el)?;
                    if !(verified && data.is_empty()) {
                        client.success(&data).map_err(sasl_err)?;
                    }
                    return Ok(());
                }
                "failure" => {
                    let n = node(&el)?;
                    let condition = n
                        .children
                        .iter()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| "unknown".into());
                    return Err(C2sError::AuthFailed { condition });
                }
                other => {
                    return Err(C2sError::Protocol(format!("unexpected SASL <{other}/>")));
                }
            }
        }
        Err(C2sError::Sasl(format!(
            "more than {MAX_SASL_ROUNDS} SASL round trips"
        )))
    }

    /// Sends an `iq` of type `set` with `payload` and id `id`; returns the answer's tree.
    async fn iq_set(&mut self, step: &Step, id: &str, payload: &str) -> Result<Node, C2sError> {
        let xml = format!("<iq type='set' id='{id}'>{payload}</iq>");
        self.write(step, xml.as_bytes()).await?;
        for _ in 0..MAX_SKIPPED {
            let el = self.element(step).await?;
            if el.is("iq", &Namespace::Client) && el.id() == Some(id) {
                return node(&el);
            }
        }
        Err(C2sError::Protocol(format!(
            "no answer to iq {id} among {MAX_SKIPPED} elements"
        )))
    }

    /// Resource binding (RFC 6120 §7.5–§7.6): returns the full JID.
    async fn bind(&mut self, step: &Step, resource: &str) -> Result<String, C2sError> {
        let payload = if resource.is_empty() {
            format!("<bind xmlns='{NS_BIND}'/>")
        } else {
            format!(
                "<bind xmlns='{NS_BIND}'><resource>{}</resource></bind>",
                escape_text(resource)
            )
        };
        let answer = self.iq_set(step, "bind_1", &payload).await?;
        if answer.attr("type") != Some("result") {
            return Err(C2sError::Bind(stanza_condition(&answer)));
        }
        answer
            .child("bind", NS_BIND)
            .and_then(|b| b.children.iter().find(|c| c.name == "jid"))
            .map(|j| j.text.trim().to_owned())
            .filter(|j| !j.is_empty())
            .ok_or_else(|| C2sError::Bind("no <jid/> in the bind result".into()))
    }

    /// The legacy session (RFC 3921 §3).
    async fn session(&mut self, step: &Step) -> Result<(), C2sError> {
        let payload = format!("<session xmlns='{NS_SESSION}'/>");
        let answer = self.iq_set(step, "session_1", &payload).await?;
        if answer.attr("type") != Some("result") {
            return Err(C2sError::Session(stanza_condition(&answer)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn node(el: &Element) -> Result<Node, C2sError> {
    Node::parse(el).map_err(C2sError::Xml)
}

/// The [`C2sError::StreamError`] of a `<stream:error/>` (RFC 6120 §4.9.2).
fn stream_error(el: &Element) -> C2sError {
    let Ok(n) = Node::parse(el) else {
        return C2sError::StreamError {
            condition: "undefined-condition".into(),
            text: None,
        };
    };
    let in_ns = |c: &&Node| c.ns == ns::STREAM_ERRORS;
    let condition = n
        .children
        .iter()
        .filter(in_ns)
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "undefined-condition".into());
    if condition == "see-other-host" {
        let host = n
            .children
            .iter()
            .filter(in_ns)
            .find(|c| c.name == "see-other-host")
            .map(|c| c.text.trim().to_owned())
            .unwrap_or_default();
        return C2sError::SeeOtherHost { host };
    }
    let text = n
        .children
        .iter()
        .filter(in_ns)
        .find(|c| c.name == "text")
        .map(|c| c.text.clone());
    C2sError::StreamError { condition, text }
}

/// The stanza error condition of an `iq` answer (RFC 6120 §8.3.3), or a description.
fn stanza_condition(iq: &Node) -> String {
    iq.children
        .iter()
        .find(|c| c.name == "error")
        .and_then(|e| {
            e.children
                .iter()
                .find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text")
        })
        .map(|c| c.name.clone())
        .unwrap_or_else(|| format!("answer of type {:?}", iq.attr("type").unwrap_or("")))
}

/// SASL payload encoding (RFC 6120 §6.4.2): base64, `=` for an empty payload.
fn encode(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        B64.encode(data)
    }
}

/// The decoded base64 payload of a SASL element (empty for none or `=`).
fn decode(el: &Element) -> Result<Vec<u8>, C2sError> {
    let text = el.text().trim();
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    B64.decode(text)
        .map_err(|e| C2sError::Sasl(format!("bad base64 in <{}/>: {e}", el.name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_preference() {
        let all = ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"];
        assert_eq!(Mech::choose(&all, true), Some(Mech::ScramSha256));
        assert_eq!(Mech::choose(&all[..2], true), Some(Mech::ScramSha1));
        assert_eq!(Mech::choose(&["PLAIN"], true), Some(Mech::Plain));
        assert_eq!(Mech::choose(&["PLAIN"], false), None);
        assert_eq!(Mech::choose(&["EXTERNAL", "DIGEST-MD5"], true), None);
    }

    #[test]
    fn sasl_payload_encoding() {
        assert_eq!(encode(b""), "=");
        assert_eq!(encode(b"n,,n=a"), "biwsbj1h");
    }

    #[test]
    fn session_halves_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Writer>();
        is_send::<Reader>();
        is_send::<Session>();
    }

    #[test]
    fn login_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let opts = ClientOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            domain: "example.test".into(),
            tls: TlsMode::Disabled,
            timeout: Duration::from_secs(1),
        };
        // Built, never polled: tokio::spawn needs the future to be Send.
        let f = login(&opts, "u", "p", "r");
        is_send(&f);
    }
}
