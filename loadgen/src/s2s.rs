//! An S2S stream driven over tokio: fedrouter's sans-IO [`S2sConnection`] (RFC 6120
//! negotiation, STARTTLS, SASL EXTERNAL, XEP-0220 dialback) on a real socket, with rustls
//! through tokio-rustls when the connection asks for TLS.
//!
//! [`Stream::next`] is the one loop: it writes what the connection wants sent, performs a
//! requested TLS handshake itself ([`Event::StartTls`] never reaches the caller), and returns
//! the next [`Event`], a command from the caller's channel, or the end of the socket. It
//! feeds the connection's deadlines ([`S2sConnection::poll_timeout`]) so keepalives and
//! negotiation timeouts work as in the server.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use fedrouter::stream::{Event, S2sConnection, TlsRole};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Read buffer size, bytes.
const READ_BUF: usize = 16 * 1024;

/// The TLS configurations a stream may need when its connection asks for STARTTLS.
#[derive(Debug, Clone, Default)]
pub struct TlsSetup {
    /// For outbound streams (we are the TLS client); `None` makes a STARTTLS request fail.
    pub client: Option<Arc<rustls::ClientConfig>>,
    /// For inbound streams (we are the TLS server).
    pub server: Option<Arc<rustls::ServerConfig>>,
}

enum Io {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Client(s) => s.read(buf).await,
            Io::Server(s) => s.read(buf).await,
            Io::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(buf).await,
            Io::Client(s) => s.write_all(buf).await,
            Io::Server(s) => s.write_all(buf).await,
            Io::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Io::Plain(s) => s.shutdown().await,
            Io::Client(s) => s.shutdown().await,
            Io::Server(s) => s.shutdown().await,
            Io::Gone => Ok(()),
        };
    }
}

/// What [`Stream::next`] returns.
#[derive(Debug)]
pub enum Input<C> {
    /// An event of the connection (never [`Event::StartTls`]).
    Event(Event),
    /// A command from the caller's channel.
    Cmd(C),
    /// The socket ended (peer closed, or an I/O error) or the connection is closed and
    /// everything was written.
    End,
}

/// One S2S stream on a socket.
pub struct Stream {
    io: Io,
    /// The protocol state; the caller sends stanzas and answers events through it.
    pub conn: S2sConnection,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    tls: TlsSetup,
    /// Bytes written to the socket (plaintext before TLS, TLS payload after).
    pub bytes_out: u64,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("local", &self.conn.local_domain())
            .field("remote", &self.conn.remote_domain())
            .finish()
    }
}

impl Stream {
    /// A stream over `socket` driving `conn` (fresh from [`S2sConnection::outbound`] or
    /// [`S2sConnection::inbound`]).
    pub fn new(socket: TcpStream, conn: S2sConnection, tls: TlsSetup) -> Stream {
        let _ = socket.set_nodelay(true);
        Stream {
            io: Io::Plain(socket),
            conn,
            rbuf: vec![0; READ_BUF],
            wbuf: Vec::new(),
            tls,
            bytes_out: 0,
        }
    }

    /// Ends the stream abruptly: the socket is closed with `SO_LINGER` 0, so the kernel
    /// sends a TCP RST and discards what is unread on our side and unsent on the peer's
    /// (a NAT timeout or a crash, not `</stream:stream>`). Later calls to [`Stream::next`]
    /// return [`Input::End`].
    pub fn reset(&mut self) {
        let io = std::mem::replace(&mut self.io, Io::Gone);
        let tcp = match &io {
            Io::Plain(s) => Some(s),
            Io::Client(s) => Some(s.get_ref().0),
            Io::Server(s) => Some(s.get_ref().0),
            Io::Gone => None,
        };
        if let Some(tcp) = tcp {
            let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
        }
        drop(io);
    }

    /// Writes everything the connection has to send.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.wbuf.clear();
        if self.conn.poll_transmit(&mut self.wbuf) > 0 {
            self.io.write_all(&self.wbuf).await?;
            self.bytes_out += self.wbuf.len() as u64;
        }
        Ok(())
    }

    async fn start_tls(&mut self, role: TlsRole) {
        let now = Instant::now();
        let io = std::mem::replace(&mut self.io, Io::Gone);
        let Io::Plain(tcp) = io else {
            self.conn.handle_tls_failed("TLS requested twice");
            return;
        };
        match role {
            TlsRole::Client { sni } => {
                let Some(cfg) = self.tls.client.clone() else {
                    self.conn.handle_tls_failed("no TLS client configuration");
                    return;
                };
                let name = match ServerName::try_from(sni.clone()) {
                    Ok(n) => n,
                    Err(e) => {
                        self.conn
                            .handle_tls_failed(&format!("bad server name {sni}: {e}"));
                        return;
                    }
                };
                match TlsConnector::from(cfg).connect(name, tcp).await {
                    Ok(s) => {
                        let chain = chain_of(s.get_ref().1.peer_certificates());
                        self.io = Io::Client(Box::new(s));
                        self.conn.handle_tls_established(
                            chain,
                            now,
                            rustls::pki_types::UnixTime::now(),
                        );
                    }
                    Err(e) => self.conn.handle_tls_failed(&e.to_string()),
                }
            }
            TlsRole::Server => {
                let Some(cfg) = self.tls.server.clone() else {
                    self.conn.handle_tls_failed("no TLS server configuration");
                    return;
                };
                match TlsAcceptor::from(cfg).accept(tcp).await {
                    Ok(s) => {
                        let chain = chain_of(s.get_ref().1.peer_certificates());
                        self.io = Io::Server(Box::new(s));
                        self.conn.handle_tls_established(
                            chain,
                            now,
                            rustls::pki_types::UnixTime::now(),
                        );
                    }
                    Err(e) => self.conn.handle_tls_failed(&e.to_string()),
                }
            }
        }
    }

    /// The next event, command or end. Cancel-safe only between calls: the caller must not
    /// drop the future while it runs a TLS handshake (it never does in loadgen).
    ///
    /// Errors: socket write failures (the stream is then unusable).
    pub async fn next<C>(&mut self, cmds: &mut mpsc::Receiver<C>) -> io::Result<Input<C>> {
        loop {
            if matches!(self.io, Io::Gone) && !self.conn.is_closed() {
                // Reset (or a failed STARTTLS): nothing more can be read or written.
                if let Some(ev) = self.conn.poll_event() {
                    return Ok(Input::Event(ev));
                }
                return Ok(Input::End);
            }
            if let Some(ev) = self.conn.poll_event() {
                if let Event::StartTls(role) = ev {
                    self.flush().await?;
                    self.start_tls(role).await;
                    continue;
                }
                return Ok(Input::Event(ev));
            }
            self.flush().await?;
            if self.conn.is_closed() {
                self.io.shutdown().await;
                return Ok(Input::End);
            }
            let deadline = self.conn.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = self.io.read(&mut self.rbuf) => match r {
                    Ok(0) | Err(_) => return Ok(Input::End),
                    Ok(n) => self.conn.handle_input(&self.rbuf[..n], Instant::now()),
                },
                c = cmds.recv() => match c {
                    Some(c) => return Ok(Input::Cmd(c)),
                    None => return Ok(Input::End),
                },
                () = sleep => self.conn.handle_timeout(Instant::now()),
            }
        }
    }
}

fn chain_of(certs: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certs
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}
