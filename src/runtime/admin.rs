//! The admin HTTP endpoint (config `listen.admin`, default 127.0.0.1:9269), on its own
//! threads so it never runs on a shard: [`WORKERS`] threads take requests from
//! tiny_http's queue, where requests beyond them wait. None of them waits longer than
//! [`SHARD_WAIT`]: a `/ping` sent to a shard is handed to one more thread, the ping
//! waiter, which answers each when its pong comes or its 60 s pass, so slow pings never
//! hold up `/health`.
//!
//! - `GET /health`: every shard is asked to answer ([`super::health`]); 200 with
//!   `{"status":"ok","shards":[{"id","alive","state","since_last_turn_ms"}]}` when all
//!   answer within 2 s, else 503 with `"status":"unhealthy"` and, per shard, `"state"`
//!   `not answering` (with the time since its loop last turned), `stopped` or `panicked`.
//! - `GET /ping?to=DOMAIN[&from=LOCAL]`: sends an XEP-0199 server-to-server ping from
//!   our domain `LOCAL` (default: the first local domain) to `DOMAIN` through the
//!   router (DNS, connection, authentication and all) and answers with JSON:
//!   `{"result":"pong","rtt_ms":1.2}`, `{"result":"error","condition":"remote-server-not-found","rtt_ms":…}`
//!   or, after 60 s, `{"result":"timeout"}` (status 504). At most [`MAX_PINGS`] wait at
//!   once; more get 503 `busy`.
//! - `/health` also carries `"directory": {"backend": "ldap", "state": "up" |
//!   "unreachable" | "unknown", "error", "since", "for_s"}` with `auth.backend = "ldap"`;
//!   it does not change the status code (see [`crate::auth`]).
//! - `GET /status/directory`: that object alone (`{"backend": "internal"}` without LDAP).
//! - `/health` also carries `"store": {"backend": "postgres", "url" (password redacted),
//!   "state": "up" | "down", "error", "since", "for_s", "reconnects",
//!   "connection_failures"}` with `store.backend = "postgres"` ([`crate::store::status`]);
//!   it does not change the status code either.
//! - `GET /status/store`: that object alone (`{"backend": "sqlite"}` with SQLite).
//! - `/health` also carries `"cluster"` with `[cluster]`: `{"node", "epoch", "nats": "up"
//!   | "down", "nats_url", "nats_since", "last_error", "live": [names], "members":
//!   [{"node", "state": "up" | "dead" | "left", "c2s", "domains", "users",
//!   "last_heard_ms"}] (this node first, with `"self": true`), "backlog": [{"node",
//!   "stanzas"}], "reconnects", "lost", "outbox_resent"}` ([`crate::cluster::Cluster::to_json`]);
//!   it does not change the status code.
//! - `GET /status/cluster`: that object alone (`{"enabled": false}` without a cluster).
//! - `GET /status`: the remote domains every shard knows of, as a JSON array of
//!   `{"domain", "shard", "streams": [{"direction", "state", "tls", "authenticated":
//!   [{"local", "remote", "method"}], "age_s", "sm" ("enabled" | "requested" | "off",
//!   XEP-0198), "unacked", "bidi" (XEP-0288 negotiated), "bidi_authenticated" (the pairs
//!   carried against the stream's direction, like "authenticated"), "serves" (["in"],
//!   ["out"], or ["in", "out"] for a bidirectional stream that carries both)}], "queue",
//!   "failures", "last_error",
//!   "backoff_s"}`, sorted by domain.
//! - `GET /metrics`: Prometheus text format ([`crate::metrics::Metrics::render`]), every
//!   shard's metrics merged at read time.
//! - `GET /metrics/hgrm?name=routing_latency`: one latency histogram as HdrHistogram
//!   percentile distribution text ([`crate::metrics::Metrics::hgrm`]); names are
//!   [`crate::metrics::Latency::name`].
//!
//! Query strings are `application/x-www-form-urlencoded` (percent-decoded, `+` is a
//! space), read with `form_urlencoded`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::health::{self, Health};
use super::{Control, PingOutcome, Shared};
use crate::metrics::{Latency, Metrics};
use crate::router::{bare_key, domain_key, shard_of};

