//! One stalled remote server must not freeze anyone else (issue "one stalled remote server
//! freezes every user"): real `fedrouter serve` processes, real sockets on loopback.
//!
//! The stalled peer is a [`peer::FakeServer`] (the library's own receiving side, plain
//! TCP + dialback) that authenticates the server's outbound stream and is then paused: it
//! stops reading its sockets and keeps them open. One local user (the flooder) sends it
//! thousands of ~1 KB messages over C2S in batches, on a plaintext session
//! (`c2s.tls_required = false`) whose socket a thread reads the whole time: a flooder
//! that reads its bounces only now and then congests its own session, and the server
//! drops error stanzas for a congested session as for an unavailable resource, which
//! would spoil the accounting. Meanwhile other users (over STARTTLS) keep doing round
//! trips, each answered before the next: local ones (user to user) and S2S ones (a
//! scripted inbound [`peer::Peer`] authenticated by dialback sends a message to a local
//! user, who answers over the outbound stream to another, unpaused `FakeServer`).
//!
//! The contract checked:
//! - Congestion stays with its destination: the stalled domain's queue is bounded
//!   (`s2s.queue_per_domain` plus the stream's `s2s.send_queue_bytes`); when it is full
//!   each new stanza for it is bounced at once with `resource-constraint` (type `wait`);
//!   nothing else waits, on either shard, whichever shard the flooder and the stalled
//!   domain are on.
//! - Nothing is lost or duplicated: every flood message is either delivered (once the
//!   peer reads again) or bounced to the flooder, exactly once, and delivered ones arrive
//!   in the order they were sent (RFC 6120 §10.1).
//! - `s2s.write_stall_timeout` / `c2s.write_stall_timeout`: a stream whose socket accepts
//!   nothing for that long is closed; what it had not handed to the kernel is bounced
//!   (`remote-server-timeout` for S2S; for C2S handled as for an unavailable resource,
//!   RFC 6121 §8.5: `service-unavailable` here); what the kernel had is still delivered.
//! - What operators see: the `remote server congested` / `remote server recovered` /
//!   `stopped reading` log lines, the metrics `bounced_by_cause_total`,
//!   `stalled_streams_closed_total`, `congested_destinations`, and `congested`, `queue`
//!   and `write_stalled_ms` in `/status`.
//!
//! Every wait is for an event and bounded by [`WAIT`], which only catches hangs. Each test
//! owns the loopback range `127.0.N.0/24`, N in 234, 235, 237, 238, 239 and 251 (other
//! suites use other ranges):
//! `.1:5300` DNS, the server on `.2` (5222 C2S, 5269 S2S, 9269 admin), the stalled peer
//! on `.5`, the round-trip peers on `.6` and up, all on port 5269.
//!
//! When the accounting does not add up, `STALLED_PEER_KEEP_LOG=DIR` keeps the server's
//! whole log in `DIR`.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use c2s_client::ScramClient;
use fedrouter::config::{Config, ConfigError};
use fedrouter::dialback::DialbackSecret;
use fedrouter::router::{bare_key, domain_key, shard_of};
use fedrouter::store::scram::ScramHash;
use fedrouter::xml::{ns, Frame, Framer};
use fedrouter_testkit::zone::ZoneServer;
use peer::{db_result, header, FakeServer, Peer};
use prometheus_parse::{Scrape, Value};
use server::{add_user, config, http_get, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};
use xmpp::{Client, Target};

/// The bound of every wait for an event: it only catches hangs.
const WAIT: Duration = Duration::from_secs(60);

/// Messages the flooder writes to its socket at once (then it reads what came back).
const BATCH: usize = 100;

/// Round trips of each kind done while the stalled peer is not reading.
const ROUNDS: usize = 20;

/// Flood size of the congestion tests (~1 KB each: some 20 MB, far beyond what the
/// queue, the stream's buffer and the kernel hold).
const FLOOD: usize = 20_000;

/// Flood size of the write-stall tests.
const STALL_FLOOD: usize = 5_000;

/// The local domain.
const LOCAL: &str = "a.test";

const PASSWORD: &str = "stalled-peer password";

/// `s2s.queue_per_domain` (its default, not set in the configurations here).
const QUEUE_PER_DOMAIN: u64 = 1000;

// ---------------------------------------------------------------------------------------
// Names on the shard we want
// ---------------------------------------------------------------------------------------

/// The first `PREFIXn.test` (n < 1000) whose owner among `shards` is `shard`.
fn domain_on(prefix: &str, shard: usize, shards: usize) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}.test"))
        .find(|d| shard_of(&domain_key(d), shards) == shard)
        .unwrap_or_else(|| panic!("no {prefix}N.test on shard {shard} of {shards}"))
}

/// The first localpart `PREFIXn` (n < 1000) whose bare JID at [`LOCAL`] is owned by
/// `shard` among `shards`.
fn user_on(prefix: &str, shard: usize, shards: usize) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| shard_of(&bare_key(&format!("{u}@{LOCAL}")), shards) == shard)
        .unwrap_or_else(|| panic!("no user {prefix}N@{LOCAL} on shard {shard} of {shards}"))
}

// ---------------------------------------------------------------------------------------
// Reading stanzas without a parser (thousands of them: string look-ups only)
// ---------------------------------------------------------------------------------------

/// The start tag of `xml` (up to its first `>`).
fn start_tag(xml: &str) -> &str {
    xml.find('>').map_or(xml, |i| &xml[..=i])
}

/// The `id` of the top element of `xml`.
fn stanza_id(xml: &str) -> Option<String> {
    peer::attr(start_tag(xml), "id")
}

/// Whether `xml` is a `<message/>` with `id`.
fn is_message_id(xml: &str, id: &str) -> bool {
    xml.starts_with("<message") && stanza_id(xml).as_deref() == Some(id)
}

/// The `type` of the top element of `xml`.
fn stanza_type(xml: &str) -> Option<String> {
    peer::attr(start_tag(xml), "type")
}

/// The number in a flood id `fN`.
fn flood_index(id: &str) -> Option<usize> {
    id.strip_prefix('f')?.parse().ok()
}

/// One flood message: ~1 KB, unique id `fN`.
fn flood_message(to: &str, i: usize) -> String {
    format!(
        "<message type='chat' to='{to}' id='f{i}'><body>flood {i:06} {}</body></message>",
        "x".repeat(1000 - 20)
    )
}

// ---------------------------------------------------------------------------------------
// Metrics, status
// ---------------------------------------------------------------------------------------

