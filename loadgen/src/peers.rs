//! The simulated remote servers ("peers"): Gmail-style XMPP servers for the domains of the
//! [`Topology`](crate::topology::Topology), each accepting the SUT's S2S streams on its own loopback address and
//! opening its own S2S streams to the SUT (RFC 6120 §4), authenticated with Server Dialback
//! (XEP-0220) or TLS + SASL EXTERNAL (XEP-0178).
//!
//! ```text
//!             ┌──────── peer server s (domains s·G .. s·G+G−1) ────────┐
//!  SUT ──S2S──► listener 127.78.x.y:5269 ─► inbound task per stream     │
//!             │      db:result ─► db:verify via our outbound stream ──┐ │
//!             │      stanzas ─► World::deliver ─► reaction ─┐         │ │
//!  SUT ◄─S2S──┤ outbound task: one stream, G domains (dialback      ◄─┘ │
//!             │   piggybacking, XEP-0220 §2.4), or one per domain    ◄──┘
//!             └──────────────────────────────────────────────────────────┘
//! ```
//!
//! With dialback, one outbound stream carries every domain of its server (Google-Apps-style
//! multiplexing): the first domain in the stream header, the others by further
//! `db:result`s. SASL EXTERNAL authenticates only the header's domain (XEP-0178 §3), so with
//! it each domain gets its own stream.
//!
//! Every peer answers the SUT's `db:verify` for its own keys (the connection does that with
//! the peers' secret), and checks the SUT's own dialback keys for real: a `db:result` on an
//! inbound stream is verified by a `db:verify` to the SUT over the server's outbound stream.
//!
//! With [`PeerOptions::bidi`] (`--peer-bidi`), the peers' outbound streams ask for XEP-0288
//! bidirectional streams when the SUT offers them, and what the SUT sends back on them is
//! received and answered like what arrives on a stream the SUT opened: a SUT that supports
//! it then needs no stream of its own to the peer for stanzas. [`Peers::sockets`] counts
//! the TCP connections each way, so the saving is measured.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedrouter::dialback::{DialbackErrorCondition, DialbackResult, DialbackSecret};
use fedrouter::stanza::StanzaKind;
use fedrouter::stream::sm::AckPolicy;
use fedrouter::stream::{
    AuthPolicy, CloseReason, Event, FederationPolicy, PeerCertVerifier, PeerPolicy, S2sConfig,
    S2sConnection, Timeouts, TlsPolicy,
};
use fedrouter::tls::{self, CertifiedDomain, ClientAuth, DomainCertResolver};
use fedrouter::xml::{Element, Limits};
use fedrouter_testkit::TestCa;
use rand::Rng as _;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Cause;
use crate::report::steps;
use crate::s2s::{Input, Stream, TlsSetup};
use crate::stanzas;
use crate::targets::{self, SutS2s};
use crate::world::World;

/// Commands queued per outbound stream.
const OUT_QUEUE: usize = 4096;
/// Pause before a failed dialback is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How the peers authenticate their streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAuth {
    /// Server Dialback (XEP-0220), Google-style.
    Dialback,
    /// TLS + SASL EXTERNAL with certificates from loadgen's CA (XEP-0178).
    External,
}

