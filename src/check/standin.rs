//! `check`: the dialback stand-in, a receiving and authoritative server on the S2S core for the length of a check (XEP-0220 §2.1.3).

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::UnixTime;

use crate::config::{Config, Materialized};
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::stream::{CloseReason, Event, S2sConfig, S2sConnection, TlsRole};
use crate::tls::{self, ClientAuth, DomainCertResolver};

use super::*;

// ---------------------------------------------------------------------------------------
// The dialback stand-in
// ---------------------------------------------------------------------------------------

/// One `db:verify` the stand-in answered (XEP-0220 §2.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answered {
    /// The Receiving Server that asked (`from` of the request).
    pub(super) asked_by: String,
    /// Our domain it asked about (`to` of the request).
    pub(super) about: String,
    /// `valid`, `invalid` or `error`.
    pub(super) answer: String,
}

/// What the stand-in saw on one connection, in order.
#[derive(Debug, Clone)]
pub(super) struct Visit {
    /// Where it came from.
    pub(super) peer: SocketAddr,
    /// On a direct TLS listener (XEP-0368).
    pub(super) direct: bool,
    pub(super) seen: Vec<Seen>,
}

/// One thing the stand-in saw or did on a connection.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Seen {
    /// The peer's first stream header (RFC 6120 §4.7).
    Header {
        to: Option<String>,
        from: Option<String>,
        version: Option<String>,
    },
    /// STARTTLS completed (RFC 6120 §5.4.3.3).
    Tls,
    /// The peer's own `db:result` (XEP-0220 §2.1.2): it authenticates its verification
    /// connection as `claimed` before it asks anything (Prosody does).
    Claim { claimed: String },
    /// Our answer to that `db:result` (§2.1.4); `checked`: found by asking the claimed
    /// domain's authoritative server over the checker's stream (§2.1.3).
    Verdict {
        claimed: String,
        result: DialbackResult,
        checked: bool,
    },
    /// A `db:verify` we answered as our domain's authoritative server (§2.1.3).
    Asked(Answered),
    /// The stream ended (RFC 6120 §4.4, §4.9).
    Closed(CloseReason),
    /// The connection ended without a stream close, or failed.
    Dropped(String),
}

impl Visit {
    /// `a connection from 192.0.2.7:40112: stream header to='a.test' from='b.test'
    /// version='1.0', b.test authenticated it with its own db:result ...`.
    pub(super) fn story(&self) -> String {
        let mut parts = Vec::new();
        for s in &self.seen {
            parts.push(match s {
                Seen::Header { to, from, version } => header_text(to, from, version),
                Seen::Tls => "STARTTLS".to_owned(),
                Seen::Claim { claimed } => format!(
                    "{claimed} first authenticated that connection with its own db:result \
                     (dialback on the verification connection, XEP-0220 §2.1.2)"
                ),
                Seen::Verdict {
                    claimed,
                    result,
                    checked: true,
                } => format!(
                    "this check verified that key with {claimed}'s authoritative server over \
                     its own stream to it (db:verify, XEP-0220 §2.1.3) and answered {}",
                    result_text(*result)
                ),
                Seen::Verdict {
                    claimed, result, ..
                } => format!(
                    "this check answered {} ({claimed} is not the domain checked, so its key \
                     could not be verified)",
                    result_text(*result)
                ),
                Seen::Asked(a) => format!("{} asked about {}: {}", a.asked_by, a.about, a.answer),
                Seen::Closed(r) => match r {
                    CloseReason::SentError(c, t) => {
                        format!("this check closed it with <{c}/> ({t})")
                    }
                    CloseReason::ReceivedError(c, t) => format!(
                        "the peer closed it with <{c}/>{}",
                        t.as_deref().map(|t| format!(": {t}")).unwrap_or_default()
                    ),
                    CloseReason::PeerClosed => "the peer closed it".to_owned(),
                    CloseReason::TlsFailed(r) => format!("TLS failed: {r}"),
                    CloseReason::Local => "this check closed it".to_owned(),
                    CloseReason::CloseTimeout => {
                        "this check closed it (the peer did not close its side)".to_owned()
                    }
                },
                Seen::Dropped(why) => why.clone(),
            });
        }
        format!(
            "a connection from {}{}: {}",
            self.peer,
            if self.direct { " (direct TLS)" } else { "" },
            if parts.is_empty() {
                "nothing received".to_owned()
            } else {
                parts.join(", ")
            }
        )
    }

