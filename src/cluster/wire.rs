//! A stanza crossing nodes: its bytes as received plus its destination, like a shard
//! hand-off one level up (DESIGN.md "Cluster"). One NATS message payload:
//!
//! ```text
//! u8  version (1)
//! u8  kind: 0 = a local bare JID, 1 = a remote domain, 2 = a client session's
//!     message between its access node and its home node (the key is its bare JID)
//! u8  hops: how many nodes forwarded it so far (1 on the first)
//! u16 key length (big-endian), then the key (an ownership key, UTF-8)
//! u64 sent: microseconds since the Unix epoch when published (hand-off latency)
//! u64 epoch of the sender's membership view
//! ... the stanza's bytes (kind 2: a session message, see below)
//! ```
//!
//! A session message ([`SessionMsg`]): C2S sessions stay on the node the client connected
//! to (its access node); the node that owns the bare JID (its home node) holds the
//! session's state. They exchange:
//!
//! ```text
//! u8  op (SessionOp)
//! u64 the connection's id on the access node (big-endian)
//! u8  access node name length, then the name (UTF-8)
//! ... op data: Bind: the requested resource (empty: none); Stanza, Deliver: stanza
//!     bytes; Csi: 1 active / 0 inactive; Bound: the full JID, or empty when refused;
//!     Close, Refused: a stream or stanza condition name; End: nothing
//! ```

use bytes::{BufMut, Bytes, BytesMut};

const VERSION: u8 = 1;
const HEAD: usize = 1 + 1 + 1 + 2 + 8 + 8;

/// What a forwarded stanza's key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A local bare JID ([`crate::router::bare_key`]).
    Local,
    /// A remote domain ([`crate::router::domain_key`]).
    Remote,
    /// A client session's message between its access node and its home node; the key
    /// is the session's bare JID ([`SessionMsg`]).
    Session,
}

/// What a session message says (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOp {
    /// Access → home: the client asks to bind a resource (RFC 6120 §7).
    Bind,
    /// Access → home: a stanza the client sent, stamped with its full JID.
    Stanza,
    /// Access → home: the client reported itself active or inactive (XEP-0352).
    Csi,
    /// Access → home: the client's stream ended.
    End,
    /// Home → access: the bind's answer (the full JID, or refused).
    Bound,
    /// Home → access: a stanza to write to the client.
    Deliver,
    /// Home → access: a stanza to write to the client, tracked until the socket takes
    /// it (a message or IQ, handed back when the client stops reading).
    DeliverTracked,
    /// Home → access: close the client's stream with the given stream condition.
    Close,
}

impl SessionOp {
    fn code(self) -> u8 {
        match self {
            SessionOp::Bind => 0,
            SessionOp::Stanza => 1,
            SessionOp::Csi => 2,
            SessionOp::End => 3,
            SessionOp::Bound => 4,
            SessionOp::Deliver => 5,
            SessionOp::DeliverTracked => 6,
            SessionOp::Close => 7,
        }
    }

    fn from_code(c: u8) -> Option<SessionOp> {
        Some(match c {
            0 => SessionOp::Bind,
            1 => SessionOp::Stanza,
            2 => SessionOp::Csi,
            3 => SessionOp::End,
            4 => SessionOp::Bound,
            5 => SessionOp::Deliver,
            6 => SessionOp::DeliverTracked,
            7 => SessionOp::Close,
            _ => return None,
        })
    }
}

/// A session message, decoded from a [`Forwarded`] of kind [`Kind::Session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMsg {
    /// What it says.
    pub op: SessionOp,
    /// The connection's id on the access node.
    pub conn: u64,
    /// The access node's name.
    pub access: String,
    /// The op's data (a slice of the payload).
    pub data: Bytes,
}