/// How the peers behave.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// The SUT's S2S addresses with their SRV weights (where outbound streams connect):
    /// each connection tries them in RFC 2782 order ([`crate::targets::connect_order`]),
    /// so the streams spread over a cluster's nodes by weight, and a stream whose node
    /// died reconnects to another. Not empty.
    pub sut_s2s: Vec<SutS2s>,
    /// STARTTLS: `Disabled` (Google-style plain TCP), `Optional` (WebEx-style: offered,
    /// no certificate check) or `Required`.
    pub tls: TlsPolicy,
    /// Authentication method.
    pub auth: PeerAuth,
    /// Issues every peer domain's certificate when TLS may be used.
    pub ca: Option<Arc<TestCa>>,
    /// Roots that verify the SUT's certificate (required with [`PeerAuth::External`]).
    pub sut_roots: Option<Arc<RootCertStore>>,
    /// Bound of one TCP connect.
    pub connect_timeout: Duration,
    /// XEP-0198 on every stream, both directions: peers offer `urn:xmpp:sm:3` on the
    /// streams they accept, enable it on the streams they open when the SUT offers it, keep
    /// what they sent until the SUT acknowledges it and send it again on the next stream.
    pub sm: bool,
    /// The cadence of the peers' `<r/>` requests when `sm` is set.
    pub sm_acks: AckPolicy,
    /// Churn ends streams abruptly (TCP RST with `SO_LINGER` 0, in-flight data lost) instead
    /// of `</stream:stream>`, and also resets the streams the SUT opened to that server.
    pub churn_reset: bool,
    /// XEP-0288 bidirectional streams: the peers request bidi on the streams they open when
    /// the SUT offers it, and take the SUT's stanzas on them; they offer it on the streams
    /// the SUT opens. Off: one stream each way, as before XEP-0288.
    pub bidi: bool,
}

/// TCP connections between the peers and the SUT since the start ([`Peers::sockets`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sockets {
    /// Opened by the peers to the SUT (their outbound streams, reconnections included).
    pub opened: u64,
    /// Opened by the SUT to the peers (its outbound streams and dialback verification
    /// connections).
    pub accepted: u64,
    /// Peer outbound streams on which bidi was negotiated.
    pub bidi: u64,
    /// Peer servers (SRV targets) that accepted at least one connection from the SUT.
    #[serde(default)]
    pub accepting_servers: u64,
    /// The most connections one peer server accepted from the SUT: with outbound
    /// multiplexing by target (XEP-0220 §2.4) about one per SUT shard (plus dialback
    /// verification connections), without it one per domain the server hosts.
    #[serde(default)]
    pub accepted_max_per_server: u64,
}

/// Errors starting the peers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// A listener could not bind its loopback address.
    #[error("peer server {server} cannot listen on {addr}: {source}")]
    Bind {
        /// Server index.
        server: u32,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Certificates could not be made or TLS configured.
    #[error("peer TLS: {0}")]
    Tls(String),
    /// SASL EXTERNAL needs the SUT's CA.
    #[error("--peer-auth external needs the SUT's CA certificate (--sut-ca)")]
    NoSutRoots,
}

enum OutCmd {
    /// A stanza from a user of domain `domain` (index).
    Send { domain: u32, bytes: Vec<u8> },
    /// Ask the SUT (authoritative for its domain) about a key it sent on an inbound stream.
    Verify {
        local: String,
        stream_id: String,
        key: String,
        reply: mpsc::Sender<InCmd>,
    },
    /// Authenticate this local domain again (after a failed dialback).
    Redialback(String),
    /// Close the stream and open a new one.
    Churn,
    /// Close the stream and end.
    Stop,
}

enum InCmd {
    Verdict {
        local: String,
        remote: String,
        result: DialbackResult,
    },
    /// End the stream with a TCP RST (churn with `churn_reset`).
    Reset,
    Stop,
}

struct Shared {
    world: Arc<World>,
    opts: PeerOptions,
    /// Per server, its outbound streams' command queues (none for servers another process
    /// simulates).
    out: Vec<Vec<mpsc::Sender<OutCmd>>>,
    /// Per server, its S2S configuration (`None` for servers another process of a split
    /// run simulates).
    cfgs: Vec<Option<Arc<S2sConfig>>>,
    tls: TlsSetup,
    /// Per domain, the client TLS configuration presenting its certificate (External).
    client_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// The streams the SUT opened, with the index of the peer server that accepted each.
    inbound: Mutex<Vec<(u32, mpsc::Sender<InCmd>)>>,
    ready_domains: AtomicU32,
    /// Stanzas sent again on a new stream because the last one did not acknowledge them.
    resent: AtomicU64,
    /// TCP connections opened to the SUT, accepted from it, and bidi streams.
    opened: AtomicU64,
    accepted: AtomicU64,
    /// Per peer server, connections accepted from the SUT.
    accepted_by: Vec<AtomicU64>,
    bidi_streams: AtomicU64,
}

