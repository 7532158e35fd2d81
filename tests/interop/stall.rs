//! A stalled peer must not freeze anyone else (the issue "one stalled remote server
//! freezes every user"), against the real Prosody.
//!
//! Federation with Prosody (`gmail.test`) is set up and used both ways; then Prosody is
//! stopped with SIGSTOP (by pid: it reads nothing more, and what the kernel holds for it
//! stays there) and `cupuser1` floods `nobody@gmail.test` with [`FLOOD`] messages of 1 KB.
//! `nobody` does not exist on Prosody, so every message Prosody gets is answered with its
//! own `service-unavailable` error (no `by` attribute: `st.error_reply` of Prosody 0.12):
//! a full accounting without a Prosody client. fedrouter's own bounces carry
//! `by='cupdomain.test'` (the sender's domain, `write_error_reply`).
//!
//! While Prosody is stopped, two local users whose round trip crosses both of
//! fedrouter's shards (one of them lives on the shard that owns `gmail.test`) exchange
//! messages, each answered before the next is sent: at least [`MIN_ROUND_TRIPS`] after the
//! flood's first bounce, and until the whole flood is written. Then SIGCONT: every flood
//! message must end exactly once as delivered (Prosody's error) or bounced by fedrouter
//! (`resource-constraint` while the queue is full; `remote-server-timeout` for what waited
//! when a stalled stream was closed; the backoff's bounce after that), none lost.
//!
//! Everything waits for events (a reply, a bounce, a metric, a log line); the only
//! clocks are generous bounds that turn a hang into a failure ([`HANG`]).
//!
//! Two variants: `s2s.write_stall_timeout = "10m"`, never reached (the stall ends as soon
//! as the flood is written and the round trips are done: about 10 s in a debug build on
//! two shared cores, too close to the default 30 s to be sure no stream is closed), and
//! `write_stall_timeout = "3s"` with the stall lasting until fedrouter has closed the
//! stalled stream (`fedrouter_stalled_streams_closed_total{proto="s2s"}`).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fedrouter::router::{bare_key, shard_of};
use fedrouter::xml::ns;

use crate::failures::metric;
use crate::lab::{Lab, LabOptions, Profile, CUPUSER, JDOE, OURS, PASSWORD, THEIRS};
use crate::server::add_user;
use crate::xmpp::{attr, child_text, condition, is_stanza, jid_matches, node, Client};

/// Flood size. 20,000 × 1 KB = 20 MB, far more than what the stalled stream can absorb
/// (the kernel's socket buffers on loopback, `s2s.send_queue_bytes` = 1 MiB and
/// `s2s.queue_per_domain` = 1000 stanzas), so most of it must be bounced at once; the
/// whole flood and its accounting take a few seconds (debug builds, debug logging).
const FLOOD: usize = 20_000;
/// Body size of one flood message.
const BODY_BYTES: usize = 1024;
/// Flood messages written between two reads of what came back (bounces), so neither
/// side's socket buffers fill up with unread replies.
const BATCH: usize = 50;
/// The flood's recipient: no such user on Prosody.
const SINK: &str = "nobody@gmail.test";
/// Local round trips required after the flood's first bounce, before SIGCONT.
const MIN_ROUND_TRIPS: usize = 20;
/// Bound of every wait: a hang becomes a failure after this long without progress.
const HANG: Duration = Duration::from_secs(120);
/// fedrouter's shards in the lab (`lab.rs`).
const SHARDS: usize = 2;
/// fedrouter's bounce conditions for a congested or stalled peer.
const BOUNCE_CONDITIONS: [&str; 3] = [
    "resource-constraint",
    "remote-server-timeout",
    "remote-server-not-found",
];

/// What the flood thread tells the test while it runs.
#[derive(Debug)]
enum FloodEvent {
    /// The first bounce by fedrouter (the stanza as received).
    FirstBounce(String),
    /// Every flood message has been written to fedrouter.
    AllSent,
}

