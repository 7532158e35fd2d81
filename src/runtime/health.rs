//! Shard liveness, for the admin endpoint's `GET /health`.
//!
//! Each shard's run loop stamps a heartbeat at every turn ([`Health::turn`]), and a guard
//! held by its thread records how the thread ended ([`Health::guard`]). An idle shard
//! sleeps in `select!` and stamps nothing, so an old heartbeat alone proves nothing:
//! liveness is judged by answering. [`probe`] sends every shard a
//! [`Control::Health`] and waits (2 s on `/health`); a shard that answers is running, one
//! that does not is reported with the time since its last turn, and one whose thread
//! ended is reported stopped or panicked without being asked. A shard draining for a
//! graceful shutdown no longer takes control messages, so `/health` fails then too.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Control;

/// The thread has not ended.
const RUNNING: u8 = 0;
/// The thread returned (shutdown, or a start-up failure such as the DNS resolver).
const STOPPED: u8 = 1;
/// The thread unwound from a panic.
const PANICKED: u8 = 2;

/// Every shard's heartbeat and end state, shared by the shard threads (writers) and the
/// admin endpoint (reader).
#[derive(Debug)]
pub(crate) struct Health {
    /// What the heartbeats count from.
    epoch: Instant,
    shards: Vec<Beat>,
}

#[derive(Debug)]
struct Beat {
    /// Milliseconds from `epoch` to the loop's last turn (0: not turned yet).
    last_turn_ms: AtomicU64,
    /// [`RUNNING`], [`STOPPED`] or [`PANICKED`].
    ended: AtomicU8,
}

impl Health {
    /// The health of `shards` shards, none of which has turned yet.
    pub(crate) fn new(shards: usize) -> Arc<Health> {
        Arc::new(Health {
            epoch: Instant::now(),
            shards: (0..shards)
                .map(|_| Beat {
                    last_turn_ms: AtomicU64::new(0),
                    ended: AtomicU8::new(RUNNING),
                })
                .collect(),
        })
    }

    /// Shard `shard`'s run loop turned (woke up) now.
    #[inline]
    pub(crate) fn turn(&self, shard: usize) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shards[shard].last_turn_ms.store(ms, Ordering::Relaxed);
    }

    /// A guard for shard `shard`'s thread to hold: when dropped (the thread returns or
    /// unwinds from a panic), the shard is marked stopped or panicked.
    pub(crate) fn guard(self: &Arc<Self>, shard: usize) -> EndGuard {
        EndGuard {
            health: Arc::clone(self),
            shard,
        }
    }

    fn ended(&self, shard: usize) -> Option<ShardState> {
        match self.shards[shard].ended.load(Ordering::Acquire) {
            STOPPED => Some(ShardState::Stopped),
            PANICKED => Some(ShardState::Panicked),
            _ => None,
        }
    }

    /// Time from shard `shard`'s last turn (or from start, if it never turned) to `now`.
    fn since_turn(&self, shard: usize, now: Instant) -> Duration {
        let at = self.epoch
            + Duration::from_millis(self.shards[shard].last_turn_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(at)
    }
}

/// Marks a shard's thread as ended when dropped; see [`Health::guard`].
#[derive(Debug)]
pub(crate) struct EndGuard {
    health: Arc<Health>,
    shard: usize,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            PANICKED
        } else {
            STOPPED
        };
        self.health.shards[self.shard]
            .ended
            .store(how, Ordering::Release);
    }
}

/// What a probe found a shard doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardState {
    /// It answered.
    Running,
    /// Its thread is there but it did not answer in time (or its control queue is full).
    NotAnswering,
    /// Its thread returned.
    Stopped,
    /// Its thread panicked.
    Panicked,
}

impl ShardState {
    fn as_str(self) -> &'static str {
        match self {
            ShardState::Running => "running",
            ShardState::NotAnswering => "not answering",
            ShardState::Stopped => "stopped",
            ShardState::Panicked => "panicked",
        }
    }
}

/// One shard's line in `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardHealth {
    pub(crate) id: usize,
    pub(crate) state: ShardState,
    /// Time since the shard's last loop turn when the probe ended.
    pub(crate) since_turn: Duration,
}

impl ShardHealth {
    pub(crate) fn alive(&self) -> bool {
        self.state == ShardState::Running
    }
}

