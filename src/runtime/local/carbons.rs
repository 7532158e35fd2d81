//! Message carbons (XEP-0280) ([`Carbons`]): a session enables or disables them (§4,
//! §5); an eligible message (§6.1, [`crate::carbons::eligible`]) delivered to some of a
//! user's sessions is copied, wrapped in `<received/>`, to the user's other sessions
//! that enabled carbons (§6.2); one a session sends is copied, wrapped in `<sent/>`, to
//! the others (§6.3). Copies go only to sessions whose stream has room
//! (`c2s.send_queue_bytes`), like any delivery.

use super::link::{send_to, Link};
use crate::carbons::{copy, eligible, Direction, Toggle};
use crate::router::bare_key;
use crate::runtime::conn::ConnId;
use crate::runtime::shard::Shard;
use crate::xml::writer::write_raw_attr;
use crate::xml::Element;

/// The carbons behaviour; whether a session enabled them is in
/// [`super::sessions::Session`].
pub(super) struct Carbons;

impl Carbons {
    /// An `<enable/>` or `<disable/>` request `el` from session `conn` of `bare`: the
    /// session's choice is kept and the request answered with an empty result (§4, §5).
    pub(super) fn toggle(
        &self,
        shard: &Shard,
        conn: &Link,
        bare: &str,
        el: &Element,
        toggle: Toggle,
    ) {
        if let Some(s) = shard
            .local
            .users
            .borrow_mut()
            .get_mut(bare)
            .and_then(|u| u.sessions.iter_mut().find(|s| s.conn.id == conn.id))
        {
            s.carbons = toggle == Toggle::Enable;
        }
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"<iq type='result'");
        write_raw_attr("to", el.from(), &mut out);
        write_raw_attr("id", el.id(), &mut out);
        out.extend_from_slice(b"/>");
        send_to(conn, &[&out]);
    }

    /// The sessions of `bare` with carbons enabled, other than `except`, whose stream has
    /// room: `(connection, full JID)`.
    fn targets(&self, shard: &Shard, bare: &str, except: &[ConnId]) -> Vec<(Link, String)> {
        let cap = shard.shared().config.c2s.send_queue_bytes;
        shard
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.carbons && !except.contains(&s.conn.id))
                    .filter(|s| s.conn.backlog() < cap)
                    .map(|s| (s.conn.clone(), s.full.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A message for `bare` was delivered to the sessions `delivered`: `<received/>`
    /// copies to the others that enabled carbons (§6.2), if it is eligible.
    pub(super) fn received(&self, shard: &Shard, bare: &str, el: &Element, delivered: &[ConnId]) {
        self.copies(shard, bare, el, delivered, Direction::Received);
    }

    /// Session `from` of `bare` sent the message `el` (stamped): `<sent/>` copies to the
    /// user's other sessions that enabled carbons (§6.3), if it is eligible. A message to
    /// the user's own JIDs is left to [`Carbons::received`].
    pub(super) fn sent(&self, shard: &Shard, bare: &str, el: &Element, from: ConnId) {
        if el.to().is_some_and(|t| bare_key(t) == bare) {
            return;
        }
        self.copies(shard, bare, el, &[from], Direction::Sent);
    }

    fn copies(
        &self,
        shard: &Shard,
        bare: &str,
        el: &Element,
        except: &[ConnId],
        direction: Direction,
    ) {
        let targets = self.targets(shard, bare, except);
        if targets.is_empty() || !eligible(el) {
            return;
        }
        for (conn, full) in targets {
            let c = copy(el, direction, bare, &full);
            send_to(&conn, &[c.bytes()]);
        }
    }
}