    pub(super) fn header(&self) -> Option<(&Option<String>, &Option<String>)> {
        self.seen.iter().find_map(|s| match s {
            Seen::Header { to, version, .. } => Some((to, version)),
            _ => None,
        })
    }
}

/// `stream header to='a.test' from='b.test' version='1.0'`, or what it lacks.
pub(super) fn header_text(
    to: &Option<String>,
    from: &Option<String>,
    version: &Option<String>,
) -> String {
    let mut t = String::from("stream header");
    let mut missing = Vec::new();
    for (name, value) in [("to", to), ("from", from), ("version", version)] {
        match value {
            Some(v) => {
                let _ = write!(t, " {name}='{v}'");
            }
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        let _ = write!(t, " (no {}", missing.join(", no "));
        if version.is_none() {
            t.push_str(": a pre-RFC 3920 server");
        }
        t.push(')');
    }
    t
}

pub(super) fn result_text(r: DialbackResult) -> String {
    match r {
        DialbackResult::Error(c) => format!("type='error' ({c})"),
        r => format!("type='{}'", r.type_str()),
    }
}

/// A `db:result` the peer sent on its verification connection (XEP-0220 §2.1.2), for the
/// checker to verify with the peer's authoritative server over its own stream to the
/// peer (§2.1.3); the verdict comes back on `reply`.
pub(super) struct VerifyRequest {
    pub(super) local: String,
    pub(super) stream_id: String,
    pub(super) key: String,
    pub(super) reply: mpsc::Sender<DialbackResult>,
}

/// What the stand-in's connections saw, shared with the checker.
#[derive(Default)]
pub(super) struct Journal(Mutex<Vec<Visit>>);

impl Journal {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Visit>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection; its index.
    pub(super) fn open(&self, peer: SocketAddr, direct: bool) -> usize {
        let mut v = self.lock();
        v.push(Visit {
            peer,
            direct,
            seen: Vec::new(),
        });
        v.len() - 1
    }

    pub(super) fn note(&self, visit: usize, seen: Seen) {
        if let Some(v) = self.lock().get_mut(visit) {
            v.seen.push(seen);
        }
    }
}

/// Listens on this configuration's free S2S addresses while a remote check runs and is
/// our domains' server for that moment (XEP-0220 §1.3 roles), with STARTTLS (or direct
/// TLS) and our certificates, driven by the same core as `fedrouter serve`:
///
/// - as the Authoritative Server it answers `db:verify` with our dialback secret (the core
///   does, §2.1.3);
/// - as the Receiving Server it verifies the peer's own `db:result` on that connection
///   (§2.1.2; Prosody authenticates its verification connection this way before it sends
///   `db:verify`) as the runtime does, by the XEP-0220 route: the key goes back to the
///   peer's authoritative server in a `db:verify`, over the stream the checker has open to
///   that domain ([`VerifyRequest`]). A claim for any other domain is answered
///   `remote-connection-failed` (the check opens no further streams).
///
/// Everything it sees is kept in a [`Journal`] for the report.
pub(super) struct StandIn {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) journal: Arc<Journal>,
    pub(super) requests: mpsc::Receiver<VerifyRequest>,
    pub(super) listening: Vec<SocketAddr>,
    pub(super) busy: Vec<SocketAddr>,
    pub(super) errors: Vec<String>,
}

/// What one stand-in connection shares.
pub(super) struct StandInShared {
    pub(super) cfg: Arc<S2sConfig>,
    pub(super) starttls: Arc<rustls::ServerConfig>,
    /// The domain being checked: the only one whose claims can be verified.
    pub(super) checked: String,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) journal: Arc<Journal>,
    pub(super) requests: mpsc::Sender<VerifyRequest>,
    pub(super) negotiation: Duration,
}