/// How long `/ping` waits for an answer.
const PING_WAIT: Duration = Duration::from_secs(60);

/// How long `/health`, `/status` and `/metrics` wait for the shards.
const SHARD_WAIT: Duration = Duration::from_secs(2);

/// Threads answering requests.
pub(crate) const WORKERS: usize = 4;

/// `/ping`s waiting for their answer at once, at most.
pub(crate) const MAX_PINGS: usize = 256;

/// How often idle admin threads look at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What every worker shares.
struct Ctx {
    shared: Arc<Shared>,
    controls: Vec<(crossbeam_channel::Sender<Control>, Arc<Notify>)>,
    health: Arc<Health>,
    /// `/ping`s waiting now (taken by [`PingSlot::take`]).
    pings: Arc<AtomicUsize>,
    /// To the ping waiter thread.
    waiter: crossbeam_channel::Sender<WaitingPing>,
}

pub(crate) struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Admin {
    pub(crate) fn start(
        addr: SocketAddr,
        shared: Arc<Shared>,
        controls: Vec<(crossbeam_channel::Sender<Control>, Arc<Notify>)>,
        health: Arc<Health>,
    ) -> std::io::Result<Admin> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("admin endpoint is not an IP socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        // Never full: at most MAX_PINGS slots exist.
        let (waiter, waiting) = crossbeam_channel::bounded(MAX_PINGS);
        let ctx = Arc::new(Ctx {
            shared,
            controls,
            health,
            pings: Arc::new(AtomicUsize::new(0)),
            waiter,
        });
        let mut threads = Vec::with_capacity(WORKERS + 1);
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("admin-pings".into())
            .spawn(move || wait_pings(&waiting, &stopped));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => return Err(e),
        }
        for i in 0..WORKERS {
            let (server, stopped, ctx) = (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&ctx));
            let spawned = std::thread::Builder::new()
                .name(format!("admin-{i}"))
                .spawn(move || {
                    // Bounded in time per turn; ends when `stop` is set.
                    while !stopped.load(Ordering::Relaxed) {
                        match server.recv_timeout(STOP_CHECK) {
                            Ok(Some(req)) => handle(req, &ctx),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    Admin {
                        addr,
                        stop,
                        threads,
                    }
                    .stop();
                    return Err(e);
                }
            }
        }
        Ok(Admin {
            addr,
            stop,
            threads,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The first value of `key` in the URL's query string, percent-decoded.
fn query_param<'a>(url: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// One of the [`MAX_PINGS`] `/ping` slots, held until dropped.
struct PingSlot(Arc<AtomicUsize>);

impl PingSlot {
    fn take(pings: &Arc<AtomicUsize>) -> Option<PingSlot> {
        pings
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PINGS).then_some(n + 1)
            })
            .ok()
            .map(|_| PingSlot(Arc::clone(pings)))
    }
}

impl Drop for PingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A `/ping` sent to its shard, waiting for the answer in the ping waiter.
struct WaitingPing {
    req: tiny_http::Request,
    answer: crossbeam_channel::Receiver<PingOutcome>,
    from: String,
    to: String,
    deadline: Instant,
    _slot: PingSlot,
}

impl WaitingPing {
    /// Answers the request: the outcome, or 504 `timeout` for `None`.
    fn respond(self, outcome: Option<PingOutcome>) {
        let (from, to) = (&self.from, &self.to);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let r = match outcome {
            Some(PingOutcome::Pong { rtt }) => json(
                200,
                serde_json::json!({"result": "pong", "from": from, "to": to, "rtt_ms": ms(rtt)}),
            ),
            Some(PingOutcome::Error { condition, rtt }) => json(
                200,
                serde_json::json!({"result": "error", "from": from, "to": to, "condition": condition, "rtt_ms": ms(rtt)}),
            ),
            None => json(
                504,
                serde_json::json!({"result": "timeout", "from": from, "to": to}),
            ),
        };
        let _ = self.req.respond(r);
    }
}

/// The ping waiter: answers each waiting `/ping` when its shard answers (or drops the
/// ping) or its deadline passes. Ends when `stop` is set, answering what still waits
/// with 503.
fn wait_pings(intake: &crossbeam_channel::Receiver<WaitingPing>, stop: &AtomicBool) {
    let mut waiting: Vec<WaitingPing> = Vec::new();
    // Bounded: each turn waits at most STOP_CHECK; ends when `stop` is set.
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (due, pending): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|w| w.deadline <= now);
        waiting = pending;
        for w in due {
            w.respond(None);
        }
        let wake_at = waiting
            .iter()
            .map(|w| w.deadline)
            .fold(now + STOP_CHECK, Instant::min);
        let mut select = crossbeam_channel::Select::new();
        select.recv(intake);
        for w in &waiting {
            select.recv(&w.answer);
        }
        match select.ready_deadline(wake_at) {
            Ok(0) => match intake.try_recv() {
                Ok(w) => waiting.push(w),
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            },
            Ok(i) => match waiting[i - 1].answer.try_recv() {
                Ok(outcome) => waiting.swap_remove(i - 1).respond(Some(outcome)),
                // The shard dropped the ping (it is shutting down): as a timeout.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    waiting.swap_remove(i - 1).respond(None)
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            },
            Err(_) => {}
        }
    }
    for w in waiting {
        let _ = w
            .req
            .respond(json(503, serde_json::json!({"error": "shutting down"})));
    }
}

