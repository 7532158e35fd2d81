//! The storage thread over either backend: back-pressure (a full queue hands the op
//! back), order and isolation of a batch's requests, and many requests in flight (group
//! commit, with a measurement of durable changes/s). Part of `tests/store.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fedrouter::store::scram::{ScramCredentials, ScramHash};
use fedrouter::store::{
    Change, OfflineMessage, Op, Outcome, Reply, Roster, Store, StoreError, StoreHandle,
};
use tokio::sync::Notify;

use super::{creds, item, upsert, Backend};

/// A store whose first `apply_groups` blocks until released, to hold the storage thread
/// while the test fills its queue.
struct Gated {
    inner: Box<dyn Store>,
    entered: Sender<()>,
    release: Receiver<()>,
    armed: bool,
}

impl Store for Gated {
    fn add_user(&mut self, jid: &str, c: &[ScramCredentials]) -> Result<(), StoreError> {
        self.inner.add_user(jid, c)
    }
    fn remove_user(&mut self, jid: &str) -> Result<bool, StoreError> {
        self.inner.remove_user(jid)
    }
    fn set_credentials(&mut self, jid: &str, c: &[ScramCredentials]) -> Result<bool, StoreError> {
        self.inner.set_credentials(jid, c)
    }
    fn credentials(
        &mut self,
        jid: &str,
        h: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        self.inner.credentials(jid, h)
    }
    fn list_users(&mut self, d: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.inner.list_users(d)
    }
    fn roster(&mut self, user: &str) -> Result<Roster, StoreError> {
        self.inner.roster(user)
    }
    fn pending_out(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.pending_out()
    }
    fn blocklist(&mut self, user: &str) -> Result<Vec<String>, StoreError> {
        self.inner.blocklist(user)
    }
    fn change_blocklist(
        &mut self,
        user: &str,
        change: &fedrouter::store::BlocklistChange,
    ) -> Result<(), StoreError> {
        self.inner.change_blocklist(user, change)
    }
    fn offline(&mut self, user: &str) -> Result<Vec<OfflineMessage>, StoreError> {
        self.inner.offline(user)
    }
    fn apply(&mut self, changes: &[Change]) -> Result<Vec<u64>, StoreError> {
        self.inner.apply(changes)
    }
    fn apply_groups(
        &mut self,
        groups: &[&[Change]],
    ) -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
        if std::mem::take(&mut self.armed) {
            self.entered.send(()).unwrap();
            self.release
                .recv_timeout(Duration::from_secs(30))
                .expect("released");
        }
        self.inner.apply_groups(groups)
    }
}

/// A handle over a gated store with users `a@d.example` and `b@d.example`; returns the
/// handle, the "entered" receiver and the "release" sender.
fn gated(b: &dyn Backend, capacity: usize) -> (StoreHandle, Receiver<()>, Sender<()>) {
    let mut inner = b.open();
    inner.add_user("a@d.example", &[]).unwrap();
    inner.add_user("b@d.example", &[]).unwrap();
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded(1);
    let store = Gated {
        inner,
        entered: entered_tx,
        release: release_rx,
        armed: true,
    };
    (
        StoreHandle::spawn(Box::new(store), 1024, capacity),
        entered,
        release,
    )
}

pub(crate) fn recv(rx: &Receiver<Reply>) -> Reply {
    rx.recv_timeout(Duration::from_secs(30)).expect("a reply")
}

pub(crate) fn full_queue_hands_the_op_back(b: &dyn Backend) {
    let (h, entered, release) = gated(b, 4);
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Notify::new());
    let op = |n: u32| {
        Op::Apply(vec![upsert(
            "a@d.example",
            item(&format!("c{n}@x"), "none"),
        )])
    };
    h.submit(op(0), tx.clone(), wake.clone(), 0).unwrap();
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    // The thread is held inside the first commit; the queue holds 4 more.
    for n in 1..=4 {
        h.submit(op(n), tx.clone(), wake.clone(), n as u64).unwrap();
    }
    assert_eq!(h.queued(), 4);
    assert_eq!(h.submit(op(5), tx.clone(), wake.clone(), 5), Err(op(5)));
    release.send(()).unwrap();
    let mut tags: Vec<u64> = (0..5).map(|_| recv(&rx).tag).collect();
    tags.sort();
    assert_eq!(tags, [0, 1, 2, 3, 4]);
    // Now there is room again, and the wake-up was signalled (a permit is stored).
    h.submit(op(5), tx.clone(), wake.clone(), 5).unwrap();
    assert_eq!(recv(&rx).result, Ok(Outcome::Applied(vec![6])));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("notified");
    });
    let stats = h.stats();
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.changes, 6);
    // The 4 queued requests were committed together.
    assert_eq!(stats.commits, 3);
    h.shutdown();
    assert!(!h.is_running());
    assert_eq!(h.submit(op(6), tx, wake, 6), Err(op(6)));
    assert_eq!(
        h.call(Op::ListUsers { domain: None }),
        Err(StoreError::Closed)
    );
}