fn scrape(fr: &Fedrouter) -> Scrape {
    let (status, body) = http_get(fr.admin, "/metrics", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of `name` summed over its samples whose labels include `labels` (0 when
/// there is none).
fn metric(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

/// `bounced_by_cause_total{cause}`.
fn bounced_by(s: &Scrape, cause: &str) -> f64 {
    metric(s, "fedrouter_bounced_by_cause_total", &[("cause", cause)])
}

/// `stalled_streams_closed_total{proto}`.
fn stalled_closed(s: &Scrape, proto: &str) -> f64 {
    metric(
        s,
        "fedrouter_stalled_streams_closed_total",
        &[("proto", proto)],
    )
}

/// `congested_destinations{proto="s2s"}`.
fn congested_destinations(s: &Scrape) -> f64 {
    metric(s, "fedrouter_congested_destinations", &[("proto", "s2s")])
}

/// `reads_paused_ms_total` per `proto` label.
fn reads_paused(s: &Scrape) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for x in s
        .samples
        .iter()
        .filter(|x| x.metric == "fedrouter_reads_paused_ms_total")
    {
        let proto = x.labels.get("proto").unwrap_or("").to_owned();
        if let Value::Counter(v) | Value::Untyped(v) = x.value {
            *out.entry(proto).or_insert(0.0) += v;
        }
    }
    out
}

/// The `/status` object of remote domain `d`, if the server knows it.
fn domain_status(fr: &Fedrouter, d: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(fr.admin, "/status", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET /status: {e}"));
    assert_eq!(code, 200, "GET /status: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    v.as_array()
        .unwrap_or_else(|| panic!("/status is not an array: {v}"))
        .iter()
        .find(|x| x["domain"] == d)
        .cloned()
}

/// The largest `write_stalled_ms` among the streams of a `/status` domain object.
fn write_stalled_ms(d: &serde_json::Value) -> Option<f64> {
    d["streams"]
        .as_array()?
        .iter()
        .filter_map(|s| s["write_stalled_ms"].as_f64())
        .reduce(f64::max)
}

/// Waits (bounded by [`WAIT`]) until `cond(scrape)` holds, calling `meanwhile` between
/// looks (a flooder keeps reading its bounces); returns the scrape that satisfied it.
fn wait_metrics(
    fr: &Fedrouter,
    what: &str,
    mut meanwhile: impl FnMut(),
    cond: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(fr);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in the metrics within {WAIT:?}; metrics now:\n{}",
            relevant_metrics(fr)
        );
        meanwhile();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The metric lines this suite is about (for failure messages).
fn relevant_metrics(fr: &Fedrouter) -> String {
    let body = http_get(fr.admin, "/metrics", Duration::from_secs(10))
        .map(|(_, b)| b)
        .unwrap_or_else(|e| format!("GET /metrics: {e}"));
    body.lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "bounced",
                    "stalled",
                    "congested",
                    "reads_paused",
                    "undeliverable",
                ]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (bounded by [`WAIT`]) for a log line with `message` whose field `field` is
/// `value` (`field=value` or, as tracing writes string fields, `field="value"`), and
/// containing every one of `also`; returns it.
fn wait_log_field(
    fr: &Fedrouter,
    message: &str,
    field: &str,
    value: &str,
    also: &[&str],
) -> String {
    let plain = format!("{field}={value}");
    let quoted = format!("{field}=\"{value}\"");
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = fr.log_lines(&[message]);
        if let Some(l) = lines.iter().find(|l| {
            (l.contains(&plain) || l.contains(&quoted)) && also.iter().all(|a| l.contains(a))
        }) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no log line {message:?} with {plain} and {also:?} within {WAIT:?}; lines with the message: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// `server::config` with a C2S listener on `addr:5222`.
fn c2s_config(net: u8, addr: Ipv4Addr, shards: usize, extra: &str) -> String {
    let text = config(net, addr, &[LOCAL], shards, extra);
    assert!(text.contains("c2s = []"), "server::config changed: {text}");
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

fn target(fr: &Fedrouter, net: u8) -> Target {
    Target::new(
        SocketAddr::new(ip(net, 2).into(), 5222),
        LOCAL,
        &fr.dir().join("data"),
    )
}

/// Logs `user` in with resource `res`; every wait of the client is bounded by [`WAIT`].
fn login(t: &Target, user: &str, res: &str) -> (Client, String) {
    let mut c = Client::login(t, user, PASSWORD, Some(res));
    c.timeout = WAIT;
    let jid = c.jid.clone().expect("bound");
    (c, jid)
}

/// A ping to the client's own account and its answer: what the server sent the session
/// before the answer is buffered afterwards. `n` numbers the pings.
fn sync(c: &mut Client, n: &mut u64) {
    *n += 1;
    let id = format!("sync{n}");
    c.send(&format!(
        "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    c.recv_until(
        |x| x.starts_with("<iq") && stanza_id(x).as_deref() == Some(&id),
        WAIT,
    );
}

/// A bounce as the flooder received it.
#[derive(Debug, Clone)]
struct Bounce {
    /// The stanza error condition (`resource-constraint`, ...).
    condition: String,
    /// The `type` of the `<error/>` (`wait`, `cancel`, ...).
    kind: String,
    /// The whole stanza.
    xml: String,
}

/// A plaintext C2S session (`c2s.tls_required = false`) whose socket a thread of its own
/// reads the whole time, so that the server never has to wait on it, however fast it
/// sends: what arrives is kept, in arrival order, for the test to take. (A session whose
/// client does not read is congested by design; the server then drops error stanzas for
/// it, bounces included, as for an unavailable resource.)
struct ReadingClient {
    jid: String,
    sock: TcpStream,
    received: Arc<Mutex<Vec<String>>>,
    /// The server closed the stream or the connection.
    closed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The next element (stream headers skipped) read from `sock` during negotiation.
fn next_element(sock: &mut TcpStream, framer: &mut Framer, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 8192];
    // Bounded by the deadline: each read blocks at most WAIT (the socket's timeout).
    loop {
        match framer.next_frame() {
            Ok(Some(Frame::Element(e))) => return e.as_str().to_owned(),
            Ok(Some(Frame::Header(_))) => continue,
            Ok(Some(Frame::Close)) => panic!("stream closed while waiting for {what}"),
            Ok(None) => {}
            Err(e) => panic!("malformed XML while waiting for {what}: {e}"),
        }
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        match sock.read(&mut buf) {
            Ok(0) => panic!("connection closed while waiting for {what}"),
            Ok(n) => framer.feed(&buf[..n]),
            Err(e) => panic!("reading while waiting for {what}: {e}"),
        }
    }
}

/// The base64 payload of a SASL element, as text.
fn sasl_text(xml: &str) -> String {
    let text = xmpp::node(xml).text.trim().to_owned();
    let raw = if text == "=" {
        Vec::new()
    } else {
        B64.decode(&text)
            .unwrap_or_else(|e| panic!("bad base64 in {xml}: {e}"))
    };
    String::from_utf8(raw).expect("UTF-8 SASL payload")
}

impl ReadingClient {
    /// Connects without TLS, SCRAM-SHA-256 as `user`, binds `res`, then starts reading.
    fn login(addr: SocketAddr, user: &str, res: &str) -> ReadingClient {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        sock.set_nodelay(true).expect("TCP_NODELAY");
        sock.set_read_timeout(Some(WAIT)).expect("read timeout");
        sock.set_write_timeout(Some(WAIT)).expect("write timeout");
        let mut framer = Framer::default();
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='{}' to='{LOCAL}' version='1.0'>",
            ns::STREAMS
        );
        sock.write_all(header.as_bytes()).expect("send header");
        let features = next_element(&mut sock, &mut framer, "features");
        assert!(
            features.contains("SCRAM-SHA-256"),
            "{user}: no SCRAM-SHA-256 without TLS: {features}"
        );
        let cnonce = format!("{:032x}", rand::random::<u128>());
        let mut scram = ScramClient::new(ScramHash::Sha256, user, PASSWORD, &cnonce);
        let auth = format!(
            "<auth xmlns='{}' mechanism='SCRAM-SHA-256'>{}</auth>",
            ns::SASL,
            B64.encode(scram.first())
        );
        sock.write_all(auth.as_bytes()).expect("send auth");
        let challenge = next_element(&mut sock, &mut framer, "SASL challenge");
        assert!(challenge.starts_with("<challenge"), "{user}: {challenge}");
        let fin = scram.final_message(&sasl_text(&challenge));
        let response = format!(
            "<response xmlns='{}'>{}</response>",
            ns::SASL,
            B64.encode(fin)
        );
        sock.write_all(response.as_bytes()).expect("send response");
        let success = next_element(&mut sock, &mut framer, "SASL success");
        assert!(success.starts_with("<success"), "{user}: {success}");
        assert!(
            scram.verify(&sasl_text(&success)),
            "{user}: bad server signature"
        );
        // RFC 6120 §6.4.6: a new stream.
        framer.reset();
        sock.write_all(header.as_bytes()).expect("send header");
        let features = next_element(&mut sock, &mut framer, "features after SASL");
        assert!(features.contains(xmpp::NS_BIND), "{user}: {features}");
        let bind = format!(
            "<iq type='set' id='bind'><bind xmlns='{}'><resource>{res}</resource></bind></iq>",
            xmpp::NS_BIND
        );
        sock.write_all(bind.as_bytes()).expect("send bind");
        let answer = next_element(&mut sock, &mut framer, "bind result");
        let jid = xmpp::node(&answer)
            .child("bind", xmpp::NS_BIND)
            .and_then(|b| b.children.iter().find(|c| c.name == "jid"))
            .map(|j| j.text.clone())
            .unwrap_or_else(|| panic!("{user}: bind refused: {answer}"));

        let mut rsock = sock.try_clone().expect("clone socket");
        rsock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (got, cl, st) = (
            Arc::clone(&received),
            Arc::clone(&closed),
            Arc::clone(&stop),
        );
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            // Bounded: ends at the server's close, on `stop`, or after 10 minutes.
            let end = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                let n = match rsock.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                framer.feed(&buf[..n]);
                let mut batch = Vec::new();
                // Bounded: each frame consumes buffered bytes.
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Element(e))) => batch.push(e.as_str().to_owned()),
                        Ok(Some(Frame::Header(_))) => {}
                        Ok(Some(Frame::Close)) | Err(_) => {
                            cl.store(true, Ordering::SeqCst);
                            break;
                        }
                        Ok(None) => break,
                    }
                }
                got.lock().unwrap_or_else(|e| e.into_inner()).extend(batch);
                if cl.load(Ordering::SeqCst) {
                    break;
                }
            }
            cl.store(true, Ordering::SeqCst);
        });
        ReadingClient {
            jid,
            sock,
            received,
            closed,
            stop,
            reader: Some(reader),
        }
    }

    /// Writes `xml` (blocking; the server reads it).
    fn send(&mut self, xml: &str) {
        self.sock
            .write_all(xml.as_bytes())
            .unwrap_or_else(|e| panic!("{}: sending: {e}", self.jid));
    }

    /// Every element received since the last call, oldest first.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for ReadingClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// The user who floods one destination; its bounces are read as they come.
struct Flooder {
    c: ReadingClient,
    /// Where the flood goes (a bare JID).
    to: String,
    /// Flood messages written so far (ids `f0` .. `f{sent-1}`).
    sent: usize,
    syncs: u64,
    /// Ids of the iq answers received.
    iq_answers: HashSet<String>,
    /// Error stanzas received, by id (flood ids and markers).
    bounced: HashMap<String, Bounce>,
    /// Error stanzas received a second time for the same id.
    duplicate_bounces: Vec<String>,
    /// Messages that are not errors, not taken by [`Flooder::wait_message`].
    messages: Vec<String>,
}

impl Flooder {
    fn new(c: ReadingClient, to: &str) -> Flooder {
        Flooder {
            c,
            to: to.to_owned(),
            sent: 0,
            syncs: 0,
            iq_answers: HashSet::new(),
            bounced: HashMap::new(),
            duplicate_bounces: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Writes the next (up to) [`BATCH`] flood messages, of `n` in all, at once.
    fn send_batch(&mut self, n: usize) {
        let end = (self.sent + BATCH).min(n);
        let mut text = String::with_capacity((end - self.sent) * 1100);
        for i in self.sent..end {
            text.push_str(&flood_message(&self.to, i));
        }
        self.c.send(&text);
        self.sent = end;
    }

    /// Sorts what the reader received so far.
    fn pump(&mut self) {
        for x in self.c.take() {
            if x.starts_with("<iq") {
                if let Some(id) = stanza_id(&x) {
                    self.iq_answers.insert(id);
                }
                continue;
            }
            if !x.starts_with("<message") {
                continue;
            }
            if stanza_type(&x).as_deref() != Some("error") {
                self.messages.push(x);
                continue;
            }
            let id = stanza_id(&x).unwrap_or_default();
            let b = Bounce {
                condition: xmpp::condition(&x).unwrap_or_default(),
                kind: peer::tag_attr(&x, "<error", "type").unwrap_or_default(),
                xml: x,
            };
            match self.bounced.entry(id) {
                Entry::Occupied(_) => self.duplicate_bounces.push(b.xml),
                Entry::Vacant(v) => {
                    v.insert(b);
                }
            }
        }
    }

    /// A ping round trip to the flooder's own account (its shard has handled everything
    /// the flooder sent before), then sorts what was received.
    fn sync(&mut self) {
        self.syncs += 1;
        let id = format!("sync{}", self.syncs);
        self.c.send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
        let deadline = Instant::now() + WAIT;
        // Bounded by the deadline.
        loop {
            self.pump();
            if self.iq_answers.remove(&id) {
                return;
            }
            assert!(
                !self.c.is_closed(),
                "{}: the server closed the stream while waiting for ping {id}",
                self.c.jid
            );
            assert!(
                Instant::now() < deadline,
                "{}: no answer to ping {id} within {WAIT:?}",
                self.c.jid
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the (non-error) message `id` and takes it.
    fn wait_message(&mut self, id: &str) -> String {
        let deadline = Instant::now() + WAIT;
        // Bounded by the deadline.
        loop {
            self.pump();
            if let Some(i) = self.messages.iter().position(|x| is_message_id(x, id)) {
                return self.messages.remove(i);
            }
            if let Some(b) = self.bounced.get(id) {
                panic!("{}: {id} came back as an error: {}", self.c.jid, b.xml);
            }
            assert!(
                Instant::now() < deadline,
                "{}: no message {id} within {WAIT:?}",
                self.c.jid
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bounces of flood messages with `condition`.
    fn count(&self, condition: &str) -> usize {
        self.bounced
            .iter()
            .filter(|(id, b)| flood_index(id).is_some() && b.condition == condition)
            .count()
    }

    /// Bounces (flood and markers) with `condition`.
    fn count_all(&self, condition: &str) -> usize {
        self.bounced
            .values()
            .filter(|b| b.condition == condition)
            .count()
    }

    /// Sends one message `id` to the flood's destination.
    fn send_one(&mut self, id: &str) {
        let to = self.to.clone();
        self.c.send(&format!(
            "<message type='chat' to='{to}' id='{id}'><body>{id}</body></message>"
        ));
    }
}

/// What the stalled peer received, read incrementally.
#[derive(Default)]
struct Sink {
    seen: usize,
    /// Id → times received.
    delivered: HashMap<String, usize>,
    /// Flood indices in arrival order.
    order: Vec<usize>,
}

impl Sink {
    fn poll(&mut self, fake: &FakeServer) {
        for s in fake.stanzas_from(self.seen) {
            self.seen += 1;
            let Some(id) = stanza_id(&s) else { continue };
            if let Some(i) = flood_index(&id) {
                self.order.push(i);
            }
            *self.delivered.entry(id).or_insert(0) += 1;
        }
    }

    fn flood_delivered(&self) -> usize {
        self.delivered
            .keys()
            .filter(|id| flood_index(id).is_some())
            .count()
    }
}

/// How many of the `n` flood messages are accounted for (delivered or bounced).
fn covered(fl: &Flooder, sink: &Sink, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let id = format!("f{i}");
            sink.delivered.contains_key(&id) || fl.bounced.contains_key(&id)
        })
        .count()
}

/// Waits until every one of the `n` flood messages was delivered or bounced.
fn wait_accounted(fr: &Fedrouter, fl: &mut Flooder, sink: &mut Sink, fake: &FakeServer, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        fl.sync();
        sink.poll(fake);
        let got = covered(fl, sink, n);
        if got == n {
            return;
        }
        if Instant::now() >= deadline {
            let missing: Vec<usize> = (0..n)
                .filter(|i| {
                    let id = format!("f{i}");
                    !sink.delivered.contains_key(&id) && !fl.bounced.contains_key(&id)
                })
                .collect();
            if let Ok(dir) = std::env::var("STALLED_PEER_KEEP_LOG") {
                let _ = std::fs::copy(
                    fr.dir().join("fedrouter.log"),
                    format!("{dir}/{}.log", fr.admin),
                );
            }
            panic!(
                "after {WAIT:?}, {got} of {n} flood messages accounted for ({} delivered, {} bounced); \
                 missing: {}\nmetrics:\n{}\nWARN lines:\n{}",
                sink.flood_delivered(),
                fl.bounced.keys().filter(|id| flood_index(id).is_some()).count(),
                ranges(&missing),
                relevant_metrics(fr),
                fr.log_lines(&[" WARN "]).join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `[3, 4, 5, 9]` as `3..=5, 9` (ascending input).
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}..={} ({})", v[i], v[j], j - i + 1)
        });
        i = j + 1;
    }
    format!("{} in all: {}", v.len(), out.join(", "))
}

/// Sends markers to the flood's destination until one is delivered: a marker bounced
/// with one of `retry_on` (the queue still full, the domain backing off) is retried.
/// Returns how many were sent. The destination's queue is FIFO, so a delivered marker
/// shows that everything queued before it left.
fn deliver_marker(
    fl: &mut Flooder,
    sink: &mut Sink,
    fake: &FakeServer,
    tag: &str,
    retry_on: &[&str],
) -> usize {
    // Bounded: 100 markers, each waited for at most WAIT.
    for k in 0..100 {
        let id = format!("mk{tag}x{k}");
        fl.send_one(&id);
        let deadline = Instant::now() + WAIT;
        loop {
            fl.sync();
            sink.poll(fake);
            if sink.delivered.contains_key(&id) {
                return k + 1;
            }
            if let Some(b) = fl.bounced.get(&id) {
                assert!(
                    retry_on.contains(&b.condition.as_str()),
                    "marker {id} bounced with {}, expected one of {retry_on:?}: {}",
                    b.condition,
                    b.xml
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "marker {id}: neither delivered nor bounced within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no marker reached {} in 100 tries", fl.to);
}

/// The flood accounting, exactly: every one of `n` messages delivered once or bounced
/// once, never both, with a condition in `allowed` (condition, error type); delivered
/// ones in send order. Returns the number delivered.
fn assert_accounting(fl: &Flooder, sink: &Sink, n: usize, allowed: &[(&str, &str)]) -> usize {
    assert!(
        fl.duplicate_bounces.is_empty(),
        "{} bounces received twice, e.g. {}",
        fl.duplicate_bounces.len(),
        fl.duplicate_bounces[0]
    );
    assert!(
        fl.messages.is_empty(),
        "the flooder received {} messages that are not bounces, e.g. {}",
        fl.messages.len(),
        fl.messages[0]
    );
    let twice: Vec<(&String, &usize)> = sink.delivered.iter().filter(|(_, k)| **k > 1).collect();
    assert!(
        twice.is_empty(),
        "{} messages delivered more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let mut delivered = 0;
    let mut bounced = 0;
    for i in 0..n {
        let id = format!("f{i}");
        let d = sink.delivered.contains_key(&id);
        let b = fl.bounced.get(&id);
        match (d, b) {
            (true, Some(b)) => panic!("{id} was delivered and bounced: {}", b.xml),
            (false, None) => panic!("{id} was neither delivered nor bounced"),
            (true, None) => delivered += 1,
            (false, Some(b)) => {
                assert!(
                    allowed
                        .iter()
                        .any(|(c, k)| *c == b.condition && *k == b.kind),
                    "{id} bounced with {} (type {}), expected one of {allowed:?}: {}",
                    b.condition,
                    b.kind,
                    b.xml
                );
                if b.condition == "resource-constraint" {
                    assert!(
                        b.xml
                            .contains("too many stanzas waiting for this remote server"),
                        "{id}: resource-constraint bounce without the text: {}",
                        b.xml
                    );
                }
                bounced += 1;
            }
        }
    }
    let extra: Vec<&String> = sink
        .delivered
        .keys()
        .filter(|id| flood_index(id).is_some_and(|i| i >= n))
        .collect();
    assert!(extra.is_empty(), "delivered ids never sent: {extra:?}");
    assert_eq!(delivered + bounced, n);
    assert!(
        sink.order.windows(2).all(|w| w[0] < w[1]),
        "delivered out of order (RFC 6120 §10.1), first inversion at {:?}",
        sink.order.windows(2).find(|w| w[0] >= w[1])
    );
    delivered
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

/// Two local users: a message from `a` to `b`'s full JID, answered back.
struct LocalPair {
    label: String,
    a: Client,
    a_jid: String,
    b: Client,
    b_jid: String,
    done: usize,
}

impl LocalPair {
    fn new(t: &Target, label: &str, a: &str, b: &str) -> LocalPair {
        let (a, a_jid) = login(t, a, "rt");
        let (b, b_jid) = login(t, b, "rt");
        LocalPair {
            label: label.to_owned(),
            a,
            a_jid,
            b,
            b_jid,
            done: 0,
        }
    }

    fn round_trip(&mut self) {
        let k = self.done;
        let id = format!("loc{k}");
        self.a.send(&format!(
            "<message type='chat' to='{}' id='{id}'><body>ping {k}</body></message>",
            self.b_jid
        ));
        let m = self.b.recv_until(|x| is_message_id(x, &id), WAIT);
        assert_ne!(
            stanza_type(&m).as_deref(),
            Some("error"),
            "{}: {m}",
            self.label
        );
        let re = format!("loc{k}re");
        self.b.send(&format!(
            "<message type='chat' to='{}' id='{re}'><body>pong {k}</body></message>",
            self.a_jid
        ));
        let m = self.a.recv_until(|x| is_message_id(x, &re), WAIT);
        assert_ne!(
            stanza_type(&m).as_deref(),
            Some("error"),
            "{}: {m}",
            self.label
        );
        self.done += 1;
    }
}

/// A remote domain served by an unpaused [`FakeServer`] and a scripted inbound stream
/// from it, authenticated by dialback, and a local user: the peer's message to the user
/// comes in on the inbound stream, the user's answer goes out on the server's outbound
/// stream to the fake server.
struct S2sPair {
    label: String,
    domain: String,
    fake: FakeServer,
    peer: Peer,
    user: Client,
    user_jid: String,
    seen: usize,
    done: usize,
}

impl S2sPair {
    fn new(
        net: u8,
        host: u8,
        domain: &str,
        fake: FakeServer,
        secret: &DialbackSecret,
        t: &Target,
        user: &str,
    ) -> S2sPair {
        let mut peer = Peer::connect(SocketAddr::new(ip(net, 2).into(), 5269));
        peer.send(header(Some(domain), LOCAL).as_bytes())
            .expect("send header");
        assert!(
            peer.read_until_contains("</stream:features>", WAIT),
            "{domain}: no stream features: {:?}",
            peer.text()
        );
        let id = peer.stream_id().expect("stream id");
        peer.send(db_result(domain, LOCAL, &secret.key(LOCAL, domain, &id)).as_bytes())
            .expect("send db:result");
        assert!(
            peer.read_until(WAIT, |t| t.contains("<db:result")),
            "{domain}: no dialback answer: {:?}",
            peer.text()
        );
        assert_eq!(
            peer.db_result_type(LOCAL, domain).as_deref(),
            Some("valid"),
            "{domain}: {:?}",
            peer.text()
        );
        let (user, user_jid) = login(t, user, "rt");
        S2sPair {
            label: format!("{domain} (.{host}) ↔ {user_jid}"),
            domain: domain.to_owned(),
            fake,
            peer,
            user,
            user_jid,
            seen: 0,
            done: 0,
        }
    }

    fn round_trip(&mut self) {
        let k = self.done;
        let id = format!("s2s{k}");
        let from = format!("rt@{}/r", self.domain);
        self.peer
            .send(
                format!(
                    "<message from='{from}' to='{}' type='chat' id='{id}'><body>ping {k}</body></message>",
                    self.user_jid
                )
                .as_bytes(),
            )
            .unwrap_or_else(|e| panic!("{}: sending on the inbound stream: {e}", self.label));
        let m = self.user.recv_until(|x| is_message_id(x, &id), WAIT);
        assert_ne!(
            stanza_type(&m).as_deref(),
            Some("error"),
            "{}: {m}",
            self.label
        );
        let re = format!("s2s{k}re");
        self.user.send(&format!(
            "<message type='chat' to='{from}' id='{re}'><body>pong {k}</body></message>"
        ));
        let deadline = Instant::now() + WAIT;
        // Bounded by the deadline.
        loop {
            let new = self.fake.stanzas_from(self.seen);
            self.seen += new.len();
            if let Some(s) = new.iter().find(|s| is_message_id(s, &re)) {
                assert_ne!(
                    stanza_type(s).as_deref(),
                    Some("error"),
                    "{}: {s}",
                    self.label
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: answer {re} did not reach {} within {WAIT:?}",
                self.label,
                self.domain
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.done += 1;
    }
}

// ---------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------

/// The server, the stalled peer, the flooder and the round-trip pairs of one test.
///
/// Fields drop in order: the clients and peers before the server (which must not wait on
/// a client that no longer reads while it shuts down), the zone server last.
struct Lab {
    /// The stalled domain.
    d: String,
    flooder: Flooder,
    sink: Sink,
    locals: Vec<LocalPair>,
    remotes: Vec<S2sPair>,
    stalled: FakeServer,
    fr: Fedrouter,
    _dns: ZoneServer,
}

/// Where things are: the stalled domain on shard 0, the flooder on `flooder_shard`, and
/// round-trip pairs wholly on each shard of `pair_shards` (a local pair, and an S2S pair
/// whose remote domain and local user are both there).
struct Layout {
    shards: usize,
    flooder_shard: usize,
    pair_shards: Vec<usize>,
}

impl Lab {
    /// Starts everything, authenticates every stream, does one round trip of each pair
    /// and one delivered message to the stalled domain, then pauses it.
    fn start(net: u8, layout: &Layout, extra: &str) -> Lab {
        let shards = layout.shards;
        let d = domain_on("stalled", 0, shards);
        let flooder_name = user_on("flooder", layout.flooder_shard, shards);
        let mut records = xmpp_server(LOCAL, ip(net, 2));
        records.extend(xmpp_server(&d, ip(net, 5)));
        let mut remote_domains = Vec::new();
        for (i, &s) in layout.pair_shards.iter().enumerate() {
            let o = domain_on(&format!("other{i}n"), s, shards);
            records.extend(xmpp_server(&o, ip(net, 6 + i as u8)));
            remote_domains.push(o);
        }
        let dns = zone(net, records);
        let d_secret = DialbackSecret::new(format!("{d}'s dialback secret"));
        let stalled = FakeServer::start(SocketAddr::new(ip(net, 5).into(), 5269), &d, d_secret);
        let fr = Fedrouter::start(
            LOCAL,
            &c2s_config(net, ip(net, 2), shards, &format!("{extra}\n{GOOGLE_STYLE}")),
        );
        let t = target(&fr, net);

        let mut users = vec![flooder_name.clone()];
        let mut local_names = Vec::new();
        let mut s2s_names = Vec::new();
        for (i, &s) in layout.pair_shards.iter().enumerate() {
            let (a, b) = (
                user_on(&format!("loca{i}n"), s, shards),
                user_on(&format!("locb{i}n"), s, shards),
            );
            let r = user_on(&format!("rem{i}n"), s, shards);
            users.extend([a.clone(), b.clone(), r.clone()]);
            local_names.push((a, b, s));
            s2s_names.push((r, s));
        }
        for u in &users {
            add_user(&fr.config_path(), &format!("{u}@{LOCAL}"), PASSWORD);
        }

        let c = ReadingClient::login(t.addr, &flooder_name, "flood");
        let mut flooder = Flooder::new(c, &format!("sink@{d}"));
        let mut locals: Vec<LocalPair> = local_names
            .iter()
            .map(|(a, b, s)| LocalPair::new(&t, &format!("local pair on shard {s}"), a, b))
            .collect();
        let mut remotes: Vec<S2sPair> = Vec::new();
        for (i, (o, (r, _))) in remote_domains.iter().zip(&s2s_names).enumerate() {
            let host = 6 + i as u8;
            let secret = DialbackSecret::new(format!("{o}'s dialback secret"));
            let fake = FakeServer::start(
                SocketAddr::new(ip(net, host).into(), 5269),
                o,
                secret.clone(),
            );
            remotes.push(S2sPair::new(net, host, o, fake, &secret, &t, r));
        }
        for p in &mut locals {
            p.round_trip();
        }
        for p in &mut remotes {
            p.round_trip();
        }

        // The outbound stream to the stalled domain is up and authenticated: a message
        // got through. Then the peer stops reading.
        let mut sink = Sink::default();
        deliver_marker(&mut flooder, &mut sink, &stalled, "warm", &[]);
        stalled.pause();

        Lab {
            d,
            stalled,
            fr,
            flooder,
            sink,
            locals,
            remotes,
            _dns: dns,
        }
    }

    /// One round trip of every pair.
    fn round(&mut self) {
        for p in &mut self.locals {
            p.round_trip();
        }
        for p in &mut self.remotes {
            p.round_trip();
        }
    }

    /// Round trips done by the pair that did fewest.
    fn rounds_done(&self) -> usize {
        self.locals
            .iter()
            .map(|p| p.done)
            .chain(self.remotes.iter().map(|p| p.done))
            .min()
            .unwrap_or(0)
    }

    fn pairs(&self) -> String {
        self.locals
            .iter()
            .map(|p| format!("{}: {} ↔ {} ×{}", p.label, p.a_jid, p.b_jid, p.done))
            .chain(
                self.remotes
                    .iter()
                    .map(|p| format!("s2s {} ×{}", p.label, p.done)),
            )
            .collect::<Vec<_>>()
            .join("; ")
    }
}

// ---------------------------------------------------------------------------------------
// Congestion stays with its destination
// ---------------------------------------------------------------------------------------

/// What operators see of a congested destination, looked at repeatedly until seen.
#[derive(Default)]
struct Observed {
    /// `congested_destinations{proto="s2s"}` was 1.
    gauge: bool,
    /// A `/status` object with `congested`, a queue within `1..=queue_per_domain` and a
    /// stream whose `write_stalled_ms` is at least 1000.
    status: Option<serde_json::Value>,
    /// The last `/status` object looked at.
    last: serde_json::Value,
}

impl Observed {
    fn done(&self) -> bool {
        self.gauge && self.status.is_some()
    }

    fn look(&mut self, fr: &Fedrouter, d: &str) {
        if !self.gauge {
            self.gauge = congested_destinations(&scrape(fr)) == 1.0;
        }
        if self.status.is_none() {
            let s = domain_status(fr, d).unwrap_or_else(|| panic!("{d} not in /status"));
            if s["congested"] == true
                && s["queue"]
                    .as_u64()
                    .is_some_and(|q| (1..=QUEUE_PER_DOMAIN).contains(&q))
                && write_stalled_ms(&s).is_some_and(|ms| ms >= 1000.0)
            {
                self.status = Some(s.clone());
            }
            self.last = s;
        }
    }
}

/// The congestion scenario for one placement: flood the paused peer until its queue is
/// full (the first `resource-constraint` bounce), then keep flooding with a round of
/// round trips after every batch (at least [`ROUNDS`]), check what operators see, resume
/// the peer and account for every flood message.
fn congestion_stays_with_its_destination(net: u8, layout: Layout) {
    let extra = "[s2s]\nwrite_stall_timeout = \"10m\"\n[c2s]\ntls_required = false\n";
    let mut lab = Lab::start(net, &layout, extra);
    let n = FLOOD;
    let before = scrape(&lab.fr);

    // Until the queue is full.
    while lab.flooder.count("resource-constraint") == 0 {
        assert!(
            lab.flooder.sent < n,
            "{n} messages to the stalled {} and no resource-constraint bounce: the queue is not bounded \
             (bounces: {:?})",
            lab.d,
            lab.flooder.bounced.values().next()
        );
        lab.flooder.send_batch(n);
        lab.flooder.sync();
    }
    let filled_after = lab.flooder.sent;

    // Congested: everyone else is served, on every shard, while the flood goes on. What
    // operators see is looked at between batches, each of which fills the queue again (a
    // paused peer's kernel may still take a little more now and then, when it compacts
    // its receive queue, so congestion can lift for a moment).
    let mut seen = Observed::default();
    let deadline = Instant::now() + WAIT;
    while lab.flooder.sent < n || lab.rounds_done() < ROUNDS + 1 || !seen.done() {
        if lab.flooder.sent < n {
            lab.flooder.send_batch(n);
            lab.flooder.sync();
        } else if !seen.done() {
            assert!(
                Instant::now() < deadline,
                "during the stall, never saw congested_destinations{{proto=\"s2s\"}} = 1 ({}) \
                 and a /status with congested, a queue within 1..={QUEUE_PER_DOMAIN} and \
                 write_stalled_ms ≥ 1000 ({}); last /status: {}\n{}",
                seen.gauge,
                seen.status.is_some(),
                seen.last,
                relevant_metrics(&lab.fr)
            );
            lab.flooder.sync();
            std::thread::sleep(Duration::from_millis(50));
        }
        if lab.flooder.sent < n || lab.rounds_done() < ROUNDS + 1 {
            lab.round();
        }
        seen.look(&lab.fr, &lab.d);
    }
    lab.flooder.sync();
    let status = seen.status.clone().expect("seen");
    let queue = status["queue"].as_u64().expect("checked");

    let line = wait_log_field(
        &lab.fr,
        "remote server congested",
        "remote",
        &lab.d,
        &["queue="],
    );
    assert!(line.contains("WARN"), "{line}");
    let during = scrape(&lab.fr);
    assert!(
        bounced_by(&during, "queue_full") >= 1.0,
        "{}",
        relevant_metrics(&lab.fr)
    );
    assert_eq!(
        lab.sink.flood_delivered(),
        0,
        "the paused peer received flood messages"
    );

    // The peer reads again: the queue drains, everything is accounted for.
    lab.stalled.resume();
    wait_accounted(&lab.fr, &mut lab.flooder, &mut lab.sink, &lab.stalled, n);
    let markers = deliver_marker(
        &mut lab.flooder,
        &mut lab.sink,
        &lab.stalled,
        "end",
        &["resource-constraint"],
    );
    lab.flooder.sync();
    lab.sink.poll(&lab.stalled);
    let delivered = assert_accounting(
        &lab.flooder,
        &lab.sink,
        n,
        &[("resource-constraint", "wait")],
    );
    assert!(delivered >= 1, "nothing of the flood was delivered");
    let bounced = n - delivered;
    assert!(bounced >= 1);

    // Recovered.
    let rec = wait_log_field(
        &lab.fr,
        "remote server recovered",
        "remote",
        &lab.d,
        &["congested_ms="],
    );
    let after = wait_metrics(
        &lab.fr,
        "congested_destinations back to 0",
        || {},
        |s| congested_destinations(s) == 0.0,
    );
    assert_eq!(
        bounced_by(&after, "queue_full") - bounced_by(&before, "queue_full"),
        lab.flooder.count_all("resource-constraint") as f64,
        "bounced_by_cause_total{{cause=\"queue_full\"}} against the bounces received:\n{}",
        relevant_metrics(&lab.fr)
    );
    assert_eq!(
        stalled_closed(&after, "s2s"),
        0.0,
        "no stream should be closed"
    );
    assert_eq!(
        stalled_closed(&after, "c2s"),
        0.0,
        "no stream should be closed"
    );
    let status = domain_status(&lab.fr, &lab.d).expect("in /status");
    assert_eq!(status["congested"], false, "{status}");
    // Everyone is still served afterwards.
    lab.round();
    assert!(lab.fr.healthy());
    eprintln!(
        "{} shard(s), flooder on shard {}: queue full after {filled_after} sent; {delivered} delivered, \
         {bounced} bounced; {markers} end marker(s); status during {status_during}; pairs: {}; \
         reads_paused_ms before {:?} during {:?} after {:?}; {rec}",
        layout.shards,
        layout.flooder_shard,
        lab.pairs(),
        reads_paused(&before),
        reads_paused(&during),
        reads_paused(&after),
        status_during = serde_json::json!({"congested": true, "queue": queue}),
    );
}

/// (a) One shard: the flooder, the stalled domain and every round trip on it.
#[test]
fn one_shard_congestion_stays_with_its_destination() {
    congestion_stays_with_its_destination(
        234,
        Layout {
            shards: 1,
            flooder_shard: 0,
            pair_shards: vec![0],
        },
    );
}

/// (b) Two shards, the flooder's bare JID on the stalled domain's shard; round trips on
/// both shards.
#[test]
fn two_shards_flooder_with_the_stalled_domain() {
    congestion_stays_with_its_destination(
        235,
        Layout {
            shards: 2,
            flooder_shard: 0,
            pair_shards: vec![0, 1],
        },
    );
}

/// (c) Two shards, the flooder on the other shard than the stalled domain; round trips on
/// both shards, one pair of each kind wholly on the stalled domain's shard.
#[test]
fn two_shards_flooder_on_the_other_shard() {
    congestion_stays_with_its_destination(
        237,
        Layout {
            shards: 2,
            flooder_shard: 1,
            pair_shards: vec![0, 1],
        },
    );
}

// ---------------------------------------------------------------------------------------
// Write stalls
// ---------------------------------------------------------------------------------------

/// `s2s.write_stall_timeout = "2s"`: the stream to the paused peer is closed by the
/// timeout (metric, `stopped reading` log line), what it and the queue held is bounced
/// with `remote-server-timeout`, the domain backs off, round trips go on throughout; once
/// the peer reads again, what the kernel had is delivered, and every flood message is
/// delivered or bounced exactly once. Then the domain is reachable again.
#[test]
fn stalled_s2s_stream_is_closed_and_what_waited_bounced() {
    const NET: u8 = 238;
    let layout = Layout {
        shards: 2,
        flooder_shard: 1,
        pair_shards: vec![0],
    };
    let extra = "[s2s]\nwrite_stall_timeout = \"2s\"\n[c2s]\ntls_required = false\n";
    let mut lab = Lab::start(NET, &layout, extra);
    let n = STALL_FLOOD;
    let before = scrape(&lab.fr);

    while lab.flooder.sent < n || lab.rounds_done() < ROUNDS + 1 {
        if lab.flooder.sent < n {
            lab.flooder.send_batch(n);
            lab.flooder.sync();
        }
        lab.round();
    }

    // Closed by the timeout; the flooder keeps reading its bounces meanwhile.
    let fl = &mut lab.flooder;
    let closed = wait_metrics(
        &lab.fr,
        "stalled_streams_closed_total{proto=\"s2s\"} ≥ 1",
        || fl.sync(),
        |s| stalled_closed(s, "s2s") >= 1.0,
    );
    let line = lab
        .fr
        .wait_log(&["stopped reading", &lab.d], WAIT)
        .unwrap_or_else(|| panic!("no 'stopped reading' line naming {}", lab.d));
    let deadline = Instant::now() + WAIT;
    while lab.flooder.count("remote-server-timeout") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stream was closed but no flood message was bounced with remote-server-timeout; \
             bounces by condition: rc {} other {}",
            lab.flooder.count("resource-constraint"),
            lab.flooder.bounced.len()
        );
        lab.flooder.sync();
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still served after the close.
    for _ in 0..ROUNDS {
        lab.round();
    }

    lab.stalled.resume();
    wait_accounted(&lab.fr, &mut lab.flooder, &mut lab.sink, &lab.stalled, n);
    // Reachable again once the backoff is over.
    let markers = deliver_marker(
        &mut lab.flooder,
        &mut lab.sink,
        &lab.stalled,
        "end",
        &["remote-server-timeout", "resource-constraint"],
    );
    lab.flooder.sync();
    lab.sink.poll(&lab.stalled);
    let delivered = assert_accounting(
        &lab.flooder,
        &lab.sink,
        n,
        &[
            ("resource-constraint", "wait"),
            ("remote-server-timeout", "wait"),
        ],
    );
    let rst = lab.flooder.count("remote-server-timeout");
    let rc = lab.flooder.count("resource-constraint");
    let after = scrape(&lab.fr);
    let d = |cause: &str| bounced_by(&after, cause) - bounced_by(&before, cause);
    assert!(
        d("write_stall") >= 1.0,
        "bounced_by_cause_total{{cause=\"write_stall\"}}:\n{}",
        relevant_metrics(&lab.fr)
    );
    assert_eq!(
        d("write_stall") + d("backoff") + d("unreachable"),
        lab.flooder.count_all("remote-server-timeout") as f64,
        "write_stall + backoff + unreachable bounces against the remote-server-timeout bounces received:\n{}",
        relevant_metrics(&lab.fr)
    );
    assert_eq!(
        d("queue_full"),
        lab.flooder.count_all("resource-constraint") as f64,
        "queue_full bounces against the resource-constraint bounces received:\n{}",
        relevant_metrics(&lab.fr)
    );
    assert_eq!(
        stalled_closed(&after, "c2s"),
        0.0,
        "a client stream was closed"
    );
    lab.round();
    assert!(lab.fr.healthy());
    eprintln!(
        "s2s write stall: {delivered} delivered, {rc} resource-constraint, {rst} remote-server-timeout; \
         {markers} end marker(s); stalled closed {}; the fake server accepted {} connection(s); pairs: {}; {line}",
        stalled_closed(&closed, "s2s"),
        lab.stalled.accepted(),
        lab.pairs()
    );
}

/// `c2s.write_stall_timeout = "2s"`: a client that stops reading while another user
/// floods its bare JID is closed by the timeout (metric, `stopped reading`); the
/// messages that waited for it are handled as for an unavailable resource (RFC 6121
/// §8.5.2.2: `service-unavailable`, as it has no other resource and offline storage is
/// off), what its kernel buffers
/// held still reaches it, and the sender's round trips with a third user (on the stalled
/// client's shard) go on throughout.
#[test]
fn stalled_client_is_closed_and_others_served() {
    const NET: u8 = 239;
    const SHARDS: usize = 2;
    let victim = user_on("victim", 0, SHARDS);
    let third = user_on("third", 0, SHARDS);
    let sender = user_on("sender", 1, SHARDS);
    let _dns = zone(NET, xmpp_server(LOCAL, ip(NET, 2)));
    let fr = Fedrouter::start(
        LOCAL,
        &c2s_config(
            NET,
            ip(NET, 2),
            SHARDS,
            // Offline storage off: what the closed session never got is refused, which
            // this test accounts for (with storage on it would be stored, XEP-0160).
            "[c2s]\nwrite_stall_timeout = \"2s\"\ntls_required = false\n\
             max_offline_messages = 0\n",
        ),
    );
    for u in [&victim, &third, &sender] {
        add_user(&fr.config_path(), &format!("{u}@{LOCAL}"), PASSWORD);
    }
    let t = target(&fr, NET);
    let n = STALL_FLOOD;

    // The victim becomes available, then stops reading.
    let (mut vic, vic_full) = login(&t, &victim, "slow");
    let mut vic_syncs = 0;
    vic.send("<presence/>");
    sync(&mut vic, &mut vic_syncs);
    let c = ReadingClient::login(t.addr, &sender, "fast");
    let sender_full = c.jid.clone();
    let mut fl = Flooder::new(c, &format!("{victim}@{LOCAL}"));
    let (mut tia, tia_full) = login(&t, &third, "rt");
    let mut rounds = 0usize;
    let round_trip = |fl: &mut Flooder, tia: &mut Client, rounds: &mut usize| {
        let id = format!("rt{rounds}");
        fl.c.send(&format!(
            "<message type='chat' to='{tia_full}' id='{id}'><body>ping</body></message>"
        ));
        tia.recv_until(|x| is_message_id(x, &id), WAIT);
        let re = format!("rt{rounds}re");
        tia.send(&format!(
            "<message type='chat' to='{sender_full}' id='{re}'><body>pong</body></message>"
        ));
        let m = fl.wait_message(&re);
        assert_ne!(stanza_type(&m).as_deref(), Some("error"), "{m}");
        *rounds += 1;
    };

    while fl.sent < n || rounds < ROUNDS {
        if fl.sent < n {
            fl.send_batch(n);
            fl.sync();
        }
        round_trip(&mut fl, &mut tia, &mut rounds);
    }
    let closed = wait_metrics(
        &fr,
        "stalled_streams_closed_total{proto=\"c2s\"} ≥ 1",
        || fl.sync(),
        |s| stalled_closed(s, "c2s") >= 1.0,
    );
    let line = fr
        .wait_log(&["stopped reading"], WAIT)
        .unwrap_or_else(|| panic!("no 'stopped reading' line"));
    // Unavailable now: a new message to the bare JID is bounced at once.
    fl.send_one("after-close");
    let deadline = Instant::now() + WAIT;
    while !fl.bounced.contains_key("after-close") {
        assert!(
            Instant::now() < deadline,
            "no bounce for a message to {victim}@{LOCAL} after its only session was closed"
        );
        fl.sync();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fl.bounced["after-close"].condition, "service-unavailable",
        "{}",
        fl.bounced["after-close"].xml
    );
    for _ in 0..ROUNDS {
        round_trip(&mut fl, &mut tia, &mut rounds);
    }

    // What the kernel held reaches the victim, then the connection ends.
    vic.timeout = WAIT;
    vic.expect_closed();
    let mut sink = Sink::default();
    for x in vic.take_buffered(|x| x.starts_with("<message")) {
        if let Some(id) = stanza_id(&x) {
            if let Some(i) = flood_index(&id) {
                sink.order.push(i);
            }
            *sink.delivered.entry(id).or_insert(0) += 1;
        }
    }
    let deadline = Instant::now() + WAIT;
    while covered(&fl, &sink, n) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} accounted for after {WAIT:?} ({} delivered to {vic_full})",
            covered(&fl, &sink, n),
            sink.flood_delivered()
        );
        fl.sync();
        std::thread::sleep(Duration::from_millis(20));
    }
    fl.sync();
    // `after-close` is not part of the flood.
    fl.bounced.remove("after-close");
    let delivered = assert_accounting(&fl, &sink, n, &[("service-unavailable", "cancel")]);
    assert!(
        delivered >= 1,
        "nothing reached {vic_full} before the close"
    );
    assert!(
        delivered < n,
        "everything reached {vic_full}: it never stalled"
    );
    let after = scrape(&fr);
    assert_eq!(stalled_closed(&after, "s2s"), 0.0);
    assert_eq!(
        stalled_closed(&after, "c2s"),
        1.0,
        "only {vic_full} stopped reading:\n{}",
        relevant_metrics(&fr)
    );
    assert!(fr.healthy());
    eprintln!(
        "c2s write stall: {delivered} delivered to {vic_full}, {} bounced; {rounds} round trips; \
         stalled closed {}; {line}",
        n - delivered,
        stalled_closed(&closed, "c2s")
    );
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The write-stall timeouts: 30 s by default, humantime values, and zero refused with a
/// message naming the key, by the parser and by `fedrouter serve`, which does not start.
#[test]
fn zero_write_stall_timeout_is_refused_by_name() {
    const NET: u8 = 251;
    let c = Config::from_toml_str("").expect("defaults");
    assert_eq!(c.s2s.write_stall_timeout, Duration::from_secs(30));
    assert_eq!(c.c2s.write_stall_timeout, Duration::from_secs(30));
    let c = Config::from_toml_str(
        "[s2s]\nwrite_stall_timeout = \"2s\"\n[c2s]\nwrite_stall_timeout = \"1m 30s\"\n",
    )
    .expect("humantime values");
    assert_eq!(c.s2s.write_stall_timeout, Duration::from_secs(2));
    assert_eq!(c.c2s.write_stall_timeout, Duration::from_secs(90));

    for section in ["s2s", "c2s"] {
        let key = format!("{section}.write_stall_timeout");
        let extra = format!("[{section}]\nwrite_stall_timeout = \"0s\"\n");
        let err = Config::from_toml_str(&extra).expect_err("0s must be refused");
        match &err {
            ConfigError::Invalid { key: k, .. } => assert_eq!(k, &key, "{err}"),
            other => panic!("expected Invalid for {key}, got {other:?}"),
        }
        assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");

        // `fedrouter serve` with that file exits with the message, binding nothing.
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("fedrouter.toml");
        let text = format!(
            "data_dir = {:?}\n{}",
            dir.path().join("data").display().to_string(),
            config(NET, ip(NET, 2), &[LOCAL], 1, &extra)
        );
        std::fs::write(&path, text).expect("write configuration");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
            .arg("serve")
            .arg("-c")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fedrouter serve");
        let deadline = Instant::now() + WAIT;
        // Bounded by the deadline.
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for fedrouter serve") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fedrouter serve with {key} = 0s is still running after {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(
            !status.success(),
            "fedrouter serve accepted {key} = 0s: {stderr}"
        );
        assert!(stderr.contains(&key), "{status}: {stderr}");
    }
}
