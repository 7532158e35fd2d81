//! Nothing dropped without a trace (issue 21, part 1): `benches/README.md`'s "error
//! replies go missing" case, with real sockets on loopback.
//!
//! A remote server `r.test` (a scripted inbound [`peer::Peer`], authenticated by
//! dialback) sends [`N`] messages to a local JID with no account; each is answered with a
//! `service-unavailable` error (RFC 6121 §8.5.1) over the server's outbound stream to
//! `r.test`, whose receiving side ([`peer::FakeServer`]) has stopped reading. The replies
//! fill the kernel's buffers, then `s2s.send_queue_bytes`, then the domain's queue
//! (`s2s.queue_per_domain`); what does not fit cannot be bounced (an error stanza never
//! is, RFC 6120 §8.3.1) and is dropped. The contract checked, once the peer reads again:
//!
//! - every reply either arrived (once) or was counted as dropped:
//!   `received + undeliverable_errors_total == N` exactly, and some were dropped;
//! - the destination is named: `dropped_errors` in `r.test`'s `/status` object equals
//!   the metric, and a WARN names `r.test`;
//! - the stream still carries what comes after (an end marker's reply arrives).
//!
//! Every wait is for an event and bounded by [`WAIT`], which only catches hangs. Owns the
//! loopback range `127.0.184.0/24`: `.1:5300` DNS, the server on `.2` (5269 S2S, 9269
//! admin), the remote server `r.test` on `.5:5269`.

#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fedrouter::dialback::DialbackSecret;
use peer::{db_result, header, FakeServer, Peer};
use server::{config, http_get, ip, metric_sum, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};

const NET: u8 = 184;
const LOCAL: &str = "a.test";
const REMOTE: &str = "r.test";
/// A local JID with no account: every message to it is answered with an error.
const NOBODY: &str = "nobody@a.test";

/// Messages sent (each answered with a ~2.3 KB error: some 18 MB, beyond what the
/// loopback socket buffers, `send_queue_bytes` and the queue hold).
const N: usize = 8000;

/// Length of the filler in each message's id, which the error reply carries back.
const ID_PAD: usize = 2000;

/// The bound of every wait for an event: it only catches hangs.
const WAIT: Duration = Duration::from_secs(120);

fn flood_id(i: usize, pad: &str) -> String {
    format!("f{i}-{pad}")
}

/// The index of a flood reply's id (`f{i}-...`).
fn flood_index(id: &str) -> Option<usize> {
    id.strip_prefix('f')?.split('-').next()?.parse().ok()
}

/// `undeliverable_errors_total`, all causes.
fn dropped_metric(fr: &Fedrouter) -> f64 {
    let (status, body) =
        http_get(fr.admin, "/metrics", Duration::from_secs(30)).expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    metric_sum(&body, "fedrouter_undeliverable_errors_total", &[])
}