/// How the flood's messages ended, as seen by `cupuser1`.
#[derive(Debug, Default)]
struct Tally {
    /// Answered by Prosody (`service-unavailable`, no `by`): delivered.
    delivered: usize,
    /// Bounced by fedrouter (`by='cupdomain.test'`), per condition.
    bounced: BTreeMap<String, usize>,
    /// Distinct (condition, text) of fedrouter's bounces, with a count.
    bounce_texts: BTreeMap<(String, String), usize>,
    /// Replies for a message already answered.
    duplicates: Vec<String>,
    /// Error replies to flood messages that are neither Prosody's nor fedrouter's
    /// expected ones.
    unexpected: Vec<String>,
    /// Per flood message: answered yet.
    seen: Vec<bool>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            seen: vec![false; FLOOD],
            ..Tally::default()
        }
    }

    fn bounced_total(&self) -> usize {
        self.bounced.values().sum()
    }

    fn accounted(&self) -> usize {
        self.delivered + self.bounced_total()
    }

    fn summary(&self) -> String {
        format!(
            "{FLOOD} sent: {} delivered (answered by Prosody), {} bounced by fedrouter {:?}, {} lost; {} duplicate and {} unexpected replies; bounce texts {:?}",
            self.delivered,
            self.bounced_total(),
            self.bounced,
            FLOOD - self.accounted(),
            self.duplicates.len(),
            self.unexpected.len(),
            self.bounce_texts,
        )
    }

    /// Counts `x` (anything `cupuser1` received); returns `Some(x)` when it is the
    /// first bounce by fedrouter.
    fn record(&mut self, x: String) -> Option<String> {
        // One parse per element (a debug build parses slowly; 20,000 replies).
        if !x.starts_with("<message") {
            return None;
        }
        let n = node(&x);
        if n.name != "message" || n.ns != ns::CLIENT || n.attr("type") != Some("error") {
            return None;
        }
        let i = n
            .attr("id")
            .and_then(|id| id.strip_prefix("flood-")?.parse::<usize>().ok())
            .filter(|&i| i < FLOOD)?;
        let err = n.children.iter().find(|c| c.name == "error");
        let by = err.and_then(|e| e.attr("by")).map(str::to_ascii_lowercase);
        let cond = err
            .and_then(|e| e.children.iter().find(|c| c.ns == ns::STANZA_ERRORS))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let from_ok = n.attr("from").is_some_and(|f| jid_matches(f, SINK));
        let ours = by.as_deref() == Some(OURS);
        let theirs = by.is_none() && cond == "service-unavailable";
        if !from_ok || !(ours || theirs) {
            self.unexpected.push(x);
            return None;
        }
        if std::mem::replace(&mut self.seen[i], true) {
            self.duplicates.push(x);
            return None;
        }
        if theirs {
            self.delivered += 1;
            return None;
        }
        let first = self.bounced_total() == 0;
        *self.bounced.entry(cond.clone()).or_default() += 1;
        let text = err
            .and_then(|e| e.children.iter().find(|c| c.name == "text"))
            .map(|t| t.text.clone())
            .unwrap_or_default();
        *self.bounce_texts.entry((cond, text)).or_default() += 1;
        first.then_some(x)
    }
}

/// Reads what `c` has received (at most `max` elements, each waited for at most
/// `wait`) into `tally`; the first bounce is announced on `tx`. Returns how many flood
/// replies were counted.
fn drain(
    c: &mut Client,
    tally: &mut Tally,
    tx: &mpsc::Sender<FloodEvent>,
    wait: Duration,
    max: usize,
) -> usize {
    let before = tally.accounted() + tally.duplicates.len() + tally.unexpected.len();
    // Bounded: `max` turns.
    for _ in 0..max {
        let Some(x) = c.try_recv(|_| true, wait) else {
            break;
        };
        if let Some(first) = tally.record(x) {
            let _ = tx.send(FloodEvent::FirstBounce(first));
        }
    }
    assert!(
        !c.is_closed(),
        "fedrouter closed cupuser1's stream during the flood; {}",
        tally.summary()
    );
    tally.accounted() + tally.duplicates.len() + tally.unexpected.len() - before
}

/// The flood, on its own thread: writes [`FLOOD`] messages for [`SINK`] in batches,
/// reading replies between batches, then reads until every message is answered or
/// nothing comes for [`HANG`].
fn flood(mut c: Client, tx: mpsc::Sender<FloodEvent>) -> (Client, Tally) {
    let body: String = "0123456789abcdef".repeat(BODY_BYTES / 16);
    let mut tally = Tally::new();
    let t0 = Instant::now();
    let mut batch = String::with_capacity(BATCH * (BODY_BYTES + 100));
    for start in (0..FLOOD).step_by(BATCH) {
        batch.clear();
        for i in start..(start + BATCH).min(FLOOD) {
            batch.push_str(&format!(
                "<message type='chat' to='{SINK}' id='flood-{i}'><body>{body}</body></message>"
            ));
        }
        c.send(&batch);
        drain(
            &mut c,
            &mut tally,
            &tx,
            Duration::from_millis(1),
            10 * BATCH,
        );
    }
    let _ = tx.send(FloodEvent::AllSent);
    eprintln!("stall: flood written in {:?}", t0.elapsed());
    let mut last = Instant::now();
    // Bounded: each turn counts a reply or waits 1 s; HANG without a reply ends it.
    while tally.accounted() < FLOOD && last.elapsed() < HANG {
        if drain(&mut c, &mut tally, &tx, Duration::from_secs(1), 10_000) > 0 {
            last = Instant::now();
        }
    }
    (c, tally)
}