/// Asks every running shard to answer a [`Control::Health`] and waits at most `wait` in
/// all (the shards answer in parallel). Shards whose thread ended are not asked.
pub(crate) fn probe(
    controls: &[(crossbeam_channel::Sender<Control>, Arc<Notify>)],
    health: &Health,
    wait: Duration,
) -> Vec<ShardHealth> {
    let deadline = Instant::now() + wait;
    let (tx, rx) = crossbeam_channel::bounded(controls.len());
    let mut states: Vec<Option<ShardState>> =
        (0..controls.len()).map(|id| health.ended(id)).collect();
    let mut asked = 0;
    for (id, (ctl, wake)) in controls.iter().enumerate() {
        if states[id].is_some() {
            continue;
        }
        match ctl.try_send(Control::Health(tx.clone())) {
            Ok(()) => {
                wake.notify_one();
                asked += 1;
            }
            // A full control queue: the shard is not taking its messages.
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                states[id] = Some(ShardState::NotAnswering);
            }
            // The shard dropped its receiver: its thread is ending.
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                states[id] = Some(health.ended(id).unwrap_or(ShardState::Stopped));
            }
        }
    }
    drop(tx);
    // Bounded: `asked` answers at most, each waited for until `deadline`.
    for _ in 0..asked {
        match rx.recv_deadline(deadline) {
            Ok(id) if id < states.len() => states[id] = Some(ShardState::Running),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let now = Instant::now();
    states
        .into_iter()
        .enumerate()
        .map(|(id, state)| ShardHealth {
            id,
            // Not answered: dead if its thread ended meanwhile, else not answering.
            state: state
                .or_else(|| health.ended(id))
                .unwrap_or(ShardState::NotAnswering),
            since_turn: health.since_turn(id, now),
        })
        .collect()
}

/// The `/health` answer for probed shards: 200 and `"status": "ok"` when every shard is
/// alive, else 503 and `"status": "unhealthy"`, with one entry per shard:
/// `{"id", "alive", "state", "since_last_turn_ms"}`.
pub(crate) fn report(shards: &[ShardHealth]) -> (u16, serde_json::Value) {
    let ok = shards.iter().all(ShardHealth::alive);
    let list: Vec<serde_json::Value> = shards
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "alive": s.alive(),
                "state": s.state.as_str(),
                "since_last_turn_ms": u64::try_from(s.since_turn.as_millis()).unwrap_or(u64::MAX),
            })
        })
        .collect();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "shards": list,
    });
    (if ok { 200 } else { 503 }, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Controls = Vec<(crossbeam_channel::Sender<Control>, Arc<Notify>)>;

    /// A stand-in for shard `id`'s control loop: answers health probes, stamping its
    /// heartbeat, until its queue closes; `Shutdown` ends it, `Ping` makes it panic.
    fn fake_shard(
        id: usize,
        health: &Arc<Health>,
        rx: crossbeam_channel::Receiver<Control>,
    ) -> std::thread::JoinHandle<()> {
        let health = Arc::clone(health);
        std::thread::spawn(move || {
            let _alive = health.guard(id);
            // Bounded: ends when the queue closes or on Shutdown.
            while let Ok(c) = rx.recv() {
                health.turn(id);
                match c {
                    Control::Health(reply) => {
                        let _ = reply.try_send(id);
                    }
                    Control::Shutdown => return,
                    Control::Ping { .. } => panic!("shard {id}: injected panic"),
                    _ => {}
                }
            }
        })
    }

    fn controls(n: usize) -> (Controls, Vec<crossbeam_channel::Receiver<Control>>) {
        (0..n)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::bounded(4);
                ((tx, Arc::new(Notify::new())), rx)
            })
            .unzip()
    }

    #[test]
    fn all_shards_answering_is_healthy() {
        let health = Health::new(3);
        let (ctl, rxs) = controls(3);
        let threads: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| fake_shard(i, &health, rx))
            .collect();
        let found = probe(&ctl, &health, Duration::from_secs(10));
        assert_eq!(
            found.iter().map(|s| (s.id, s.state)).collect::<Vec<_>>(),
            [0, 1, 2].map(|i| (i, ShardState::Running))
        );
        let (code, body) = report(&found);
        assert_eq!(code, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["shards"][2]["id"], 2);
        assert_eq!(body["shards"][2]["alive"], true);
        assert_eq!(body["shards"][2]["state"], "running");
        assert!(body["shards"][2]["since_last_turn_ms"].is_u64());
        drop(ctl);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn silent_stopped_and_panicked_shards_fail() {
        let health = Health::new(4);
        let (ctl, mut rxs) = controls(4);
        // Shard 1 never reads its queue (a loop stuck in a turn); its receiver is kept.
        let stuck = rxs.remove(1);
        let mut rxs = rxs.into_iter();
        let mut fake = |id| fake_shard(id, &health, rxs.next().unwrap());
        let (running, stops, panics) = (fake(0), fake(2), fake(3));
        // Shard 2 stops, shard 3 panics; joined, so their guards have run.
        ctl[2].0.send(Control::Shutdown).unwrap();
        ctl[3]
            .0
            .send(Control::Ping {
                from: String::new(),
                to: String::new(),
                reply: crossbeam_channel::bounded(1).0,
            })
            .unwrap();
        stops.join().unwrap();
        assert!(panics.join().is_err());
        let found = probe(&ctl, &health, Duration::from_millis(200));
        let states: Vec<_> = found.iter().map(|s| (s.id, s.state)).collect();
        assert_eq!(
            states,
            [
                (0, ShardState::Running),
                (1, ShardState::NotAnswering),
                (2, ShardState::Stopped),
                (3, ShardState::Panicked),
            ]
        );
        // Shard 1 never turned: its last turn is at least the probe's wait ago.
        assert!(found[1].since_turn >= Duration::from_millis(200));
        let (code, body) = report(&found);
        assert_eq!(code, 503);
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["shards"][0]["alive"], true);
        for (i, state) in [(1, "not answering"), (2, "stopped"), (3, "panicked")] {
            assert_eq!(body["shards"][i]["alive"], false);
            assert_eq!(body["shards"][i]["state"], state);
        }
        assert!(body["shards"][1]["since_last_turn_ms"].as_u64().unwrap() >= 200);
        drop(stuck);
        drop(ctl);
        running.join().unwrap();
    }

    #[test]
    fn a_full_control_queue_is_not_answering_without_waiting() {
        let health = Health::new(1);
        let (ctl, _rx) = controls(1);
        for _ in 0..4 {
            ctl[0].0.try_send(Control::Shutdown).unwrap();
        }
        let started = Instant::now();
        let found = probe(&ctl, &health, Duration::from_secs(30));
        assert_eq!(found[0].state, ShardState::NotAnswering);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
