//! The local clients: K C2S sessions ([`crate::c2s`]) logged into the SUT as its local users,
//! each with a writer task (stanzas queued by the run) and a reader task that accounts for
//! what arrives and reacts as a user's client would:
//!
//! - a subscription request from a remote user is approved and answered with a request
//!   back (RFC 6121 §3.1.4, §3.1.1), both tracked;
//! - a `subscribed` from a remote user completes the pair (subscription `both`): the
//!   subscription completion time is recorded;
//! - a message asking for an answer is answered (message round trips);
//! - roster pushes and pings are acknowledged (RFC 6121 §2.1.6, XEP-0199).
//!
//! Several SUT addresses (a cluster): client `k` first connects to address `k mod n`
//! (round robin). A server that answers with `<see-other-host/>` (RFC 6120 §4.9.3.19, a
//! cluster node that does not own the user) is followed: the client connects to the named
//! `host:port` and authenticates again, at most [`MAX_REDIRECTS`] times per login
//! ([`World::redirects`] counts them). A session that ends without loadgen asking (its node
//! died, or ownership moved and the node redirected it) logs in again
//! ([`World::relogins`]): at the named host, or else at the next address, at most
//! [`MAX_RELOGIN_ATTEMPTS`] times in a row with a bounded back-off. Stanzas queued while the
//! client is away wait in its queue and go out on the new session.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fedrouter::xml::Element;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::c2s::{self, C2sError, ClientOptions, Reader, Session, Writer};
use crate::report::steps;
use crate::stanzas;
use crate::world::World;

/// Stanzas queued per client.
const CLIENT_QUEUE: usize = 1024;
/// Most `<see-other-host/>` redirects followed within one login (RFC 6120 §4.9.3.19).
pub const MAX_REDIRECTS: u32 = 3;
/// Most logins tried in a row after a session ended without loadgen asking.
pub const MAX_RELOGIN_ATTEMPTS: u32 = 20;
/// First pause between two such logins; it doubles up to [`RELOGIN_BACKOFF_MAX`].
const RELOGIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two such logins.
const RELOGIN_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The resource every client binds.
const RESOURCE: &str = "loadgen";

/// The logged-in clients.
pub struct Clients {
    /// Processes the run is split over: own user `k` is at `txs[k / count]`.
    count: u32,
    txs: Vec<mpsc::Sender<Vec<u8>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Set by [`Clients::stop`]: a session that ends then is not logged in again.
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("n", &self.txs.len())
            .finish()
    }
}

/// A client that could not log in.
#[derive(Debug, thiserror::Error)]
#[error("{jid}: {source}")]
pub struct LoginError {
    /// The local user.
    pub jid: String,
    /// Why.
    #[source]
    pub source: C2sError,
}