impl Shared {
    /// Server `s`'s configuration; only servers of this process have streams.
    fn cfg(&self, s: usize) -> Arc<S2sConfig> {
        self.cfgs[s]
            .clone()
            .expect("streams run only for this process's servers")
    }

    fn stream_of(&self, domain: u32) -> (usize, usize) {
        let s = self.world.topo.server_of(domain);
        let i = match self.opts.auth {
            PeerAuth::Dialback => 0,
            PeerAuth::External => (domain - self.world.topo.server_domains(s).start) as usize,
        };
        (s as usize, i)
    }
}

/// The running peers.
pub struct Peers {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    accept: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("servers", &self.shared.out.len())
            .finish()
    }
}

fn peer_policy(opts: &PeerOptions) -> PeerPolicy {
    match opts.auth {
        PeerAuth::Dialback => PeerPolicy {
            tls: opts.tls,
            auth: AuthPolicy::Dialback,
            verify_certificates: false,
            allow: true,
            bidi: opts.bidi,
            multiplex: true,
        },
        PeerAuth::External => PeerPolicy {
            tls: TlsPolicy::Required,
            auth: AuthPolicy::SaslExternal,
            verify_certificates: true,
            allow: true,
            bidi: opts.bidi,
            multiplex: true,
        },
    }
}