fn json(code: u16, v: serde_json::Value) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(v.to_string())
        .with_status_code(code)
        .with_header(
            "Content-Type: application/json"
                .parse::<tiny_http::Header>()
                .expect("static header"),
        )
}

/// Asks every shard for a copy of its metrics and merges them; `None` when a shard does
/// not answer within 2 s.
fn collect_metrics(
    controls: &[(crossbeam_channel::Sender<Control>, Arc<Notify>)],
) -> Option<Metrics> {
    let (tx, rx) = crossbeam_channel::bounded(controls.len());
    for (ctl, wake) in controls {
        ctl.try_send(Control::Metrics(tx.clone())).ok()?;
        wake.notify_one();
    }
    let deadline = Instant::now() + SHARD_WAIT;
    let mut merged = Metrics::new();
    for _ in 0..controls.len() {
        let m = rx.recv_deadline(deadline).ok()?;
        merged.merge(&m);
    }
    Some(merged)
}

/// `/health`'s `"store_failures"`: `{"count", "last_error"}`, the requests the store
/// failed for a fault of the database itself (I/O error, disk full:
/// [`crate::store::StoreStats::failures`]) since start, and the last one's text (`null`
/// if none).
fn store_failures(store: &crate::store::StoreHandle) -> serde_json::Value {
    serde_json::json!({
        "count": store.stats().failures,
        "last_error": store.last_failure(),
    })
}