impl Clients {
    /// Logs every local user of this process in ([`crate::topology::Shard`]; `parallel` at a
    /// time; user `k` at `addrs[k mod n]`,
    /// following redirects), binds resource `loadgen`, sends initial presence (RFC 6121
    /// §4.2, untracked) and starts the client's tasks. `opts.addr` is ignored: each login
    /// connects to its address from `addrs`.
    ///
    /// Errors: the first login that failed.
    ///
    /// # Panics
    ///
    /// When `addrs` is empty.
    pub async fn login_all(
        world: Arc<World>,
        opts: ClientOptions,
        addrs: Vec<SocketAddr>,
        password: String,
        parallel: usize,
    ) -> Result<Clients, LoginError> {
        assert!(!addrs.is_empty(), "at least one C2S address");
        // This process's local users ([`crate::topology::Shard`]); all of them in one process.
        let k = world.topo.own_locals();
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let opts = Arc::new(opts);
        let addrs = Arc::new(addrs);
        let mut logins = Vec::with_capacity(k as usize);
        for i in (0..k).map(|x| world.topo.own_local(x)) {
            let (sem, opts, world, password, addrs) = (
                sem.clone(),
                opts.clone(),
                world.clone(),
                password.clone(),
                addrs.clone(),
            );
            logins.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                let user = world.topo.local_name(i);
                let addr = addrs[i as usize % addrs.len()];
                login_following(&world, &opts, addr, &user, &password)
                    .await
                    .map_err(|source| LoginError {
                        jid: world.topo.local_jid(i),
                        source,
                    })
            }));
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let mut txs = Vec::with_capacity(k as usize);
        let mut tasks = Vec::with_capacity(2 * k as usize);
        let mut first_err = None;
        for (x, l) in logins.into_iter().enumerate() {
            let i = world.topo.own_local(x as u32);
            let session = match l.await.expect("login task") {
                Ok(s) => s,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
            let (wtx, wrx) = mpsc::channel::<Writer>(1);
            let mut writer = session.writer;
            // An interested resource (roster requested, RFC 6121 §2.1.3) gets subscription
            // approvals and pushes; then available (§4.2).
            let _ = writer.request_roster("roster").await;
            let _ = tx
                .send(stanzas::presence(None, None, "initial", "loadgen"))
                .await;
            tasks.push(tokio::spawn(write_loop(writer, rx, wrx)));
            let sup = Supervisor {
                world: world.clone(),
                opts: opts.clone(),
                addrs: addrs.clone(),
                password: password.clone(),
                stopping: stopping.clone(),
                k: i,
                me: tx.clone(),
                writers: wtx,
            };
            tasks.push(tokio::spawn(sup.read_loop(session.reader)));
            txs.push(tx);
        }
        if let Some(e) = first_err {
            for t in &tasks {
                t.abort();
            }
            return Err(e);
        }
        Ok(Clients {
            count: world.topo.shard.count.max(1),
            txs,
            tasks,
            stopping,
        })
    }

    /// Queues a stanza on local user `k`'s stream (waits while its queue is full). `k` is
    /// one of this process's local users.
    pub async fn send(&self, k: u32, bytes: Vec<u8>) {
        // Own users are `index + count · x`, logged in in that order.
        let x = k / self.count;
        let _ = self.txs[x as usize].send(bytes).await;
    }

    /// Closes every stream (`</stream:stream>`, the server then sends unavailable
    /// presence for the user) and ends the tasks, waiting at most `grace`.
    pub async fn stop(self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        for tx in &self.txs {
            let _ = tx.send(Vec::new()).await;
        }
        drop(self.txs);
        let until = tokio::time::Instant::now() + grace;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(until, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Sends what the run queues for one client on its current session; takes the next
/// session's writer from `writers` when the reader side logged in again. A stanza whose
/// write failed is kept and sent first on the next session. An empty item closes the
/// stream and ends the task.
async fn write_loop(
    writer: Writer,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut writers: mpsc::Receiver<Writer>,
) {
    let mut writer = Some(writer);
    let mut pending: Option<Vec<u8>> = None;
    let mut writers_open = true;
    loop {
        tokio::select! {
            biased;
            w = writers.recv(), if writers_open => match w {
                Some(mut w) => {
                    if let Some(bytes) = pending.take() {
                        if w.send(&bytes).await.is_err() {
                            pending = Some(bytes);
                            writer = None;
                            continue;
                        }
                    }
                    writer = Some(w);
                }
                None => {
                    writers_open = false;
                    if writer.is_none() {
                        return;
                    }
                }
            },
            bytes = rx.recv(), if writer.is_some() => {
                let Some(bytes) = bytes else { return };
                let Some(w) = writer.as_mut() else { continue };
                if bytes.is_empty() {
                    let _ = w.close().await;
                    return;
                }
                if w.send(&bytes).await.is_err() {
                    pending = Some(bytes);
                    writer = None;
                    if !writers_open {
                        return;
                    }
                }
            }
            else => return,
        }
    }
}

/// The reading side of one client: reacts to what arrives and logs in again when the
/// session ends without loadgen asking.
struct Supervisor {
    world: Arc<World>,
    opts: Arc<ClientOptions>,
    addrs: Arc<Vec<SocketAddr>>,
    password: String,
    stopping: Arc<AtomicBool>,
    k: u32,
    me: mpsc::Sender<Vec<u8>>,
    writers: mpsc::Sender<Writer>,
}

impl Supervisor {
    async fn read_loop(self, mut reader: Reader) {
        let slot = self.world.slot();
        let mut next = self.k as usize % self.addrs.len();
        loop {
            let end = loop {
                match reader.next().await {
                    Ok(Some(el)) => react(&self.world, slot, self.k, &el, &self.me).await,
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            // Where to log in again: the node named by <see-other-host/>, else the next
            // address.
            let mut target = match end {
                Some(C2sError::SeeOtherHost { host }) => {
                    self.world.redirects.fetch_add(1, Ordering::Relaxed);
                    resolve(&host).await.ok()
                }
                _ => None,
            };
            let user = self.world.topo.local_name(self.k);
            let mut backoff = RELOGIN_BACKOFF;
            let mut session = None;
            for attempt in 0..MAX_RELOGIN_ATTEMPTS {
                let addr = target.take().unwrap_or_else(|| {
                    next = (next + 1) % self.addrs.len();
                    self.addrs[next]
                });
                match login_following(&self.world, &self.opts, addr, &user, &self.password).await {
                    Ok(s) => {
                        session = Some(s);
                        break;
                    }
                    Err(e) => {
                        if self.stopping.load(Ordering::Acquire) {
                            return;
                        }
                        if attempt + 1 == MAX_RELOGIN_ATTEMPTS {
                            eprintln!(
                                "loadgen: {}: gave up logging in again after {} attempts: {e}",
                                self.world.topo.local_jid(self.k),
                                MAX_RELOGIN_ATTEMPTS
                            );
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RELOGIN_BACKOFF_MAX);
                    }
                }
            }
            let Some(Session {
                mut writer,
                reader: r,
                ..
            }) = session
            else {
                return;
            };
            self.world.relogins.fetch_add(1, Ordering::Relaxed);
            let _ = writer.request_roster("roster").await;
            let _ = writer
                .send(&stanzas::presence(None, None, "initial", "loadgen"))
                .await;
            if self.writers.send(writer).await.is_err() {
                return;
            }
            reader = r;
        }
    }
}

/// Logs `user` in at `addr`, following `<see-other-host/>` (RFC 6120 §4.9.3.19) at most
/// [`MAX_REDIRECTS`] times, each counted in [`World::redirects`].
///
/// Errors: the last login's error; more redirects than allowed are a
/// [`C2sError::Protocol`] naming the last host.
pub async fn login_following(
    world: &World,
    opts: &ClientOptions,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Session, C2sError> {
    let mut opts = opts.clone();
    opts.addr = addr;
    for _ in 0..MAX_REDIRECTS {
        match c2s::login(&opts, user, password, RESOURCE).await {
            Err(C2sError::SeeOtherHost { host }) => {
                world.redirects.fetch_add(1, Ordering::Relaxed);
                opts.addr = resolve(&host).await?;
            }
            other => return other,
        }
    }
    match c2s::login(&opts, user, password, RESOURCE).await {
        Err(C2sError::SeeOtherHost { host }) => Err(C2sError::Protocol(format!(
            "more than {MAX_REDIRECTS} see-other-host redirects in one login, the last to {host}"
        ))),
        other => other,
    }
}

/// The loopback address of a `<see-other-host/>` text: `ip:port`, `[ipv6]:port`, or a
/// host name (with `:port`, else 5222) resolved by the system.
///
/// Errors: [`C2sError::Protocol`] when it does not resolve to a loopback address (loadgen
/// connects to nothing else).
pub async fn resolve(host: &str) -> Result<SocketAddr, C2sError> {
    if let Ok(a) = host.parse::<SocketAddr>() {
        return if a.ip().is_loopback() {
            Ok(a)
        } else {
            Err(C2sError::Protocol(format!(
                "see-other-host {host}: not a loopback address"
            )))
        };
    }
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:5222")
    };
    let addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| C2sError::Protocol(format!("see-other-host {host}: {e}")))?;
    let found = addrs.into_iter().find(|a| a.ip().is_loopback());
    found.ok_or_else(|| {
        C2sError::Protocol(format!("see-other-host {host}: no loopback address for it"))
    })
}

async fn react(world: &World, slot: usize, k: u32, el: &Element, me: &mpsc::Sender<Vec<u8>>) {
    let delivery = world.deliver(slot, el);
    let kind = el.name();
    let ty = el.type_();
    if ty == Some("error") {
        return;
    }
    let topo = &world.topo;
    let from = el.from().unwrap_or_default();
    let mut out: Vec<Vec<u8>> = Vec::new();
    match (kind, ty) {
        ("presence", Some("subscribe")) if delivery.is_some() => {
            if let Some(r) = topo.remote_index(from) {
                let contact = topo.remote_jid(r);
                let id = world.track(slot, steps::SUBSCRIBE, 1, false, None).render();
                out.push(stanzas::subscription("subscribed", None, &contact, &id));
                let id = world.track(slot, steps::SUBSCRIBE, 1, false, None).render();
                out.push(stanzas::subscription("subscribe", None, &contact, &id));
            }
        }
        ("presence", Some("subscribed")) if delivery.is_some() => {
            if let Some(r) = topo.remote_index(from) {
                if let Some(started) = world.pairs.complete(r, k) {
                    world.latency(
                        slot,
                        steps::SUBSCRIPTION_COMPLETE,
                        world.clock().since(started),
                    );
                }
            }
        }
        ("message", _) => {
            if let Some(d) = delivery.filter(|d| d.id.echo) {
                let _ = d;
                let id = world.track(slot, steps::MESSAGE, 1, false, None).render();
                out.push(stanzas::message(None, from, &id, "echo"));
            }
        }
        ("iq", Some("get") | Some("set")) => {
            if let Some(id) = el.id() {
                out.push(stanzas::iq_result(None, el.from(), id));
                world.stanzas_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {}
    }
    for bytes in out {
        let _ = me.send(bytes).await;
    }
}