impl Peers {
    /// Binds every peer server's listener and starts its streams (must run inside a tokio
    /// runtime). Returns once every listener is bound; streams authenticate in the
    /// background ([`Peers::wait_ready`]).
    ///
    /// Errors: a listener that cannot bind, certificate or TLS set-up failures.
    pub async fn start(world: Arc<World>, opts: PeerOptions) -> Result<Peers, PeerError> {
        let topo = world.topo.clone();
        let secret = DialbackSecret::generate(&mut rand::rng());
        let policy = peer_policy(&opts);
        let uses_tls = opts.tls != TlsPolicy::Disabled || opts.auth == PeerAuth::External;
        if opts.auth == PeerAuth::External && opts.sut_roots.is_none() {
            return Err(PeerError::NoSutRoots);
        }
        // Certificates: one per domain, from loadgen's CA.
        let mut certs = Vec::new();
        if uses_tls {
            let ca = match &opts.ca {
                Some(ca) => ca.clone(),
                None => {
                    Arc::new(TestCa::new("loadgen CA").map_err(|e| PeerError::Tls(e.to_string()))?)
                }
            };
            for d in (0..topo.peers).filter(|&d| topo.owns_domain(d)) {
                certs.push((
                    d,
                    ca.issue(&topo.domain(d))
                        .map_err(|e| PeerError::Tls(e.to_string()))?
                        .assemble(CertifiedDomain::new)
                        .map_err(|e| PeerError::Tls(e.to_string()))?,
                ));
            }
        }
        let tls_setup = if uses_tls {
            let mut resolver = DomainCertResolver::new();
            for (_, c) in &certs {
                resolver.add(c).map_err(|e| PeerError::Tls(e.to_string()))?;
            }
            let server = tls::server_config(Arc::new(resolver), ClientAuth::Request, &[]);
            let verify = opts.auth == PeerAuth::External;
            let client = tls::client_config(opts.sut_roots.clone(), verify, None, &[])
                .map_err(|e| PeerError::Tls(e.to_string()))?;
            TlsSetup {
                client: Some(client),
                server: Some(server),
            }
        } else {
            TlsSetup::default()
        };
        let mut client_tls = vec![None; topo.peers as usize];
        if opts.auth == PeerAuth::External {
            for (d, c) in &certs {
                client_tls[*d as usize] = Some(
                    tls::client_config(opts.sut_roots.clone(), true, Some(c), &[])
                        .map_err(|e| PeerError::Tls(e.to_string()))?,
                );
            }
        }
        let verifier: Option<Arc<dyn PeerCertVerifier>> = opts
            .sut_roots
            .clone()
            .map(|r| Arc::new(tls::RootsVerifier::new(r)) as Arc<dyn PeerCertVerifier>);

        let mut cfgs = Vec::new();
        let mut out = Vec::new();
        let mut receivers = Vec::new();
        for s in 0..topo.servers() {
            if !topo.owns_server(s) {
                // Another process of a split run simulates it (`--procs`).
                cfgs.push(None);
                out.push(Vec::new());
                receivers.push(Vec::new());
                continue;
            }
            let domains: Vec<String> = topo.server_domains(s).map(|d| topo.domain(d)).collect();
            let mut key = [0u8; 32];
            rand::rng().fill(&mut key[..]);
            cfgs.push(Some(Arc::new(S2sConfig {
                certificate_domains: if uses_tls {
                    domains.clone()
                } else {
                    Vec::new()
                },
                local_domains: domains,
                policy: FederationPolicy {
                    default: policy,
                    domains: Default::default(),
                },
                dialback_secret: secret.clone(),
                stream_id_key: key,
                cert_verifier: verifier.clone(),
                limits: Limits::default(),
                timeouts: Timeouts {
                    idle: None,
                    ..Timeouts::default()
                },
                stream_management: opts.sm.then_some(opts.sm_acks),
            })));
            let n = match opts.auth {
                PeerAuth::Dialback => 1,
                PeerAuth::External => topo.server_domains(s).len(),
            };
            let mut txs = Vec::new();
            let mut rxs = Vec::new();
            for _ in 0..n {
                let (tx, rx) = mpsc::channel(OUT_QUEUE);
                txs.push(tx);
                rxs.push(rx);
            }
            out.push(txs);
            receivers.push(rxs);
        }
        let shared = Arc::new(Shared {
            world,
            opts,
            out,
            cfgs,
            tls: tls_setup,
            client_tls,
            inbound: Mutex::new(Vec::new()),
            ready_domains: AtomicU32::new(0),
            resent: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            accepted_by: (0..topo.servers()).map(|_| AtomicU64::new(0)).collect(),
            bidi_streams: AtomicU64::new(0),
        });
        // Listeners first, so the SUT can call back as soon as our streams open.
        let mut accept = Vec::new();
        for s in (0..topo.servers()).filter(|&s| topo.owns_server(s)) {
            let addr = topo.server_addr(s);
            let listener = bind(addr).map_err(|source| PeerError::Bind {
                server: s,
                addr,
                source,
            })?;
            accept.push(tokio::spawn(accept_loop(shared.clone(), s, listener)));
        }
        let mut tasks = Vec::new();
        for (s, rxs) in receivers.into_iter().enumerate() {
            let first = topo.server_domains(s as u32).start;
            for (i, rx) in rxs.into_iter().enumerate() {
                let domains: Vec<u32> = match shared.opts.auth {
                    PeerAuth::Dialback => topo.server_domains(s as u32).collect(),
                    PeerAuth::External => vec![first + i as u32],
                };
                tasks.push(tokio::spawn(outbound_task(shared.clone(), s, domains, rx)));
            }
        }
        Ok(Peers {
            shared,
            tasks,
            accept,
        })
    }

    /// Remote domains whose outbound stream is authenticated now.
    pub fn ready_domains(&self) -> u32 {
        self.shared.ready_domains.load(Ordering::Acquire)
    }

