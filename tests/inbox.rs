//! Threaded stress tests of the cross-shard inboxes (`fedrouter::router::inbox`, DESIGN.md
//! "Ownership"): every shard a thread with its own single-threaded runtime, as in the
//! server. Each test checks that every message arrives exactly once, in order per source,
//! and that it finishes within a bounded time (a lost wake-up shows as a timeout).

use std::time::Duration;

use fedrouter::router::inbox::{mesh, ShardInbox};

/// Time limit for each shard's whole run; the tests take well under a second.
const LIMIT: Duration = Duration::from_secs(30);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// One shard of the all-to-all test: sends `per_dst` messages `(self, seq)` to every
/// shard (itself included), round-robin over destinations, at most 16 per loop turn;
/// drains at most 8 batches per turn and checks per-source order; sleeps (racing
/// `wait` and `wait_space`, as the server's loop does) only when it received nothing and
/// cannot send. Returns (messages received, times it slept).
async fn all_to_all_shard(mut ib: ShardInbox<(usize, u32)>, per_dst: u32) -> (u64, u64) {
    let me = ib.shard();
    let n = ib.shards();
    let mut next_seq = vec![0u32; n];
    let mut expect = vec![0u32; n];
    let total_in = u64::from(per_dst) * n as u64;
    let (mut received, mut sleeps) = (0u64, 0u64);
    let mut held: Option<(usize, (usize, u32))> = None;
    let mut rr = 0usize;
    let mut out = Vec::new();
    loop {
        out.clear();
        ib.drain(&mut out, 8);
        for &(src, seq) in &out {
            assert_eq!(
                seq, expect[src],
                "shard {me}: from {src} out of order or duplicated"
            );
            expect[src] += 1;
            received += 1;
        }
        assert!(
            received <= total_in,
            "shard {me}: more messages than were sent"
        );
        let mut blocked = false;
        for _ in 0..16 {
            let (dst, msg) = match held.take() {
                Some(h) => h,
                None => {
                    let Some(dst) = (0..n)
                        .map(|k| (rr + k) % n)
                        .find(|&d| next_seq[d] < per_dst)
                    else {
                        break;
                    };
                    rr = dst + 1;
                    next_seq[dst] += 1;
                    (dst, (me, next_seq[dst] - 1))
                }
            };
            if let Err(m) = ib.push(dst, msg) {
                held = Some((dst, m));
                blocked = true;
                break;
            }
        }
        let still = ib.flush();
        let done_sending =
            held.is_none() && ib.pending() == 0 && next_seq.iter().all(|&s| s == per_dst);
        if done_sending && received == total_in {
            assert!(expect.iter().all(|&e| e == per_dst));
            return (received, sleeps);
        }
        if out.is_empty() && (blocked || still > 0 || done_sending) {
            sleeps += 1;
            tokio::select! {
                _ = ib.wait() => {}
                _ = ib.wait_space(), if !done_sending => {}
            }
        }
    }
}

/// Four shards, each sending 25 000 messages to every shard (itself included) through
/// channels of 2 batches of at most 8: constant back-pressure in every direction, shards
/// sleeping and waking each other on both edges (message and space).
#[test]
fn all_to_all_with_back_pressure() {
    const SHARDS: usize = 4;
    const PER_DST: u32 = 25_000;
    let handles: Vec<_> = mesh::<(usize, u32)>(SHARDS, 2, 8)
        .into_iter()
        .map(|ib| {
            std::thread::spawn(move || {
                current_thread().block_on(async move {
                    tokio::time::timeout(LIMIT, all_to_all_shard(ib, PER_DST))
                        .await
                        .expect("shard stuck: lost wake-up or deadlock")
                })
            })
        })
        .collect();
    let mut slept = 0;
    for h in handles {
        let (received, sleeps) = h.join().unwrap();
        assert_eq!(received, u64::from(PER_DST) * SHARDS as u64);
        slept += sleeps;
    }
    assert!(
        slept > 0,
        "no shard ever slept: the wake-up paths were not exercised"
    );
}

/// Shard 0 of the ping-pong: sends 0..n one at a time, each after the previous one came
/// back, sleeping in `wait` whenever its inbox is empty.
async fn ping(mut ib: ShardInbox<u64>, n: u64) -> u64 {
    let mut out = Vec::new();
    let mut sleeps = 0;
    for i in 0..n {
        ib.push(1, i).unwrap();
        assert_eq!(ib.flush(), 0);
        loop {
            out.clear();
            if ib.drain(&mut out, 4) > 0 {
                assert_eq!(out, [i], "pong out of order");
                break;
            }
            ib.wait().await;
            sleeps += 1;
        }
    }
    sleeps
}

/// Shard 1 of the ping-pong: echoes every message back, sleeping when it has none.
async fn pong(mut ib: ShardInbox<u64>, n: u64) {
    let mut out = Vec::new();
    let mut expect = 0;
    while expect < n {
        out.clear();
        if ib.drain(&mut out, 4) == 0 {
            ib.wait().await;
            continue;
        }
        for &m in &out {
            assert_eq!(m, expect, "ping out of order");
            expect += 1;
            ib.push(0, m).unwrap();
        }
        assert_eq!(ib.flush(), 0);
    }
}

/// 20 000 round trips, one message in flight: every message is the last one until it is
/// answered, so a single lost wake-up on the empty → non-empty edge hangs both sides.
#[test]
fn ping_pong_every_message_crosses_the_wake_edge() {
    const N: u64 = 20_000;
    let mut m = mesh::<u64>(2, 4, 4).into_iter();
    let (a, b) = (m.next().unwrap(), m.next().unwrap());
    let t1 = std::thread::spawn(move || {
        current_thread().block_on(async move {
            tokio::time::timeout(LIMIT, pong(b, N))
                .await
                .expect("pong stuck: lost wake-up")
        })
    });
    let sleeps = current_thread().block_on(async move {
        tokio::time::timeout(LIMIT, ping(a, N))
            .await
            .expect("ping stuck: lost wake-up")
    });
    t1.join().unwrap();
    assert!(sleeps > 0);
}

/// The same ping-pong between two tokio-uring runtimes (the server's runtime): the
/// `Notify` wake-up from another thread reaches a shard parked in its io_uring driver.
#[test]
fn ping_pong_between_tokio_uring_runtimes() {
    const N: u64 = 10_000;
    let mut m = mesh::<u64>(2, 4, 4).into_iter();
    let (a, b) = (m.next().unwrap(), m.next().unwrap());
    let t1 = std::thread::spawn(move || {
        tokio_uring::start(async move {
            tokio::time::timeout(LIMIT, pong(b, N))
                .await
                .expect("pong stuck: lost wake-up")
        })
    });
    let sleeps = tokio_uring::start(async move {
        tokio::time::timeout(LIMIT, ping(a, N))
            .await
            .expect("ping stuck: lost wake-up")
    });
    t1.join().unwrap();
    assert!(sleeps > 0);
}
