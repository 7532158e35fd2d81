//! Where a bound session's client is ([`Link`]): a C2S connection on this shard, or one
//! on another cluster node (its access node) that relays for it ([`Relay`]). A session's
//! state (presence, roster interest, carbons, …) is always on the shard that owns its
//! bare JID, on the node that owns it (DESIGN.md "Cluster": C2S sessions stay where they
//! connected; the owner of their bare JID knows where they are).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use tracing::debug;

use crate::cluster::wire::{self, SessionOp};
use crate::cluster::Cluster;
use crate::condition::StreamCondition;
use crate::router::queue::Queued;
use crate::runtime::conn::{Conn, ConnId};
use crate::stream::c2s::C2sConnection;
use crate::xml::Element;

/// A bound session's client: `id` is unique among this shard's connections and
/// sessions.
#[derive(Clone)]
pub(super) struct Link {
    /// The session's id on this shard (for a relayed session, allocated here).
    pub id: ConnId,
    /// Where the client is.
    pub at: At,
}

/// Where a session's client is connected.
#[derive(Clone)]
pub(super) enum At {
    /// To this shard.
    Here(Rc<Conn<C2sConnection>>),
    /// To another cluster node.
    Relayed(Rc<Relay>),
}

/// A session whose client is connected to another cluster node (the access node).
pub(super) struct Relay {
    /// The access node.
    pub node: Arc<str>,
    /// The connection's id on the access node.
    pub conn: ConnId,
    /// The session's bare JID (the key of its messages).
    pub bare: Box<str>,
    /// The way to the access node.
    pub cluster: Arc<Cluster>,
    /// The session's span.
    pub span: tracing::Span,
    /// The session ended: nothing more goes to the access node.
    pub gone: Cell<bool>,
}

impl Relay {
    /// Publishes `op` with `data` to the access node; whether it was taken (false when
    /// the session ended or the way to the node is full).
    pub(super) fn send(&self, op: SessionOp, data: &[u8]) -> bool {
        if self.gone.get() {
            return false;
        }
        send_session(
            &self.cluster,
            &self.node,
            &self.bare,
            op,
            self.conn,
            &self.node,
            data,
        )
    }
}

/// Publishes a session message for `bare`'s connection `conn` on access node `access` to
/// `node` (the access node or the home node); whether the cluster took it.
pub(super) fn send_session(
    cluster: &Cluster,
    node: &Arc<str>,
    bare: &str,
    op: SessionOp,
    conn: ConnId,
    access: &str,
    data: &[u8],
) -> bool {
    let body = wire::session_body(op, conn, access, data);
    match cluster.forward(node, wire::Kind::Session, bare, 1, &body) {
        Ok(()) => {
            crate::runtime::count_static("cluster_session_messages", "dir", "out", 1);
            true
        }
        Err(e) => {
            crate::runtime::metrics(|m| {
                m.count("cluster_forward_refused", &[("node", node.as_ref())], 1)
            });
            debug!(%node, ?op, error = ?e, "cluster: the way to the node is full; session message not sent");
            false
        }
    }
}

impl Link {
    /// A session on a connection of this shard.
    pub(super) fn here(conn: &Rc<Conn<C2sConnection>>) -> Link {
        Link {
            id: conn.id,
            at: At::Here(Rc::clone(conn)),
        }
    }

    /// The session's span (for logs).
    pub(super) fn span(&self) -> &tracing::Span {
        match &self.at {
            At::Here(c) => &c.span,
            At::Relayed(r) => &r.span,
        }
    }

    /// Bytes written to the client's stream and not yet taken by its socket; 0 for a
    /// relayed session (its access node bounds its own buffer, `c2s.send_queue_bytes`).
    pub(super) fn backlog(&self) -> usize {
        match &self.at {
            At::Here(c) => c.backlog(),
            At::Relayed(_) => 0,
        }
    }

    /// The relay, when the client is on another node.
    pub(super) fn relay(&self) -> Option<&Rc<Relay>> {
        match &self.at {
            At::Here(_) => None,
            At::Relayed(r) => Some(r),
        }
    }

    /// Sends a stanza to the client (its parts concatenated); whether its stream (or the
    /// way to its access node) took it.
    pub(super) fn send(&self, parts: &[&[u8]]) -> bool {
        match &self.at {
            At::Here(c) => super::sessions::send_to(c, parts),
            At::Relayed(r) => r.send(SessionOp::Deliver, &parts.concat()),
        }
    }

    /// Sends a message or IQ to the client, tracked until its socket takes it (so that a
    /// client that stops reading hands it back, RFC 6121 §8.5); whether it was taken.
    pub(super) fn send_tracked(&self, el: &Element) -> bool {
        match &self.at {
            At::Here(c) => {
                let sent = super::sessions::send_to(c, &[el.bytes()]);
                if sent {
                    c.st.borrow_mut().track(Queued::Whole(el.clone(), None));
                }
                sent
            }
            At::Relayed(r) => r.send(SessionOp::DeliverTracked, el.bytes()),
        }
    }

    /// Closes the client's stream with stream error `condition` (RFC 6120 §4.9.3).
    pub(super) fn close(&self, condition: StreamCondition, text: &str) {
        match &self.at {
            At::Here(c) => {
                let mut st = c.st.borrow_mut();
                st.proto
                    .close(Some((condition, text)), std::time::Instant::now());
                st.collect_events();
                st.pump();
                drop(st);
                c.wake.notify_one();
            }
            At::Relayed(r) => {
                r.send(SessionOp::Close, condition.as_str().as_bytes());
                r.gone.set(true);
            }
        }
    }
}

/// Sends bytes to one session's client ([`Link::send`]); whether it was taken.
pub(super) fn send_to(link: &Link, parts: &[&[u8]]) -> bool {
    link.send(parts)
}

/// Sends an error for `el` to the session that sent it.
pub(super) fn reply_to_client(
    link: &Link,
    el: &Element,
    c: crate::condition::StanzaCondition,
    text: &str,
) {
    if crate::stanza::is_error(el) {
        return;
    }
    let mut out = Vec::with_capacity(256);
    crate::stanza::write_error_reply(el, c, Some(text), None, &mut out);
    link.send(&[&out]);
}