impl StandIn {
    pub(super) fn start(
        config: &Config,
        m: &Materialized,
        cfg: Arc<S2sConfig>,
        checked: &str,
    ) -> StandIn {
        let (tx, rx) = mpsc::channel();
        let mut me = StandIn {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            journal: Arc::new(Journal::default()),
            requests: rx,
            listening: Vec::new(),
            busy: Vec::new(),
            errors: Vec::new(),
        };
        let mut listeners = Vec::new();
        let sets = [(&config.listen.s2s, false), (&config.listen.s2s_tls, true)];
        for (addrs, direct) in sets {
            for &addr in addrs {
                if addr.port() == 0 || me.listening.contains(&addr) || me.busy.contains(&addr) {
                    continue;
                }
                // Without SO_REUSEPORT: a running server's listener makes this fail.
                match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => {
                        me.listening.push(addr);
                        listeners.push((l, direct));
                    }
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => me.busy.push(addr),
                    Err(e) => me.errors.push(format!("cannot listen on {addr}: {e}")),
                }
            }
        }
        if listeners.is_empty() {
            return me;
        }
        let mut resolver = DomainCertResolver::new();
        for c in &m.certificates {
            if let Err(e) = resolver.add(c) {
                me.errors.push(e.to_string());
            }
        }
        resolver.set_default(&config.domains[0]);
        let resolver = Arc::new(resolver);
        let direct = tls::server_config(
            Arc::clone(&resolver),
            ClientAuth::Request,
            &[tls::ALPN_XMPP_SERVER],
        );
        let shared = Arc::new(StandInShared {
            cfg,
            starttls: tls::server_config(resolver, ClientAuth::Request, &[]),
            checked: checked.to_owned(),
            stop: Arc::clone(&me.stop),
            journal: Arc::clone(&me.journal),
            requests: tx,
            negotiation: config.s2s.negotiation_timeout,
        });
        let spawned = std::thread::Builder::new()
            .name("check-standin".into())
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                // Bounded: ends when `stop` is set, or after 10 minutes as a backstop.
                let end = Instant::now() + Duration::from_secs(600);
                while !shared.stop.load(Ordering::SeqCst) && Instant::now() < end {
                    let mut idle = true;
                    for (l, is_direct) in &listeners {
                        let Ok((sock, peer)) = l.accept() else {
                            continue;
                        };
                        idle = false;
                        conns.retain(|t| !t.is_finished());
                        if conns.len() >= MAX_STANDIN_CONNS {
                            continue;
                        }
                        let tls_cfg = is_direct.then(|| Arc::clone(&direct));
                        let shared = Arc::clone(&shared);
                        if let Ok(t) = std::thread::Builder::new()
                            .name("check-standin-conn".into())
                            .spawn(move || serve_verify(sock, peer, tls_cfg, &shared))
                        {
                            conns.push(t);
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                for t in conns {
                    let _ = t.join();
                }
            });
        match spawned {
            Ok(t) => me.thread = Some(t),
            Err(e) => me.errors.push(format!("cannot start a thread: {e}")),
        }
        me
    }

    pub(super) fn visits(&self) -> Vec<Visit> {
        self.journal.lock().clone()
    }

    pub(super) fn stop(mut self) {
        self.halt();
    }

