//! The runtime side of the cluster's NATS thread ([`crate::cluster::nats::Sink`]):
//! what other nodes send goes to the owning shard's control channel; the durable outbox
//! is read from the store.

use std::sync::Arc;

use tokio::sync::Notify;

use super::Control;
use crate::cluster::nats::{Inbound, Sink};
use crate::store::{Op, Outcome, StoreHandle};

/// The shards' control channels and the store.
pub(super) struct RuntimeSink {
    pub controls: Vec<(crossbeam_channel::Sender<Control>, Arc<Notify>)>,
    pub store: StoreHandle,
}

impl Sink for RuntimeSink {
    fn deliver(&self, shard: usize, items: Vec<Inbound>) -> Result<(), Vec<Inbound>> {
        let (tx, wake) = &self.controls[shard % self.controls.len()];
        match tx.try_send(Control::Cluster(items)) {
            Ok(()) => {
                wake.notify_one();
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(Control::Cluster(items)))
            | Err(crossbeam_channel::TrySendError::Disconnected(Control::Cluster(items))) => {
                wake.notify_one();
                Err(items)
            }
            Err(_) => Ok(()),
        }
    }

    fn pending_out(&self) -> Vec<(String, String)> {
        match self.store.call(Op::PendingOut) {
            Ok(Outcome::Pairs(p)) => p,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "store: reading the durable outbox failed");
                Vec::new()
            }
        }
    }
}
