//! [`StanzaArena`]: where the stanzas a server generates on its hot path (the answer to
//! every XEP-0199 ping it receives) are written without a heap allocation each.

use bytes::{Bytes, BytesMut};

use super::builder::ElementBuilder;

/// A builder's buffer is kept for the next one up to this capacity (bytes); a larger
/// one (a rare big stanza) is dropped.
const MAX_KEPT_SCRATCH: usize = 4 * 1024;

/// Memory for generated stanzas: one scratch buffer that an [`ElementBuilder`] writes
/// into ([`StanzaArena::builder`]), and two chunks (each a [`BytesMut`]) the finished
/// element's bytes are copied to and split off ([`ElementBuilder::finish_in`]), as the
/// framer splits received elements off its read buffer.
///
/// Each element is a refcounted view of its chunk. When the current chunk is full, the
/// arena turns to the other one: reused in place when every element split off it is
/// gone (by then `chunk_size` bytes of newer stanzas were made: the usual case), else
/// replaced by a new one of `chunk_size` bytes (two allocations: the buffer and its
/// shared header). So building allocates nothing while stanzas leave about as fast as
/// they are made, and about twice per `chunk_size` bytes at worst. The cost, as for
/// received stanzas: an element kept long (queued for an unreachable domain) keeps its
/// whole chunk in memory.
///
/// ```
/// use fedrouter_proto::xml::{parse_stanza, StanzaArena};
///
/// let mut arena = StanzaArena::new(16 * 1024);
/// let el = arena
///     .builder("iq")
///     .attr("type", "result")
///     .attr("id", "p1")
///     .finish_in(&mut arena);
/// assert_eq!(el.as_str(), "<iq type='result' id='p1'/>");
/// assert_eq!(parse_stanza(el.bytes()).unwrap(), el);
/// ```
#[derive(Debug)]
pub struct StanzaArena {
    chunks: [BytesMut; 2],
    /// The index of the chunk written now.
    current: usize,
    chunk_size: usize,
    scratch: Vec<u8>,
}

impl StanzaArena {
    /// An arena whose chunks hold `chunk_size` bytes (at least one stanza's: a larger
    /// stanza gets a chunk of its own size). Allocates nothing until first used.
    pub fn new(chunk_size: usize) -> StanzaArena {
        StanzaArena {
            chunks: [BytesMut::new(), BytesMut::new()],
            current: 0,
            chunk_size,
            scratch: Vec::new(),
        }
    }

    /// Starts `<name` in the arena's scratch buffer (as [`ElementBuilder::new`]); end
    /// with [`ElementBuilder::finish_in`] on this arena to give the buffer back.
    pub fn builder(&mut self, name: &str) -> ElementBuilder {
        ElementBuilder::with_buffer(name, std::mem::take(&mut self.scratch))
    }

    /// `bytes` copied into the chunk and split off it.
    pub(super) fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if self.chunks[self.current].capacity() < bytes.len() {
            // The other chunk, reused in place when nothing split off it is alive any
            // more, else a new one.
            self.current = 1 - self.current;
            let chunk = &mut self.chunks[self.current];
            let want = bytes.len().max(self.chunk_size);
            if !chunk.try_reclaim(want) {
                chunk.reserve(want);
            }
        }
        let chunk = &mut self.chunks[self.current];
        chunk.extend_from_slice(bytes);
        chunk.split().freeze()
    }

    /// Keeps a builder's buffer for the next [`StanzaArena::builder`].
    pub(super) fn give_back(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= MAX_KEPT_SCRATCH {
            buf.clear();
            self.scratch = buf;
        }
    }
}