fn handle(req: tiny_http::Request, ctx: &Ctx) {
    let (shared, controls) = (&*ctx.shared, &ctx.controls[..]);
    let url = req.url().to_owned();
    let path = url.split('?').next().unwrap_or("");
    let resp = match path {
        "/health" => {
            let (code, mut body) =
                health::report(&health::probe(controls, &ctx.health, SHARD_WAIT));
            // The directory's state is reported, not judged: with it down logins get
            // temporary-auth-failure but everything else is served (the status code
            // stays the shards').
            if let Some(d) = &shared.directory {
                body["directory"] = d.report().to_json();
            }
            // Store faults are reported, not judged, as the directory: what needs no
            // store is still served.
            body["store_failures"] = store_failures(&shared.store);
            // The same for a networked store (PostgreSQL): with it down, changes fail and
            // are never acknowledged, but streams stay up.
            if let Some(s) = shared.store.status() {
                body["store"] = s.report().to_json();
            }
            // The cluster too: with NATS down, stanzas for other nodes wait in their
            // backlog (then bounce), and everything this node owns is still served.
            if let Some(c) = &shared.cluster {
                body["cluster"] = c.to_json();
            }
            json(code, body)
        }
        "/status/cluster" => match &shared.cluster {
            Some(c) => json(200, c.to_json()),
            None => json(200, serde_json::json!({"enabled": false})),
        },
        "/status/store" => match shared.store.status() {
            Some(s) => json(200, s.report().to_json()),
            None => json(200, serde_json::json!({"backend": "sqlite"})),
        },
        "/status/directory" => match &shared.directory {
            Some(d) => json(200, d.report().to_json()),
            None => json(200, serde_json::json!({"backend": "internal"})),
        },
        "/ping" => {
            let Some(to) = query_param(&url, "to").filter(|t| !t.is_empty()) else {
                let _ = req.respond(json(
                    400,
                    serde_json::json!({"error": "missing ?to=DOMAIN"}),
                ));
                return;
            };
            let to = domain_key(&to).into_owned();
            let from = query_param(&url, "from")
                .map(|f| domain_key(&f).into_owned())
                .unwrap_or_else(|| shared.config.domains[0].clone());
            if !shared.s2s.hosts(&from) {
                let _ = req.respond(json(
                    400,
                    serde_json::json!({"error": format!("{from} is not a local domain")}),
                ));
                return;
            }
            let Some(slot) = PingSlot::take(&ctx.pings) else {
                let _ = req.respond(json(
                    503,
                    serde_json::json!({"error": format!("busy: {MAX_PINGS} pings waiting")}),
                ));
                return;
            };
            let (tx, rx) = crossbeam_channel::bounded(1);
            let (ctl, wake) = &controls[shard_of(&bare_key(&from), shared.shards)];
            if ctl
                .try_send(Control::Ping {
                    from: from.clone(),
                    to: to.clone(),
                    reply: tx,
                })
                .is_err()
            {
                let _ = req.respond(json(503, serde_json::json!({"error": "busy"})));
                return;
            }
            wake.notify_one();
            let waiting = WaitingPing {
                req,
                answer: rx,
                from,
                to,
                deadline: Instant::now() + PING_WAIT,
                _slot: slot,
            };
            // The waiter is gone only while the endpoint stops.
            if let Err(crossbeam_channel::SendError(w)) = ctx.waiter.send(waiting) {
                let _ = w
                    .req
                    .respond(json(503, serde_json::json!({"error": "shutting down"})));
            }
            return;
        }
        "/status" => {
            let (tx, rx) = crossbeam_channel::bounded(controls.len());
            for (ctl, wake) in controls {
                if ctl.try_send(Control::Status(tx.clone())).is_err() {
                    let _ = req.respond(json(503, serde_json::json!({"error": "shards busy"})));
                    return;
                }
                wake.notify_one();
            }
            let deadline = Instant::now() + SHARD_WAIT;
            let mut all: Vec<serde_json::Value> = Vec::new();
            for _ in 0..controls.len() {
                match rx.recv_deadline(deadline) {
                    Ok(v) => all.extend(v),
                    Err(_) => {
                        let _ = req.respond(json(503, serde_json::json!({"error": "shards busy"})));
                        return;
                    }
                }
            }
            all.sort_by(|a, b| a["domain"].as_str().cmp(&b["domain"].as_str()));
            json(200, serde_json::Value::Array(all))
        }
        "/metrics" | "/metrics/hgrm" => {
            let Some(m) = collect_metrics(controls) else {
                let _ = req.respond(json(503, serde_json::json!({"error": "shards busy"})));
                return;
            };
            let mut m = m;
            if let Some(d) = &shared.directory {
                let r = d.report();
                let up = i64::from(r.state_name() == "up");
                m.set_gauge("directory_up", &[], up);
                let secs = std::time::SystemTime::now()
                    .duration_since(r.since)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                m.set_gauge(
                    "directory_state_seconds",
                    &[("state", r.state_name())],
                    i64::try_from(secs).unwrap_or(i64::MAX),
                );
            }
            if let Some(s) = shared.store.status() {
                let r = s.report();
                m.set_gauge("store_up", &[], i64::from(r.state_name() == "up"));
                m.count("store_reconnects", &[], r.reconnects);
                m.count("store_connection_failures", &[], r.connection_failures);
            }
            let text = if path == "/metrics" {
                m.render()
            } else {
                match query_param(&url, "name").and_then(|n| Latency::from_name(&n)) {
                    Some(l) => m.hgrm(l),
                    None => {
                        let names: Vec<&str> = Latency::ALL.iter().map(|l| l.name()).collect();
                        let _ = req.respond(json(
                            400,
                            serde_json::json!({"error": "missing or unknown ?name=", "names": names}),
                        ));
                        return;
                    }
                }
            };
            tiny_http::Response::from_string(text)
                .with_status_code(200)
                .with_header(
                    "Content-Type: text/plain; version=0.0.4"
                        .parse::<tiny_http::Header>()
                        .expect("static header"),
                )
        }
        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
    };
    let _ = req.respond(resp);
}