    pub(super) fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One inbound connection to the stand-in, driven by an inbound [`S2sConnection`] over a
/// [`Session`]; the peer's `db:result`s go to the checker ([`VerifyRequest`]) and their
/// verdicts back to the core, as the runtime's `VerifyNeeded` handling does.
pub(super) fn serve_verify(
    sock: TcpStream,
    peer: SocketAddr,
    direct: Option<Arc<rustls::ServerConfig>>,
    sh: &StandInShared,
) {
    let visit = sh.journal.open(peer, direct.is_some());
    let Ok(mut wire) = Wire::new(sock) else {
        return;
    };
    let end = Instant::now() + sh.negotiation * 2;
    // A handshake does not look at `stop`: keep it short.
    let handshake_end = (Instant::now() + Duration::from_secs(10)).min(end);
    let mut chain = None;
    if let Some(tls_cfg) = direct {
        let res = rustls::ServerConnection::new(tls_cfg)
            .map_err(|e| e.to_string())
            .and_then(|c| wire.start_tls(rustls::Connection::Server(c), handshake_end));
        if let Err(e) = res {
            sh.journal
                .note(visit, Seen::Dropped(format!("TLS failed: {e}")));
            return;
        }
        chain = Some((wire.peer_chain(), UnixTime::now()));
    }
    let conn = S2sConnection::inbound(Arc::clone(&sh.cfg), rand::random(), chain, Instant::now());
    let mut s = Session::new(wire, conn);
    let journal = Arc::clone(&sh.journal);
    s.before_send = Some(Box::new(move |out: &[u8]| {
        for a in verify_answers(out) {
            journal.note(visit, Seen::Asked(a));
        }
    }));
    let mut header_noted = false;
    // (local, claimed domain, verdict to come)
    let mut waiting: Vec<(String, String, mpsc::Receiver<DialbackResult>)> = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) && Instant::now() < end && !s.conn.is_closed() {
        if let Err(e) = s.turn() {
            sh.journal
                .note(visit, Seen::Dropped(format!("connection error: {e}")));
            break;
        }
        if !header_noted {
            if let Some(h) = &s.docs[0].header {
                header_noted = true;
                let (to, from, version) = (h.to.clone(), h.from.clone(), h.version.clone());
                sh.journal.note(visit, Seen::Header { to, from, version });
            }
        }
        while let Some(ev) = s.conn.poll_event() {
            match ev {
                Event::StartTls(TlsRole::Server) => {
                    // `<proceed/>` goes out in plaintext first (RFC 6120 §5.4.2.3).
                    let ok = s
                        .flush()
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            rustls::ServerConnection::new(Arc::clone(&sh.starttls))
                                .map_err(|e| e.to_string())
                        })
                        .and_then(|c| {
                            let deadline = (Instant::now() + Duration::from_secs(10)).min(end);
                            s.wire.start_tls(rustls::Connection::Server(c), deadline)
                        });
                    match ok {
                        Ok(()) => {
                            sh.journal.note(visit, Seen::Tls);
                            s.restart_observer();
                            let chain = s.wire.peer_chain();
                            s.conn
                                .handle_tls_established(chain, Instant::now(), UnixTime::now());
                        }
                        Err(e) => s.conn.handle_tls_failed(&e),
                    }
                }
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => {
                    sh.journal.note(
                        visit,
                        Seen::Claim {
                            claimed: remote.clone(),
                        },
                    );
                    let (reply, verdict) = mpsc::channel();
                    let asked = remote.eq_ignore_ascii_case(&sh.checked)
                        && sh
                            .requests
                            .send(VerifyRequest {
                                local: local.clone(),
                                stream_id,
                                key,
                                reply,
                            })
                            .is_ok();
                    if asked {
                        waiting.push((local, remote, verdict));
                    } else {
                        let result =
                            DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed);
                        s.conn
                            .handle_dialback_verdict(&local, &remote, result, Instant::now());
                        sh.journal.note(
                            visit,
                            Seen::Verdict {
                                claimed: remote,
                                result,
                                checked: false,
                            },
                        );
                    }
                }
                Event::Closed(reason) => sh.journal.note(visit, Seen::Closed(reason)),
                _ => {}
            }
        }
        waiting.retain(|(local, remote, verdict)| {
            let result = match verdict.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => return true,
                // The checker is done with its stream: nobody can verify the key.
                Err(mpsc::TryRecvError::Disconnected) => {
                    DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed)
                }
            };
            s.conn
                .handle_dialback_verdict(local, remote, result, Instant::now());
            sh.journal.note(
                visit,
                Seen::Verdict {
                    claimed: remote.clone(),
                    result,
                    checked: true,
                },
            );
            false
        });
        if s.eof {
            if !s.conn.is_closed() {
                sh.journal.note(
                    visit,
                    Seen::Dropped("the peer closed the TCP connection".to_owned()),
                );
            }
            break;
        }
    }
    s.finish();
}

/// The `<db:verify from='…' to='…' id='…' type='…'/>` answers in bytes we send (the
/// writer's fixed form, XEP-0220 §2.1.3).
pub(super) fn verify_answers(out: &[u8]) -> Vec<Answered> {
    let text = String::from_utf8_lossy(out);
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find("<db:verify ") {
        let start = at + i;
        let Some(end) = text[start..].find('>') else {
            break;
        };
        let tag = &text[start..=start + end];
        at = start + end + 1;
        let attr = |name: &str| -> Option<String> {
            let pat = format!(" {name}='");
            let i = tag.find(&pat)? + pat.len();
            let j = tag[i..].find('\'')?;
            Some(tag[i..i + j].to_owned())
        };
        if let (Some(from), Some(to), Some(ty)) = (attr("from"), attr("to"), attr("type")) {
            found.push(Answered {
                asked_by: to,
                about: from,
                answer: ty,
            });
        }
    }
    found
}