    /// Waits until every domain's outbound stream is authenticated, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let all = self.shared.world.topo.own_domains();
        while Instant::now() < until {
            if self.ready_domains() >= all {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.ready_domains() >= all
    }

    /// Sends `bytes` (a stanza from a user of remote domain `domain`) to the SUT, queued
    /// while the domain's stream is not authenticated. Waits when the queue is full.
    pub async fn send(&self, domain: u32, bytes: Vec<u8>) {
        let (s, i) = self.shared.stream_of(domain);
        let _ = self.shared.out[s][i]
            .send(OutCmd::Send { domain, bytes })
            .await;
    }

    /// Closes server `s`'s outbound streams and opens new ones (churn); stanzas sent
    /// meanwhile wait for the new streams.
    pub async fn churn(&self, s: u32) {
        for tx in &self.shared.out[s as usize] {
            let _ = tx.send(OutCmd::Churn).await;
        }
        if self.shared.opts.churn_reset {
            let resets: Vec<mpsc::Sender<InCmd>> = {
                let mut inbound = self.shared.inbound.lock().expect("lock");
                inbound.retain(|(_, tx)| !tx.is_closed());
                inbound
                    .iter()
                    .filter(|(srv, _)| *srv == s)
                    .map(|(_, tx)| tx.clone())
                    .collect()
            };
            for tx in resets {
                let _ = tx.try_send(InCmd::Reset);
            }
        }
    }

    /// Stanzas the peers sent again on a new stream because the SUT had not acknowledged
    /// them when the last one ended (XEP-0198; 0 without `sm`).
    pub fn resent(&self) -> u64 {
        self.shared.resent.load(Ordering::Relaxed)
    }

    /// TCP connections between the peers and the SUT so far, each way, and how many of
    /// the peers' streams were bidirectional (XEP-0288).
    pub fn sockets(&self) -> Sockets {
        let by: Vec<u64> = self
            .shared
            .accepted_by
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        Sockets {
            opened: self.shared.opened.load(Ordering::Relaxed),
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            bidi: self.shared.bidi_streams.load(Ordering::Relaxed),
            accepting_servers: by.iter().filter(|&&n| n > 0).count() as u64,
            accepted_max_per_server: by.iter().copied().max().unwrap_or(0),
        }
    }

    /// Number of simulated servers (of this process, [`crate::topology::Shard`]).
    pub fn servers(&self) -> u32 {
        self.shared.world.topo.own_servers()
    }

    /// Closes every stream (`</stream:stream>`) and ends every task, waiting at most
    /// `grace` for the closing handshakes.
    pub async fn stop(self, grace: Duration) {
        for a in &self.accept {
            a.abort();
        }
        for txs in &self.shared.out {
            for tx in txs {
                let _ = tx.try_send(OutCmd::Stop);
            }
        }
        let inbound = std::mem::take(&mut *self.shared.inbound.lock().expect("lock"));
        for (_, tx) in inbound {
            let _ = tx.try_send(InCmd::Stop);
        }
        let until = tokio::time::Instant::now() + grace;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(until, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(shared: Arc<Shared>, s: u32, listener: TcpListener) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = shared.accepted_by.get(s as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel(64);
        shared.inbound.lock().expect("lock").push((s, tx.clone()));
        tokio::spawn(inbound_task(shared.clone(), s, sock, tx, rx));
    }
}

async fn inbound_task(
    shared: Arc<Shared>,
    s: u32,
    sock: TcpStream,
    me: mpsc::Sender<InCmd>,
    mut rx: mpsc::Receiver<InCmd>,
) {
    let slot = shared.world.slot();
    let nonce = rand::rng().random::<u64>();
    let conn = S2sConnection::inbound(shared.cfg(s as usize), nonce, None, Instant::now());
    let mut stream = Stream::new(sock, conn, shared.tls.clone());
    let mut stopping = false;
    loop {
        let input = match stream.next(&mut rx).await {
            Ok(i) => i,
            Err(_) => break,
        };
        match input {
            Input::Event(Event::VerifyNeeded {
                local,
                stream_id,
                key,
                ..
            }) => {
                let (si, _) = shared.stream_of(shared.world.topo.domain_index(&local).unwrap_or(0));
                let _ = shared.out[si][0]
                    .send(OutCmd::Verify {
                        local,
                        stream_id,
                        key,
                        reply: me.clone(),
                    })
                    .await;
            }
            Input::Event(Event::Stanza { kind, element }) => {
                react(&shared, slot, kind, &element).await;
            }
            Input::Event(Event::Closed(reason)) => {
                if !stopping && !matches!(reason, CloseReason::PeerClosed) {
                    shared
                        .world
                        .unexpected_closes
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Input::Event(_) => {}
            Input::Cmd(InCmd::Verdict {
                local,
                remote,
                result,
            }) => stream
                .conn
                .handle_dialback_verdict(&local, &remote, result, Instant::now()),
            Input::Cmd(InCmd::Reset) => {
                stopping = true;
                stream.reset();
            }
            Input::Cmd(InCmd::Stop) => {
                stopping = true;
                stream.conn.close(None, Instant::now());
            }
            Input::End => break,
        }
    }
}

/// What a remote user's server does with a stanza from the SUT.
async fn react(shared: &Shared, slot: usize, kind: StanzaKind, el: &Element) {
    let world = &shared.world;
    let delivery = world.deliver(slot, el);
    if el.type_() == Some("error") {
        return;
    }
    let (Some(to), Some(from)) = (el.to(), el.from()) else {
        return;
    };
    let topo = &world.topo;
    let Some(r) = topo.remote_index(to) else {
        return;
    };
    let domain = topo.pair_domain(r);
    let me = topo.remote_jid(r);
    let from_bare = from.split('/').next().unwrap_or(from);
    let reply = match kind {
        StanzaKind::Presence => match el.type_() {
            // The remote user approves at once (RFC 6121 §3.1.4).
            Some("subscribe") if delivery.is_some() => {
                let id = world.track(slot, steps::SUBSCRIBE, 1, false, None).render();
                Some(stanzas::subscription(
                    "subscribed",
                    Some(&me),
                    from_bare,
                    &id,
                ))
            }
            // Probes are answered for the contact (RFC 6121 §4.3.2), untracked.
            Some("probe") => Some(stanzas::presence(
                Some(&format!("{me}/lg")),
                Some(from_bare),
                "probe-answer",
                "here",
            )),
            _ => None,
        },
        StanzaKind::Message => match delivery {
            Some(d) if d.id.echo => {
                let id = world.track(slot, steps::MESSAGE, 1, false, None).render();
                Some(stanzas::message(
                    Some(&format!("{me}/lg")),
                    from,
                    &id,
                    "echo",
                ))
            }
            _ => None,
        },
        StanzaKind::Iq => match el.type_() {
            Some("get") | Some("set") => el
                .id()
                .map(|id| stanzas::iq_result(Some(&me), Some(from), id)),
            _ => None,
        },
    };
    if let Some(bytes) = reply {
        world.stanzas_out.fetch_add(1, Ordering::Relaxed);
        let (s, i) = shared.stream_of(domain);
        let _ = shared.out[s][i].send(OutCmd::Send { domain, bytes }).await;
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Connects to the first of `nodes` that accepts, in RFC 2782 order.
///
/// Errors: the last address's error (every one failed).
async fn connect_any(nodes: &[SutS2s], timeout: Duration) -> io::Result<TcpStream> {
    let order = targets::connect_order(nodes, &mut rand::rng());
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no SUT S2S address");
    for addr in order {
        match connect(addr, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

struct PendingVerify {
    local: String,
    stream_id: String,
    key: String,
    reply: mpsc::Sender<InCmd>,
}

/// One outbound stream to the SUT carrying `domains`: consecutive domain indices (a
/// server's range with dialback, one domain with SASL EXTERNAL), so a domain's position
/// is its offset from the first.
async fn outbound_task(
    shared: Arc<Shared>,
    s: usize,
    domains: Vec<u32>,
    mut rx: mpsc::Receiver<OutCmd>,
) {
    let world = shared.world.clone();
    let slot = world.slot();
    let topo = &world.topo;
    let names: Vec<String> = domains.iter().map(|&d| topo.domain(d)).collect();
    let sut = topo.sut_domain.clone();
    let first = domains[0];
    let mut queue: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
    // With stream management: sent on the current stream and not acknowledged yet, oldest
    // first; they go back to the front of `queue` when the stream is lost.
    let mut unacked: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
    let mut verifies: Vec<PendingVerify> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let mut counted_ready = vec![false; domains.len()];
    // Per domain: when its dialback was last requested, and whether that request is a
    // retry after a failure (its failures are not first-attempt failures).
    let mut asked_at = vec![Instant::now(); domains.len()];
    let mut retrying = vec![false; domains.len()];
    let answer_limit = shared.cfg(s).timeouts.negotiation;
    'reconnect: loop {
        // What the last stream took and did not acknowledge goes first on the next one.
        while let Some(x) = unacked.pop_back() {
            shared.resent.fetch_add(1, Ordering::Relaxed);
            queue.push_front(x);
        }
        let t0 = Instant::now();
        let sock = match connect_any(&shared.opts.sut_s2s, shared.opts.connect_timeout).await {
            Ok(s) => s,
            Err(_) => {
                // Keep draining commands so senders never block on a dead stream.
                let until = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                loop {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Err(_) => continue 'reconnect,
                        Ok(None) | Ok(Some(OutCmd::Stop)) => return,
                        Ok(Some(OutCmd::Send { domain, bytes })) => {
                            queue.push_back((domain, bytes))
                        }
                        Ok(Some(OutCmd::Verify {
                            local,
                            stream_id,
                            key,
                            reply,
                        })) => verifies.push(PendingVerify {
                            local,
                            stream_id,
                            key,
                            reply,
                        }),
                        Ok(Some(OutCmd::Churn | OutCmd::Redialback(_))) => {}
                    }
                }
            }
        };
        shared.opened.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut conn = S2sConnection::outbound(shared.cfg(s), &names[0], &sut, false, now);
        asked_at.fill(now);
        for n in &names[1..] {
            let _ = conn.request_dialback(n, now);
        }
        for v in &verifies {
            let _ = conn.send_db_verify(&v.local, &v.stream_id, &v.key, now);
        }
        let mut tls = shared.tls.clone();
        if let Some(c) = &shared.client_tls[first as usize] {
            tls.client = Some(c.clone());
        }
        let mut stream = Stream::new(sock, conn, tls);
        let mut authed = vec![false; domains.len()];
        let mut all_authed = false;
        let mut leaving = false; // churn or stop asked
        let mut stop = false;
        loop {
            let input = match stream.next(&mut rx).await {
                Ok(i) => i,
                Err(_) => Input::End,
            };
            match input {
                Input::Event(Event::Authenticated { local, .. }) => {
                    if let Some(i) = names.iter().position(|n| *n == local) {
                        authed[i] = true;
                        retrying[i] = false;
                        if !counted_ready[i] {
                            counted_ready[i] = true;
                            shared.ready_domains.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    if !all_authed && authed.iter().all(|a| *a) {
                        all_authed = true;
                        backoff = Duration::from_millis(50);
                        world.latency(slot, steps::STREAM_SETUP, t0.elapsed());
                        let now = Instant::now();
                        while let Some((d, bytes)) = queue.pop_front() {
                            let i = (d - first) as usize;
                            let _ = stream.conn.send_stanza(&names[i], &sut, &bytes, now);
                            if stream.conn.acknowledges_stanzas() {
                                unacked.push_back((d, bytes));
                            }
                        }
                    }
                }
                Input::Event(Event::AuthFailed { local, result, .. }) => {
                    // A real server tries again later; so do we, after a pause.
                    let n = world.auth_failures.fetch_add(1, Ordering::Relaxed);
                    let i = names.iter().position(|n| *n == local);
                    let waited = i.map_or(Duration::ZERO, |i| asked_at[i].elapsed());
                    let cause = Cause::of(result, stream.conn.is_closed(), waited, answer_limit);
                    if let Some(i) = i.filter(|&i| !retrying[i]) {
                        retrying[i] = true;
                        world.first_auth_failures.count(cause);
                    }
                    if n < 5 {
                        eprintln!(
                            "loadgen: dialback for {local} failed after {} ms: {result:?} ({}); retrying",
                            waited.as_millis(),
                            cause.key()
                        );
                    }
                    if shared.opts.auth == PeerAuth::Dialback {
                        let (tx, pause) = (shared.out[s][0].clone(), RETRY_PAUSE);
                        tokio::spawn(async move {
                            tokio::time::sleep(pause).await;
                            let _ = tx.send(OutCmd::Redialback(local)).await;
                        });
                    }
                }
                Input::Event(Event::VerifyAnswered {
                    local,
                    stream_id,
                    result,
                    ..
                }) => {
                    if let Some(i) = verifies
                        .iter()
                        .position(|v| v.local == local && v.stream_id == stream_id)
                    {
                        let v = verifies.swap_remove(i);
                        let _ = v
                            .reply
                            .send(InCmd::Verdict {
                                local: v.local,
                                remote: sut.clone(),
                                result,
                            })
                            .await;
                    }
                }
                Input::Event(Event::Acknowledged { count }) => {
                    let n = (count as usize).min(unacked.len());
                    unacked.drain(..n);
                }
                Input::Event(Event::StreamManagementRefused) => unacked.clear(),
                // XEP-0288: the SUT sends on our stream; answered as on its own streams.
                Input::Event(Event::BidiAuthenticated { local, .. }) => {
                    if names.first() == Some(&local) {
                        shared.bidi_streams.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Input::Event(Event::Stanza { kind, element }) => {
                    react(&shared, slot, kind, &element).await;
                }
                Input::Event(Event::Closed(reason)) => {
                    if !leaving {
                        world.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                        tracing_close(&names[0], &reason);
                    }
                }
                Input::Event(_) => {}
                Input::Cmd(OutCmd::Send { domain, bytes }) => {
                    let i = (domain - first) as usize;
                    if authed[i] && !leaving && queue.is_empty() {
                        let _ = stream
                            .conn
                            .send_stanza(&names[i], &sut, &bytes, Instant::now());
                        if stream.conn.acknowledges_stanzas() {
                            unacked.push_back((domain, bytes));
                        }
                    } else {
                        queue.push_back((domain, bytes));
                    }
                }
                Input::Cmd(OutCmd::Verify {
                    local,
                    stream_id,
                    key,
                    reply,
                }) => {
                    if !leaving {
                        let _ =
                            stream
                                .conn
                                .send_db_verify(&local, &stream_id, &key, Instant::now());
                    }
                    verifies.push(PendingVerify {
                        local,
                        stream_id,
                        key,
                        reply,
                    });
                }
                Input::Cmd(OutCmd::Redialback(local)) => {
                    if let Some(i) = names.iter().position(|n| *n == local) {
                        asked_at[i] = Instant::now();
                    }
                    if !leaving {
                        let _ = stream.conn.request_dialback(&local, Instant::now());
                    }
                }
                Input::Cmd(OutCmd::Churn) => {
                    leaving = true;
                    if shared.opts.churn_reset {
                        stream.reset();
                    } else {
                        stream.conn.close(None, Instant::now());
                    }
                }
                Input::Cmd(OutCmd::Stop) => {
                    leaving = true;
                    stop = true;
                    stream.conn.close(None, Instant::now());
                }
                Input::End => {
                    if stop {
                        // Verifications that can no longer be asked end as errors.
                        for v in verifies.drain(..) {
                            let _ = v.reply.try_send(InCmd::Verdict {
                                local: v.local,
                                remote: sut.clone(),
                                result: DialbackResult::Error(
                                    DialbackErrorCondition::RemoteServerTimeout,
                                ),
                            });
                        }
                        return;
                    }
                    if !leaving {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    continue 'reconnect;
                }
            }
        }
    }
}

fn tracing_close(domain: &str, reason: &CloseReason) {
    eprintln!("loadgen: stream from {domain} to the SUT closed: {reason:?}");
}