/// `GET /status/directory` of a running server's admin endpoint: the JSON text (404 from
/// an older server is an error).
pub fn directory_status_via_admin(admin: SocketAddr) -> Result<String, String> {
    admin_get(admin, "/status/directory")
}

/// `GET /status/store` of a running server's admin endpoint: the JSON text (404 from an
/// older server is an error).
pub fn store_status_via_admin(admin: SocketAddr) -> Result<String, String> {
    admin_get(admin, "/status/store")
}

/// `GET /status/cluster` of a running server's admin endpoint: the JSON text
/// (`{"enabled": false}` without `[cluster]`).
pub fn cluster_status_via_admin(admin: SocketAddr) -> Result<String, String> {
    admin_get(admin, "/status/cluster")
}

/// `GET path` of the admin endpoint at `admin`: the body of a 200 answer.
fn admin_get(admin: SocketAddr, path: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{admin}{path}"))
        .call()
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}

/// `GET /status` of a running server's admin endpoint: the JSON text.
///
/// Errors: the HTTP client's message when the endpoint cannot be reached.
pub fn status_via_admin(admin: SocketAddr) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{admin}/status"))
        .call()
        .map_err(|e| e.to_string())?;
    resp.body_mut().read_to_string().map_err(|e| e.to_string())
}

/// Asks a running server's admin endpoint at `admin` to ping `to` (from `from`, or its
/// first local domain) and returns the JSON answer as text.
///
/// Errors: the HTTP client's error as text (server not running, wrong address).
pub fn ping_via_admin(admin: SocketAddr, to: &str, from: Option<&str>) -> Result<String, String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("to", to);
    if let Some(f) = from {
        query.append_pair("from", f);
    }
    let url = format!("http://{admin}/ping?{}", query.finish());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PING_WAIT + Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(&url).call().map_err(|e| e.to_string())?;
    resp.body_mut().read_to_string().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let url = "/ping?to=b%2Etest&from=caf%C3%A9.test&x=a+b&to=second";
        assert_eq!(query_param(url, "to").as_deref(), Some("b.test"));
        assert_eq!(query_param(url, "from").as_deref(), Some("café.test"));
        assert_eq!(query_param(url, "x").as_deref(), Some("a b"));
        assert_eq!(query_param(url, "y"), None);
        assert_eq!(query_param("/ping", "to"), None);
        assert_eq!(query_param("/ping?to", "to").as_deref(), Some(""));
    }

    #[test]
    fn the_ping_url_is_encoded() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("to", "b&c.test");
        q.append_pair("from", "café.test");
        let url = format!("/ping?{}", q.finish());
        assert_eq!(query_param(&url, "to").as_deref(), Some("b&c.test"));
        assert_eq!(query_param(&url, "from").as_deref(), Some("café.test"));
    }

    #[test]
    fn pings_are_bounded() {
        let pings = Arc::new(AtomicUsize::new(0));
        let slots: Vec<_> = (0..MAX_PINGS)
            .map(|_| PingSlot::take(&pings).expect("a free slot"))
            .collect();
        assert!(PingSlot::take(&pings).is_none());
        drop(slots);
        assert_eq!(pings.load(Ordering::Relaxed), 0);
        assert!(PingSlot::take(&pings).is_some());
    }
}