pub(crate) fn batch_keeps_order_and_isolates_failures(b: &dyn Backend) {
    let (h, entered, release) = gated(b, 64);
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Notify::new());
    let apply = |user: &str, c: &str| Op::Apply(vec![upsert(user, item(c, "both"))]);
    h.submit(apply("b@d.example", "x@x"), tx.clone(), wake.clone(), 0)
        .unwrap();
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    let ops = [
        apply("a@d.example", "c1@x"),
        apply("ghost@d.example", "c1@x"),
        apply("b@d.example", "c1@x"),
        Op::Roster {
            user: "a@d.example".into(),
        },
        Op::RemoveUser {
            jid: "a@d.example".into(),
        },
        apply("a@d.example", "c2@x"),
        apply("b@d.example", "c2@x"),
    ];
    for (n, op) in ops.into_iter().enumerate() {
        h.submit(op, tx.clone(), wake.clone(), n as u64 + 1)
            .unwrap();
    }
    release.send(()).unwrap();
    let mut replies: Vec<Reply> = (0..8).map(|_| recv(&rx)).collect();
    // Replies come in queue order.
    assert!(replies.windows(2).all(|w| w[0].tag < w[1].tag));
    let results: Vec<_> = replies.drain(..).map(|r| r.result).collect();
    assert_eq!(
        results,
        vec![
            Ok(Outcome::Applied(vec![1])),
            Ok(Outcome::Applied(vec![1])),
            Err(StoreError::NoSuchUser("ghost@d.example".into())),
            Ok(Outcome::Applied(vec![2])),
            Ok(Outcome::Roster((1, vec![item("c1@x", "both")]))),
            Ok(Outcome::Existed(true)),
            Err(StoreError::NoSuchUser("a@d.example".into())),
            Ok(Outcome::Applied(vec![3])),
        ]
    );
    assert_eq!(
        h.call(Op::Roster {
            user: "b@d.example".into()
        })
        .unwrap(),
        Outcome::Roster((
            3,
            vec![
                item("c1@x", "both"),
                item("c2@x", "both"),
                item("x@x", "both")
            ]
        ))
    );
    h.shutdown();
}

pub(crate) fn handle_call_round_trip_and_many_in_flight(b: &dyn Backend) {
    let h = StoreHandle::spawn(b.open(), 256, 1024);
    let c = creds("pencil", ScramHash::Sha256);
    assert_eq!(
        h.call(Op::AddUser {
            jid: "u@d.example".into(),
            creds: vec![c.clone()]
        }),
        Ok(Outcome::Done)
    );
    assert_eq!(
        h.call(Op::Credentials {
            jid: "u@d.example".into(),
            hash: ScramHash::Sha256
        }),
        Ok(Outcome::Credentials(Some(c)))
    );
    assert_eq!(
        h.call(Op::SetCredentials {
            jid: "u@d.example".into(),
            creds: vec![]
        }),
        Ok(Outcome::Existed(true))
    );
    assert_eq!(
        h.call(Op::ListUsers {
            domain: Some("d.example".into())
        }),
        Ok(Outcome::Users(vec!["u@d.example".into()]))
    );
    // 4 threads x 500 changes, up to 32 in flight each.
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let h = h.clone();
            s.spawn(move || {
                let (tx, rx) = crossbeam_channel::unbounded();
                let (mut sent, mut acked, mut in_flight) = (0u64, 0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(60);
                while acked < 500 {
                    assert!(Instant::now() < deadline, "timed out");
                    while in_flight < 32 && sent < 500 {
                        let op = Op::Apply(vec![upsert(
                            "u@d.example",
                            item(&format!("t{t}-{sent}@x"), "none"),
                        )]);
                        match h.submit_unnotified(op, tx.clone(), sent) {
                            Ok(()) => {
                                sent += 1;
                                in_flight += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    let r = recv(&rx);
                    assert!(matches!(r.result, Ok(Outcome::Applied(_))), "{r:?}");
                    acked += 1;
                    in_flight -= 1;
                }
            });
        }
    });
    let Ok(Outcome::Roster((version, items))) = h.call(Op::Roster {
        user: "u@d.example".into(),
    }) else {
        panic!("roster");
    };
    assert_eq!((version, items.len()), (2000, 2000));
    let stats = h.stats();
    assert_eq!(stats.changes, 2000);
    assert!(
        stats.commits < 2000,
        "some changes were group-committed: {stats:?}"
    );
    // A measurement, not an assertion: durable changes/s and the mean group size.
    eprintln!(
        "2000 durable changes in {:?}: {:.0}/s, {} commits ({:.1} changes each)",
        started.elapsed(),
        2000.0 / started.elapsed().as_secs_f64(),
        stats.commits,
        2000.0 / stats.commits as f64
    );
    h.shutdown();
}
