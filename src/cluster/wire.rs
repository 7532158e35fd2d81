//! A stanza crossing nodes: its bytes as received plus its destination, like a shard
//! hand-off one level up (DESIGN.md "Cluster"). One NATS message payload:
//!
//! ```text
//! u8  version (1)
//! u8  kind: 0 = a local bare JID, 1 = a remote domain
//! u8  hops: how many nodes forwarded it so far (1 on the first)
//! u16 key length (big-endian), then the key (an ownership key, UTF-8)
//! u64 sent: microseconds since the Unix epoch when published (hand-off latency)
//! u64 epoch of the sender's membership view
//! ... the stanza's bytes
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
}