/// One local round trip: `a` → `b`, then `b` answers `a`; each waited for.
fn round_trip(a: &mut Client, b: &mut Client, id: &str) {
    let a_full = a.jid.clone().expect("bound");
    let b_full = b.jid.clone().expect("bound");
    a.send(&format!(
        "<message type='chat' to='{b_full}' id='{id}-ping'><body>ping {id}</body></message>"
    ));
    let m = b.expect(&format!("message {id}-ping"), |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(&format!("{id}-ping"))
    });
    assert_ne!(attr(&m, "type").as_deref(), Some("error"), "{m}");
    b.send(&format!(
        "<message type='chat' to='{a_full}' id='{id}-pong'><body>pong {id}</body></message>"
    ));
    let m = a.expect(&format!("message {id}-pong"), |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(&format!("{id}-pong"))
    });
    assert_ne!(attr(&m, "type").as_deref(), Some("error"), "{m}");
    assert_eq!(
        child_text(&m, "body").as_deref(),
        Some(format!("pong {id}").as_str())
    );
}

/// Two local users whose round trip crosses both shards: the first lives on the shard
/// that owns `gmail.test` (the one the old code paused), the second on the other.
fn local_pair() -> (String, String) {
    let stalled = shard_of(THEIRS, SHARDS);
    let shard = |u: &str| shard_of(&bare_key(&format!("{u}@{OURS}")), SHARDS);
    let names: Vec<String> = (0..64).map(|i| format!("local{i}")).collect();
    let on = names
        .iter()
        .find(|u| shard(u) == stalled)
        .expect("a user on the stalled domain's shard");
    let off = names
        .iter()
        .find(|u| shard(u) != stalled)
        .expect("a user on the other shard");
    (on.clone(), off.clone())
}

/// `fedrouter_stalled_streams_closed_total{proto="s2s"}`.
fn stalled_closed(lab: &Lab) -> u64 {
    metric(
        lab,
        "fedrouter_stalled_streams_closed_total",
        &[("proto", "s2s")],
    )
}

/// `fedrouter_congested_destinations{proto="s2s"}`.
fn congested(lab: &Lab) -> u64 {
    metric(lab, "fedrouter_congested_destinations", &[("proto", "s2s")])
}

/// How the flood thread ended (it ends early only by panicking).
fn ended(flooder: thread::JoinHandle<(Client, Tally)>) -> String {
    match flooder.join() {
        Ok((_, t)) => format!("it returned: {}", t.summary()),
        Err(p) => format!("it panicked: {}", panic_text(p.as_ref())),
    }
}