/// `r.test`'s object in `/status`.
fn remote_status(fr: &Fedrouter) -> serde_json::Value {
    let (code, body) = http_get(fr.admin, "/status", Duration::from_secs(30)).expect("GET /status");
    assert_eq!(code, 200, "GET /status: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    v.as_array()
        .and_then(|a| a.iter().find(|x| x["domain"] == REMOTE).cloned())
        .unwrap_or_else(|| panic!("no {REMOTE} in /status: {v}"))
}

/// The flood replies `fake` received: distinct indexes, and how many arrived in all
/// (duplicates included). Each must be a `service-unavailable` error.
fn received(fake: &FakeServer) -> (BTreeSet<usize>, usize) {
    let mut seen = BTreeSet::new();
    let mut all = 0;
    for s in fake.stanzas() {
        let tag = &s[..s.find('>').unwrap_or(s.len())];
        let Some(i) = peer::attr(tag, "id").as_deref().and_then(flood_index) else {
            continue;
        };
        assert!(
            tag.contains("type='error'") || tag.contains("type=\"error\""),
            "a flood reply that is not an error: {tag}"
        );
        assert!(
            s.contains("service-unavailable"),
            "a flood reply without service-unavailable: {}",
            &s[s.len().saturating_sub(400)..]
        );
        seen.insert(i);
        all += 1;
    }
    (seen, all)
}

/// Sends a message to [`NOBODY`] with `id` from the remote server.
fn message(id: &str) -> String {
    format!("<message from='flood@{REMOTE}/x' to='{NOBODY}' id='{id}' type='chat'><body>?</body></message>")
}

#[test]
fn dropped_error_replies_are_counted_with_their_destination() {
    let remote_addr = SocketAddr::new(ip(NET, 5).into(), 5269);
    let _dns = zone(NET, xmpp_server(REMOTE, ip(NET, 5)));
    let secret = DialbackSecret::new("r.test dialback secret");
    let fake = FakeServer::start(remote_addr, REMOTE, secret.clone());
    let extra = format!(
        "{GOOGLE_STYLE}\n[s2s]\nqueue_per_domain = 10\nmax_stanza_size = 65536\n\
         send_queue_bytes = 65536\nwrite_stall_timeout = \"600s\"\n"
    );
    let fr = Fedrouter::start(
        "dropped-errors",
        &config(NET, ip(NET, 2), &[LOCAL], 1, &extra),
    );

    // r.test's inbound stream, authenticated by dialback (fedrouter asks the fake server).
    let mut inbound = Peer::connect(SocketAddr::new(ip(NET, 2).into(), 5269));
    inbound
        .send(header(Some(REMOTE), LOCAL).as_bytes())
        .expect("send header");
    assert!(
        inbound.read_until_contains("</stream:features>", WAIT),
        "no stream features: {:?}",
        inbound.text()
    );
    let id = inbound.stream_id().expect("stream id");
    inbound
        .send(db_result(REMOTE, LOCAL, &secret.key(LOCAL, REMOTE, &id)).as_bytes())
        .expect("send db:result");
    assert!(
        inbound.read_until(WAIT, |t| t.contains("<db:result")),
        "no dialback answer: {:?}",
        inbound.text()
    );
    assert_eq!(
        inbound.db_result_type(LOCAL, REMOTE).as_deref(),
        Some("valid"),
        "{:?}",
        inbound.text()
    );

    // The outbound stream to r.test is up: a first reply arrives.
    inbound.send(message("warm").as_bytes()).expect("send");
    fake.wait_stanza(&["id='warm'"], WAIT)
        .or_else(|| fake.wait_stanza(&["id=\"warm\""], WAIT))
        .unwrap_or_else(|| panic!("no reply to the warm-up message; log:\n{}", fr.log()));
    assert_eq!(dropped_metric(&fr), 0.0, "drops before the flood");

    // The peer stops reading; N messages, each answered with an error for it.
    fake.pause();
    let pad = "x".repeat(ID_PAD);
    let batch = 100;
    for start in (0..N).step_by(batch) {
        let chunk: String = (start..(start + batch).min(N))
            .map(|i| message(&flood_id(i, &pad)))
            .collect();
        inbound
            .send(chunk.as_bytes())
            .unwrap_or_else(|e| panic!("sending messages {start}..: {e}"));
    }
    // Drops happened (the event the pause was for), then the peer reads again.
    let deadline = Instant::now() + WAIT;
    while dropped_metric(&fr) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no error reply dropped with the peer not reading; status: {}",
            remote_status(&fr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fake.resume();

    // Every reply is accounted for: arrived, or counted as dropped.
    let deadline = Instant::now() + WAIT;
    loop {
        let dropped = dropped_metric(&fr) as usize;
        let (seen, _) = received(&fake);
        if seen.len() + dropped >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replies received {} + dropped {dropped} < {N}: {} went missing without a trace; \
             status: {}",
            seen.len(),
            N - seen.len() - dropped,
            remote_status(&fr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The end marker's reply comes after everything that was queued.
    inbound.send(message("end").as_bytes()).expect("send");
    fake.wait_stanza(&["id='end'"], WAIT)
        .or_else(|| fake.wait_stanza(&["id=\"end\""], Duration::ZERO))
        .unwrap_or_else(|| panic!("no reply to the end marker; status: {}", remote_status(&fr)));

    let dropped = dropped_metric(&fr);
    let (seen, all) = received(&fake);
    assert_eq!(all, seen.len(), "a reply arrived twice");
    assert!(
        seen.iter().all(|&i| i < N),
        "a reply for a message never sent"
    );
    assert!(
        dropped > 0.0,
        "nothing was dropped: the case is not reproduced"
    );
    assert_eq!(
        seen.len() + dropped as usize,
        N,
        "received {} + dropped {dropped}",
        seen.len()
    );
    let status = remote_status(&fr);
    assert_eq!(
        status["dropped_errors"].as_f64(),
        Some(dropped),
        "{REMOTE}'s dropped_errors in /status against the metric: {status}"
    );
    let warns = fr.log_lines(&["error stanzas for this remote server dropped", REMOTE]);
    assert!(!warns.is_empty(), "no WARN naming {REMOTE}");
    eprintln!(
        "{N} replies: {} received, {dropped} dropped; {} WARN line(s); first: {}",
        seen.len(),
        warns.len(),
        warns[0]
    );
}
