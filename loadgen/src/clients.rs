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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fedrouter::xml::Element;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::c2s::{self, C2sError, ClientOptions};
use crate::report::steps;
use crate::stanzas;
use crate::world::World;

/// Stanzas queued per client.
const CLIENT_QUEUE: usize = 1024;

/// The logged-in clients.
pub struct Clients {
    txs: Vec<mpsc::Sender<Vec<u8>>>,
    tasks: Vec<JoinHandle<()>>,
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
    /// Logs every local user in (`parallel` at a time), binds resource `loadgen`, sends
    /// initial presence (RFC 6121 §4.2, untracked) and starts the client's tasks.
    ///
    /// Errors: the first login that failed.
    pub async fn login_all(
        world: Arc<World>,
        opts: ClientOptions,
        password: String,
        parallel: usize,
    ) -> Result<Clients, LoginError> {
        let k = world.topo.local_users;
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let opts = Arc::new(opts);
        let mut logins = Vec::with_capacity(k as usize);
        for i in 0..k {
            let (sem, opts, world, password) =
                (sem.clone(), opts.clone(), world.clone(), password.clone());
            logins.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                let user = world.topo.local_name(i);
                c2s::login(&opts, &user, &password, "loadgen")
                    .await
                    .map_err(|source| LoginError {
                        jid: world.topo.local_jid(i),
                        source,
                    })
            }));
        }
        let mut txs = Vec::with_capacity(k as usize);
        let mut tasks = Vec::with_capacity(2 * k as usize);
        let mut first_err = None;
        for (i, l) in logins.into_iter().enumerate() {
            let session = match l.await.expect("login task") {
                Ok(s) => s,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
            let mut writer = session.writer;
            let mut reader = session.reader;
            // An interested resource (roster requested, RFC 6121 §2.1.3) gets subscription
            // approvals and pushes; then available (§4.2).
            let _ = writer.request_roster("roster").await;
            let _ = tx
                .send(stanzas::presence(None, None, "initial", "loadgen"))
                .await;
            tasks.push(tokio::spawn(async move {
                let mut rx = rx;
                while let Some(bytes) = rx.recv().await {
                    if bytes.is_empty() {
                        let _ = writer.close().await;
                        break;
                    }
                    if writer.send(&bytes).await.is_err() {
                        break;
                    }
                }
            }));
            let (world, me) = (world.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let slot = world.slot();
                while let Ok(Some(el)) = reader.next().await {
                    react(&world, slot, i as u32, &el, &me).await;
                }
            }));
            txs.push(tx);
        }
        if let Some(e) = first_err {
            for t in &tasks {
                t.abort();
            }
            return Err(e);
        }
        Ok(Clients { txs, tasks })
    }

    /// Queues a stanza on local user `k`'s stream (waits while its queue is full).
    pub async fn send(&self, k: u32, bytes: Vec<u8>) {
        let _ = self.txs[k as usize].send(bytes).await;
    }

    /// Closes every stream (`</stream:stream>`, the server then sends unavailable
    /// presence for the user) and ends the tasks, waiting at most `grace`.
    pub async fn stop(self, grace: Duration) {
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
