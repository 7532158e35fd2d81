//! Client state indication (XEP-0352) ([`ClientStates`]): a session that reported
//! `<inactive/>` gets no presence updates until it reports `<active/>`; then it gets the
//! latest one held per sender, in order ([`crate::csi::Held`]). What is held is bounded
//! by [`crate::csi::MAX_HELD`] senders and `c2s.send_queue_bytes` bytes: past either,
//! everything held is sent (nothing is dropped). Messages, `iq`s and
//! presence the user must act on (subscriptions, errors) always go at once
//! ([`crate::csi::holds`]). A session that ends loses what was held for it, as it would
//! have lost presence it had been sent but not read.

use super::link::{send_to, Link};
use crate::csi::ClientState;
use crate::runtime::conn::ConnId;
use crate::runtime::shard::Shard;

/// The CSI behaviour; the state is in [`super::sessions::Session`].
pub(super) struct ClientStates;

impl ClientStates {
    /// The client of `conn` reported `state` (XEP-0352 §3): becoming active sends what
    /// was held.
    pub(super) fn set(&self, shard: &Shard, bare: &str, id: ConnId, state: ClientState) {
        let (conn, flush) = {
            let mut users = shard.local.users.borrow_mut();
            let Some(s) = users
                .get_mut(bare)
                .and_then(|u| u.sessions.iter_mut().find(|s| s.conn.id == id))
            else {
                return;
            };
            let conn = s.conn.clone();
            s.inactive = state == ClientState::Inactive;
            let flush = if s.inactive {
                Vec::new()
            } else {
                s.held_bytes = 0;
                s.held.take()
            };
            (conn, flush)
        };
        for bytes in flush {
            send_to(&conn, &[&bytes]);
        }
    }

    /// Sends presence `parts` from `from` to the session `conn` of `bare`, or holds it
    /// when that session is inactive (XEP-0352 §5). Returns whether the stream took it
    /// or it was held.
    pub(super) fn send_presence(
        &self,
        shard: &Shard,
        bare: &str,
        conn: &Link,
        from: Option<&str>,
        type_: Option<&str>,
        parts: &[&[u8]],
    ) -> bool {
        if crate::csi::holds(crate::stanza::StanzaKind::Presence, type_) {
            let mut users = shard.local.users.borrow_mut();
            let session = users
                .get_mut(bare)
                .and_then(|u| u.sessions.iter_mut().find(|s| s.conn.id == conn.id));
            if let Some(s) = session.filter(|s| s.inactive) {
                let bytes = parts.concat();
                s.held_bytes += bytes.len();
                let mut flush = s.held.hold(from.unwrap_or_default(), bytes);
                if flush.is_none() && s.held_bytes > shard.shared().config.c2s.send_queue_bytes {
                    flush = Some(s.held.take());
                }
                if flush.is_some() {
                    s.held_bytes = 0;
                }
                match flush {
                    None => return true,
                    Some(all) => {
                        drop(users);
                        for bytes in all {
                            send_to(conn, &[&bytes]);
                        }
                        return true;
                    }
                }
            }
        }
        send_to(conn, parts)
    }
}
