//! `check`: the one blocking transport (TCP, rustls) that drives the sans-IO S2S core.

use std::fmt::Write as _;
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::stream::S2sConnection;
use crate::xml::tree::Node;
use crate::xml::{Frame, Framer, Limits, Namespace, StreamHeader};

use super::*;

// ---------------------------------------------------------------------------------------
// Blocking transport
// ---------------------------------------------------------------------------------------

pub(super) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

pub(super) fn flush_tls(tls: &mut rustls::Connection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(sock)?;
    }
    Ok(())
}

/// Decrypted bytes already there: `Some(0)` at the end of the stream, `None` for none yet.
pub(super) fn plaintext(tls: &mut rustls::Connection, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match tls.reader().read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// What a TLS handshake of ours showed.
pub(super) struct Handshake {
    /// The server's certificate chain.
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// With a certificate of ours to present: whether the server asked for one (a
    /// CertificateRequest, RFC 8446 §4.3.2, RFC 5246 §7.4.4), i.e. whether it saw ours;
    /// a server that does not ask cannot offer SASL EXTERNAL (XEP-0178 §3).
    pub(super) asked_for_ours: Option<bool>,
}

/// Presents what `inner` presents, noting whether the server asked for a client
/// certificate at all (rustls asks the resolver only then).
#[derive(Debug)]
pub(super) struct NoteCertRequest {
    pub(super) inner: Arc<dyn ResolvesClientCert>,
    pub(super) asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for NoteCertRequest {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// A blocking socket, plain or TLS; a read waits at most [`READ_SLICE`].
pub(super) struct Wire {
    pub(super) sock: TcpStream,
    pub(super) tls: Option<rustls::Connection>,
}

impl Wire {
    pub(super) fn new(sock: TcpStream) -> io::Result<Wire> {
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(READ_SLICE))?;
        sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let _ = sock.set_nodelay(true);
        Ok(Wire { sock, tls: None })
    }

    pub(super) fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.sock.write_all(data),
            Some(tls) => {
                tls.writer().write_all(data)?;
                flush_tls(tls, &mut self.sock)
            }
        }
    }

    /// Some plaintext: `Some(0)` when the peer closed, `None` when nothing came in one
    /// read slice.
    pub(super) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(tls) = &mut self.tls else {
            return match self.sock.read(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if would_block(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        if let Some(n) = plaintext(tls, buf)? {
            return Ok(Some(n));
        }
        match tls.read_tls(&mut self.sock) {
            Ok(0) => return Ok(Some(0)),
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            let _ = flush_tls(tls, &mut self.sock);
            return Err(io::Error::other(e));
        }
        flush_tls(tls, &mut self.sock)?;
        plaintext(tls, buf)
    }

    /// Runs a TLS handshake on the socket (either role), until `deadline`.
    pub(super) fn start_tls(
        &mut self,
        conn: rustls::Connection,
        deadline: Instant,
    ) -> Result<(), String> {
        let tls = self.tls.insert(conn);
        loop {
            flush_tls(tls, &mut self.sock).map_err(|e| e.to_string())?;
            if !tls.is_handshaking() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("the handshake did not complete in time".into());
            }
            match tls.read_tls(&mut self.sock) {
                Ok(0) => return Err("the peer closed the connection during the handshake".into()),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = flush_tls(tls, &mut self.sock);
                        return Err(e.to_string());
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    pub(super) fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        self.tls
            .as_ref()
            .and_then(|t| t.peer_certificates())
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// `TLSv1_3, TLS13_AES_256_GCM_SHA384, ALPN xmpp-server`.
    pub(super) fn tls_summary(&self) -> String {
        let Some(t) = &self.tls else {
            return "no TLS".into();
        };
        let mut s = match t.protocol_version() {
            Some(v) => format!("{v:?}"),
            None => "unknown version".into(),
        };
        if let Some(cs) = t.negotiated_cipher_suite() {
            let _ = write!(s, ", {:?}", cs.suite());
        }
        if let Some(alpn) = t.alpn_protocol() {
            let _ = write!(s, ", ALPN {}", String::from_utf8_lossy(alpn));
        }
        s
    }

    pub(super) fn shutdown(&mut self) {
        if let Some(t) = &mut self.tls {
            t.send_close_notify();
            let _ = flush_tls(t, &mut self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// One stream document as the peer sent it (a new one after each restart).
#[derive(Debug, Default)]
pub(super) struct Doc {
    pub(super) header: Option<StreamHeader>,
    pub(super) features: Option<Node>,
}

/// An [`S2sConnection`] of either direction over a [`Wire`], with a second framer that
/// keeps the peer's headers and features for the report: the one pump of this module,
/// for the streams `check` opens and for the stand-in's inbound ones.
pub(super) struct Session {
    pub(super) wire: Wire,
    pub(super) conn: S2sConnection,
    pub(super) observer: Framer,
    pub(super) docs: Vec<Doc>,
    pub(super) eof: bool,
    pub(super) buf: Vec<u8>,
    /// `db:result` answers (with a `type`, XEP-0220 §2.1.4) the peer sent: tells its
    /// `remote-server-timeout` answer from our own deadline, which the core reports alike.
    pub(super) result_answers: usize,
    /// Sees every byte before it is sent (the stand-in records its `db:verify` answers
    /// there, before the peer can act on them).
    pub(super) before_send: Option<BeforeSend>,
}

/// See [`Session::before_send`].
pub(super) type BeforeSend = Box<dyn FnMut(&[u8]) + Send>;

impl Session {
    pub(super) fn new(wire: Wire, conn: S2sConnection) -> Session {
        Session {
            wire,
            conn,
            observer: Framer::new(Limits::default()),
            docs: vec![Doc::default()],
            eof: false,
            buf: vec![0; 16 * 1024],
            result_answers: 0,
            before_send: None,
        }
    }

    /// The features of the first stream document; none (empty) for a pre-1.0 peer, whose
    /// header has no version and which sends no features (RFC 6120 §4.7.5).
    pub(super) fn first_features(&self) -> Option<Node> {
        let doc = &self.docs[0];
        doc.features.clone().or_else(|| {
            doc.header
                .as_ref()
                .is_some_and(|h| h.version.is_none())
                .then(Node::default)
        })
    }

    /// Whether the current stream document's features arrived (or the peer is pre-1.0,
    /// RFC 6120 §4.7.5): negotiation is over and authentication under way.
    pub(super) fn negotiated(&self) -> bool {
        self.docs.last().is_some_and(|d| {
            d.features.is_some() || d.header.as_ref().is_some_and(|h| h.version.is_none())
        })
    }

    /// After TLS: the peer starts a new document.
    pub(super) fn restart_observer(&mut self) {
        self.observer = Framer::new(Limits::default());
        self.docs.push(Doc::default());
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        self.conn.poll_transmit(&mut out);
        if out.is_empty() {
            return Ok(());
        }
        if let Some(see) = &mut self.before_send {
            see(&out);
        }
        self.wire.send(&out)
    }

    /// Sends what is due, reads for at most one read slice, feeds both framers, and
    /// drives the connection's deadlines. What that makes the connection send goes out at
    /// the next turn (or [`Session::finish`]), after the caller has seen its events.
    pub(super) fn turn(&mut self) -> io::Result<()> {
        self.flush()?;
        if !self.eof {
            match self.wire.recv(&mut self.buf)? {
                Some(0) => self.eof = true,
                Some(n) => {
                    let now = Instant::now();
                    self.conn.handle_input(&self.buf[..n], now);
                    self.observer.feed(&self.buf[..n]);
                    let doc = self.docs.last_mut().expect("one document at least");
                    // Bounded by the bytes fed.
                    while let Ok(Some(frame)) = self.observer.next_frame() {
                        match frame {
                            Frame::Header(h) => doc.header = Some(h),
                            Frame::Element(el)
                                if el.name() == "features"
                                    && *el.namespace() == Namespace::Streams =>
                            {
                                doc.features = Some(Node::parse(&el).unwrap_or_default());
                            }
                            Frame::Element(el)
                                if el.is("result", &Namespace::Dialback)
                                    && el.type_().is_some() =>
                            {
                                self.result_answers += 1;
                            }
                            _ => {}
                        }
                    }
                }
                None => {}
            }
        }
        self.conn.handle_timeout(Instant::now());
        Ok(())
    }

    /// Closes our stream (RFC 6120 §4.4) and the socket, without waiting.
    pub(super) fn finish(mut self) {
        if !self.conn.is_closed() {
            self.conn.close(None, Instant::now());
        }
        let _ = self.flush();
        self.wire.shutdown();
    }
}
