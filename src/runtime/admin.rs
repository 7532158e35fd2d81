//! The admin HTTP endpoint (config `listen.admin`, default 127.0.0.1:9269), on its own
//! thread so it never runs on a shard.
//!
//! - `GET /health`: `ok`.
//! - `GET /ping?to=DOMAIN[&from=LOCAL]`: sends an XEP-0199 server-to-server ping from
//!   our domain `LOCAL` (default: the first local domain) to `DOMAIN` through the
//!   router (DNS, connection, authentication and all) and answers with JSON:
//!   `{"result":"pong","rtt_ms":1.2}`, `{"result":"error","condition":"remote-server-not-found","rtt_ms":…}`
//!   or, after 60 s, `{"result":"timeout"}` (status 504).
//! - `GET /status`: the remote domains every shard knows of, as a JSON array of
//!   `{"domain", "shard", "streams": [{"direction", "state", "tls", "authenticated":
//!   [{"local", "remote", "method"}], "age_s"}], "queue", "failures", "last_error",
//!   "backoff_s"}`, sorted by domain.
//! - `GET /metrics`: Prometheus text format ([`crate::metrics::Metrics::render`]), every
//!   shard's metrics merged at read time.
//! - `GET /metrics/hgrm?name=routing_latency`: one latency histogram as HdrHistogram
//!   percentile distribution text ([`crate::metrics::Metrics::hgrm`]); names are
//!   [`crate::metrics::Latency::name`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Control, PingOutcome, Shared};
use crate::metrics::{Latency, Metrics};
use crate::router::{bare_key, domain_key, shard_of};

/// How long `/ping` waits for an answer.
const PING_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    pub(crate) fn start(
        addr: SocketAddr,
        shared: Arc<Shared>,
        controls: Vec<(crossbeam_channel::Sender<Control>, Arc<Notify>)>,
    ) -> std::io::Result<Admin> {
        let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("admin endpoint is not an IP socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                // Bounded in time per turn; ends when `stop` is set.
                while !stop2.load(Ordering::Relaxed) {
                    let req = match server.recv_timeout(Duration::from_millis(100)) {
                        Ok(Some(r)) => r,
                        Ok(None) => continue,
                        Err(_) => break,
                    };
                    let shared = Arc::clone(&shared);
                    let controls = controls.clone();
                    // A ping may take a while: answer each request on its own thread.
                    let _ = std::thread::Builder::new()
                        .name("admin-req".into())
                        .spawn(move || handle(req, &shared, &controls));
                }
            })?;
        Ok(Admin {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
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
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut merged = Metrics::new();
    for _ in 0..controls.len() {
        let m = rx.recv_deadline(deadline).ok()?;
        merged.merge(&m);
    }
    Some(merged)
}

fn handle(
    req: tiny_http::Request,
    shared: &Shared,
    controls: &[(crossbeam_channel::Sender<Control>, Arc<Notify>)],
) {
    let url = req.url().to_owned();
    let path = url.split('?').next().unwrap_or("");
    let json = |code: u16, v: serde_json::Value| {
        tiny_http::Response::from_string(v.to_string())
            .with_status_code(code)
            .with_header(
                "Content-Type: application/json"
                    .parse::<tiny_http::Header>()
                    .expect("static header"),
            )
    };
    let resp = match path {
        "/health" => tiny_http::Response::from_string("ok\n").with_status_code(200),
        "/ping" => {
            let Some(to) = query_param(&url, "to").filter(|t| !t.is_empty()) else {
                let _ = req.respond(json(
                    400,
                    serde_json::json!({"error": "missing ?to=DOMAIN"}),
                ));
                return;
            };
            let to = domain_key(to).into_owned();
            let from = query_param(&url, "from")
                .map(|f| domain_key(f).into_owned())
                .unwrap_or_else(|| shared.config.domains[0].clone());
            if !shared.s2s.hosts(&from) {
                let _ = req.respond(json(
                    400,
                    serde_json::json!({"error": format!("{from} is not a local domain")}),
                ));
                return;
            }
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
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let r = match rx.recv_timeout(PING_WAIT) {
                Ok(PingOutcome::Pong { rtt }) => json(
                    200,
                    serde_json::json!({"result": "pong", "from": from, "to": to, "rtt_ms": ms(rtt)}),
                ),
                Ok(PingOutcome::Error { condition, rtt }) => json(
                    200,
                    serde_json::json!({"result": "error", "from": from, "to": to, "condition": condition, "rtt_ms": ms(rtt)}),
                ),
                Err(_) => json(
                    504,
                    serde_json::json!({"result": "timeout", "from": from, "to": to}),
                ),
            };
            let _ = req.respond(r);
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
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
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
            let text = if path == "/metrics" {
                m.render()
            } else {
                match query_param(&url, "name").and_then(Latency::from_name) {
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
    let mut url = format!("http://{admin}/ping?to={to}");
    if let Some(f) = from {
        url.push_str("&from=");
        url.push_str(f);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PING_WAIT + Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(&url).call().map_err(|e| e.to_string())?;
    resp.body_mut().read_to_string().map_err(|e| e.to_string())
}