/// Writes a session message's body (the part after the frame header).
///
/// Panics when `access` is longer than 255 bytes (node names are at most 64,
/// [`crate::config::MAX_NODE_NAME`]).
pub fn session_body(op: SessionOp, conn: u64, access: &str, data: &[u8]) -> Vec<u8> {
    let alen = u8::try_from(access.len()).expect("node name fits in 8 bits");
    let mut b = Vec::with_capacity(1 + 8 + 1 + access.len() + data.len());
    b.push(op.code());
    b.extend_from_slice(&conn.to_be_bytes());
    b.push(alen);
    b.extend_from_slice(access.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Reads a session message's body ([`session_body`]).
///
/// Errors: a message naming what is wrong (short, an unknown op, a name not UTF-8).
pub fn session_msg(body: &Bytes) -> Result<SessionMsg, String> {
    if body.len() < 10 {
        return Err(format!("session message of {} bytes", body.len()));
    }
    let op = SessionOp::from_code(body[0]).ok_or_else(|| format!("unknown op {}", body[0]))?;
    let conn = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let alen = body[9] as usize;
    if body.len() < 10 + alen {
        return Err("session message shorter than its node name".into());
    }
    let access = std::str::from_utf8(&body[10..10 + alen])
        .map_err(|_| "node name is not UTF-8".to_owned())?
        .to_owned();
    Ok(SessionMsg {
        op,
        conn,
        access,
        data: body.slice(10 + alen..),
    })
}

/// A forwarded stanza, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// What the key names.
    pub kind: Kind,
    /// Nodes that forwarded it so far.
    pub hops: u8,
    /// The ownership key.
    pub key: String,
    /// When it was published, microseconds since the Unix epoch.
    pub sent_us: u64,
    /// The sender's membership epoch.
    pub epoch: u64,
    /// The stanza (a slice of the message payload, not copied).
    pub stanza: Bytes,
}

/// Encodes a forwarded stanza.
///
/// Panics when `key` is longer than 65,535 bytes (ownership keys are JIDs: at most
/// 3,071 bytes, RFC 7622 §3.1).
pub fn encode(kind: Kind, hops: u8, key: &str, sent_us: u64, epoch: u64, stanza: &[u8]) -> Bytes {
    let klen = u16::try_from(key.len()).expect("ownership key fits in 16 bits");
    let mut b = BytesMut::with_capacity(HEAD + key.len() + stanza.len());
    b.put_u8(VERSION);
    b.put_u8(match kind {
        Kind::Local => 0,
        Kind::Remote => 1,
        Kind::Session => 2,
    });
    b.put_u8(hops);
    b.put_u16(klen);
    b.put_slice(key.as_bytes());
    b.put_u64(sent_us);
    b.put_u64(epoch);
    b.put_slice(stanza);
    b.freeze()
}

/// Decodes a payload written by [`encode`].
///
/// Errors: a message naming what is wrong (another version, a short payload, a key that
/// is not UTF-8, an unknown kind).
pub fn decode(payload: Bytes) -> Result<Forwarded, String> {
    if payload.len() < HEAD {
        return Err(format!("{} bytes: shorter than the header", payload.len()));
    }
    if payload[0] != VERSION {
        return Err(format!(
            "version {} (this node speaks {VERSION})",
            payload[0]
        ));
    }
    let kind = match payload[1] {
        0 => Kind::Local,
        1 => Kind::Remote,
        2 => Kind::Session,
        k => return Err(format!("unknown kind {k}")),
    };
    let hops = payload[2];
    let klen = u16::from_be_bytes([payload[3], payload[4]]) as usize;
    if payload.len() < HEAD + klen {
        return Err(format!("{} bytes: shorter than its key", payload.len()));
    }
    let key = std::str::from_utf8(&payload[5..5 + klen])
        .map_err(|_| "key is not UTF-8".to_owned())?
        .to_owned();
    let at = 5 + klen;
    let num = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    let sent_us = num(at);
    let epoch = num(at + 8);
    Ok(Forwarded {
        kind,
        hops,
        key,
        sent_us,
        epoch,
        stanza: payload.slice(at + 16..),
    })
}

/// Microseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let st = b"<message to='u@a.test'><body>h\xc3\xa9</body></message>";
        let p = encode(Kind::Local, 1, "u@a.test", 42, 7, st);
        let f = decode(p.clone()).unwrap();
        assert_eq!(
            f,
            Forwarded {
                kind: Kind::Local,
                hops: 1,
                key: "u@a.test".into(),
                sent_us: 42,
                epoch: 7,
                stanza: Bytes::from_static(st),
            }
        );
        assert!(decode(p.slice(..10)).unwrap_err().contains("header"));
        let mut v = p.to_vec();
        v[0] = 9;
        assert!(decode(Bytes::from(v)).unwrap_err().contains("version"));
        let mut v = p.to_vec();
        v[1] = 5;
        assert!(decode(Bytes::from(v)).unwrap_err().contains("kind"));
        let mut v = p.to_vec();
        v[4] = 200;
        assert!(decode(Bytes::from(v)).is_err());
        let r = decode(encode(Kind::Remote, 2, "b.test", 1, 1, b"")).unwrap();
        assert_eq!((r.kind, r.hops, r.stanza.len()), (Kind::Remote, 2, 0));
    }

    #[test]
    fn session_messages_round_trip_and_refusals() {
        let body = session_body(SessionOp::Deliver, 0x0102_0304_0506_0708, "n2", b"<iq/>");
        let f = decode(encode(Kind::Session, 1, "u@a.test", 1, 1, &body)).unwrap();
        assert_eq!(f.kind, Kind::Session);
        let m = session_msg(&f.stanza).unwrap();
        assert_eq!(
            m,
            SessionMsg {
                op: SessionOp::Deliver,
                conn: 0x0102_0304_0506_0708,
                access: "n2".into(),
                data: Bytes::from_static(b"<iq/>"),
            }
        );
        for op in [
            SessionOp::Bind,
            SessionOp::Stanza,
            SessionOp::Csi,
            SessionOp::End,
            SessionOp::Bound,
            SessionOp::Deliver,
            SessionOp::DeliverTracked,
            SessionOp::Close,
        ] {
            let b = Bytes::from(session_body(op, 7, "node-1", b""));
            assert_eq!(session_msg(&b).unwrap().op, op);
        }
        let b = Bytes::from(session_body(SessionOp::End, 7, "node-1", b""));
        assert!(session_msg(&b.slice(..9)).unwrap_err().contains("bytes"));
        assert!(session_msg(&b.slice(..12)).unwrap_err().contains("name"));
        let mut v = b.to_vec();
        v[0] = 99;
        assert!(session_msg(&Bytes::from(v)).unwrap_err().contains("op"));
    }
}