/// The message of a thread's panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Waits (bounded by [`HANG`]) until `f` holds; polls every 50 ms.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    // Bounded by the deadline.
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {HANG:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The test with fedrouter's `s2s.write_stall_timeout` = `write_stall_timeout`; when
/// `outlast`, the stall lasts until fedrouter has closed the stalled stream, otherwise
/// it ends once the flood is written and the round trips are done (long before the
/// timeout: no stream may be closed).
pub fn stalled_prosody(k: u8, write_stall_timeout: &str, outlast: bool) {
    let extra = format!(
        "[s2s]\nbackoff_initial = \"100ms\"\nbackoff_max = \"400ms\"\nwrite_stall_timeout = \"{write_stall_timeout}\"\n"
    );
    let lab = Lab::start(
        k,
        Profile::Google,
        LabOptions {
            fedrouter_extra: extra,
            ..LabOptions::default()
        },
    );
    let (u1, u2) = local_pair();
    for u in [&u1, &u2] {
        add_user(
            &lab.fedrouter.config_path(),
            &format!("{u}@{OURS}"),
            PASSWORD,
        );
    }
    let cup_bare = format!("{CUPUSER}@{OURS}");
    let jdoe_bare = format!("{JDOE}@{THEIRS}");
    let mut cup = lab.login_cupuser();
    let mut jdoe = lab.login_jdoe();
    let mut a = lab.login_local(&u1, "desk");
    let mut b = lab.login_local(&u2, "desk");
    for c in [&mut cup, &mut jdoe, &mut a, &mut b] {
        c.timeout = HANG;
        c.send("<presence/>");
        c.sync();
    }

    // Federation both ways, and Prosody's answer for the sink (what "delivered" is).
    cup.send(&format!(
        "<message type='chat' to='{jdoe_bare}' id='warm-1'><body>hello</body></message>"
    ));
    let m = jdoe.expect_message(&cup_bare);
    assert_eq!(attr(&m, "id").as_deref(), Some("warm-1"), "{m}");
    jdoe.send(&format!(
        "<message type='chat' to='{cup_bare}' id='warm-2'><body>hello back</body></message>"
    ));
    let m = cup.expect_message(&jdoe_bare);
    assert_eq!(attr(&m, "id").as_deref(), Some("warm-2"), "{m}");
    cup.send(&format!(
        "<message type='chat' to='{SINK}' id='warm-3'><body>anyone?</body></message>"
    ));
    let e = cup.expect_error("message", "warm-3");
    assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    let by = node(&e)
        .children
        .iter()
        .find(|c| c.name == "error")
        .and_then(|c| c.attr("by").map(str::to_owned));
    assert_ne!(
        by.as_deref(),
        Some(OURS),
        "Prosody's answer looks like fedrouter's bounce: {e}"
    );
    jdoe.close();
    round_trip(&mut a, &mut b, "before");
    assert_eq!(stalled_closed(&lab), 0, "a stalled stream before the stall");

    // The stall. The guard continues Prosody if anything below panics.
    let stopped = lab.prosody.suspend();
    let (tx, rx) = mpsc::channel();
    let flooder = thread::Builder::new()
        .name("flood".into())
        .spawn(move || flood(cup, tx))
        .expect("spawn the flood thread");

    // Bounded: each turn waits at most HANG; the flood thread sends one AllSent.
    let first = loop {
        match rx.recv_timeout(HANG) {
            Ok(FloodEvent::FirstBounce(x)) => break x,
            Ok(FloodEvent::AllSent) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no bounce of the flood within {HANG:?} while Prosody is stopped")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "the flood thread ended before any bounce: {}",
                ended(flooder)
            ),
        }
    };
    let cond = condition(&first).unwrap_or_default();
    assert!(
        BOUNCE_CONDITIONS.contains(&cond.as_str()),
        "the flood's first bounce: {first}"
    );
    if cond == "resource-constraint" {
        // The domain is congested now, unless its stream was closed since.
        let g = congested(&lab);
        assert!(
            g >= 1 || stalled_closed(&lab) > 0,
            "fedrouter_congested_destinations{{proto=\"s2s\"}} = {g} while the queue for gmail.test is full"
        );
    }
    let warn = lab
        .fedrouter
        .wait_log(&[" WARN ", "remote server congested", THEIRS], HANG);
    assert!(
        warn.is_some(),
        "fedrouter: no WARN \"remote server congested\" line naming gmail.test"
    );

    // Local users go on, each message answered before the next.
    let mut round_trips = 0usize;
    let mut all_sent = false;
    let mut closed = false;
    let started = Instant::now();
    // Bounded: HANG (checked each turn), each turn a round trip bounded by HANG.
    loop {
        round_trip(&mut a, &mut b, &format!("stall-{round_trips}"));
        round_trips += 1;
        loop {
            match rx.try_recv() {
                Ok(FloodEvent::AllSent) => all_sent = true,
                Ok(FloodEvent::FirstBounce(_)) => {}
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // The thread ended: it panicked (it only ends after SIGCONT otherwise).
                    panic!(
                        "the flood thread ended during the stall: {}",
                        ended(flooder)
                    );
                }
            }
        }
        if outlast && !closed && round_trips % 20 == 0 {
            closed = stalled_closed(&lab) > 0;
        }
        if round_trips >= MIN_ROUND_TRIPS && all_sent && (closed || !outlast) {
            break;
        }
        assert!(
            started.elapsed() < HANG,
            "{round_trips} local round trips in {HANG:?}: flood written {all_sent}, stalled stream closed {closed}"
        );
    }
    eprintln!(
        "stall: {round_trips} local round trips while Prosody was stopped ({:?})",
        started.elapsed()
    );
    stopped.resume();

    let (mut cup, tally) = flooder
        .join()
        .unwrap_or_else(|p| panic!("the flood thread panicked: {}", panic_text(p.as_ref())));
    eprintln!("stall: {}", tally.summary());
    assert!(
        tally.duplicates.is_empty(),
        "flood messages answered twice: {:#?}",
        tally.duplicates
    );
    assert!(
        tally.unexpected.is_empty(),
        "unexpected replies to flood messages: {:#?}",
        tally.unexpected
    );
    assert_eq!(tally.accounted(), FLOOD, "{}", tally.summary());
    assert!(
        tally.delivered >= 1,
        "nothing delivered: {}",
        tally.summary()
    );
    for c in tally.bounced.keys() {
        assert!(
            BOUNCE_CONDITIONS.contains(&c.as_str()),
            "bounce condition {c}: {}",
            tally.summary()
        );
    }
    let closed_total = stalled_closed(&lab);
    let by_cause = |cause: &str| {
        metric(
            &lab,
            "fedrouter_bounced_by_cause_total",
            &[("cause", cause)],
        )
    };
    let all_causes = metric(&lab, "fedrouter_bounced_by_cause_total", &[]);
    eprintln!(
        "stall: stalled streams closed {closed_total}; bounced by cause: queue_full {}, write_stall {}, backoff {}, all {all_causes}",
        by_cause("queue_full"),
        by_cause("write_stall"),
        by_cause("backoff"),
    );
    assert_eq!(
        all_causes as usize,
        tally.bounced_total(),
        "fedrouter_bounced_by_cause_total (all causes) against the bounces cupuser1 got: {}",
        tally.summary()
    );
    if outlast {
        assert!(
            closed_total >= 1,
            "fedrouter_stalled_streams_closed_total{{proto=\"s2s\"}} = 0 after a stall longer than write_stall_timeout"
        );
        assert!(
            tally
                .bounced
                .get("remote-server-timeout")
                .copied()
                .unwrap_or(0)
                >= 1,
            "nothing that waited for the closed stream was bounced with remote-server-timeout: {}",
            tally.summary()
        );
        assert!(
            by_cause("write_stall") >= 1,
            "fedrouter_bounced_by_cause_total{{cause=\"write_stall\"}} = 0"
        );
    } else {
        assert!(
            by_cause("queue_full") >= 1,
            "fedrouter_bounced_by_cause_total{{cause=\"queue_full\"}} = 0: {}",
            tally.summary()
        );
        assert_eq!(
            closed_total, 0,
            "a stream closed as stalled within write_stall_timeout = {write_stall_timeout}"
        );
        {
            // No stream was closed: every bounce was for a full queue.
            assert_eq!(
                tally.bounced.keys().map(String::as_str).collect::<Vec<_>>(),
                ["resource-constraint"],
                "{}",
                tally.summary()
            );
            assert_eq!(
                by_cause("queue_full") as usize,
                tally.bounced_total(),
                "fedrouter_bounced_by_cause_total{{cause=\"queue_full\"}}: {}",
                tally.summary()
            );
            assert!(
                lab.fedrouter
                    .wait_log(&[" WARN ", "remote server recovered", THEIRS], HANG)
                    .is_some(),
                "fedrouter: no WARN \"remote server recovered\" line naming gmail.test"
            );
        }
    }

    // Federation resumes: a message for the sink is answered by Prosody again (after the
    // backoff, when the stream was closed); each try is answered or bounced, and a
    // bounced one is tried again 200 ms later (the backoff is at most 400 ms).
    let mut resumed = false;
    // Bounded: 600 tries of at most HANG each, 200 ms apart.
    for i in 0..600 {
        let id = format!("after-{i}");
        cup.send(&format!(
            "<message type='chat' to='{SINK}' id='{id}'><body>back?</body></message>"
        ));
        let e = cup.expect_error("message", &id);
        let by = node(&e)
            .children
            .iter()
            .find(|c| c.name == "error")
            .and_then(|c| c.attr("by").map(str::to_owned));
        if by.as_deref() != Some(OURS) {
            assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
            resumed = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        resumed,
        "federation with gmail.test did not resume after SIGCONT"
    );
    wait_until(
        "fedrouter_congested_destinations{proto=\"s2s\"} back to 0",
        || congested(&lab) == 0,
    );
    round_trip(&mut a, &mut b, "after");
    cup.close();
    a.close();
    b.close();
}
