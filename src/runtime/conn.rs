//! One connection on a shard: the socket, optional TLS, and the sans-IO protocol that does
//! all the protocol work: [`S2sConnection`] or [`C2sConnection`], behind [`Proto`].
//!
//! Two tasks per connection, both long-lived:
//!
//! - the **read loop** owns the only read ever in flight on the socket. It is never raced
//!   against a timer or anything else: tokio-uring cannot cancel a submitted read, so a
//!   read dropped before completion would lose the bytes it later receives
//!   (`tests/uring_read_cancel.rs` shows it). It ends when the peer closes, on an error,
//!   or when the write side shuts the socket down (`shutdown(Both)` completes the pending
//!   read with 0).
//! - the **writer** moves bytes the protocol produced to the socket, one `write_all` at a
//!   time, and sleeps until woken or until the protocol's next deadline
//!   ([`S2sConnection::poll_timeout`]: negotiation steps, the stream header, keepalives).
//!
//! State shared by the two lives in a `RefCell` that is never borrowed across an
//! `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{BufRead as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

use crate::router::queue::Queued;
use crate::stream::c2s::{self, C2sConnection};
use crate::stream::s2s::{Direction, Event, S2sConnection};

/// What the driver needs from a sans-IO stream machine (both have the same shape, after
/// quinn-proto's `Connection`).
pub(crate) trait Proto {
    /// What the machine asks the runtime to act on.
    type Event;
    fn handle_input(&mut self, data: &[u8], now: Instant);
    /// `handle_input` for `len` bytes that `fill` appends straight into the protocol's
    /// receive buffer; `fill` is not called when the stream takes no input.
    fn handle_input_with(&mut self, len: usize, fill: impl FnOnce(&mut BytesMut), now: Instant);
    /// The TLS handshake completed at `now` (monotonic) and `at` (wall clock, for the
    /// peer certificate's validity).
    fn handle_tls_established(
        &mut self,
        chain: Vec<CertificateDer<'static>>,
        now: Instant,
        at: rustls::pki_types::UnixTime,
    );
    fn handle_tls_failed(&mut self, reason: &str);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self, into: &mut Vec<u8>) -> usize;
    /// Hands the bytes to send to `take` in place (not called when there are none).
    fn poll_transmit_with(&mut self, take: impl FnOnce(&[u8])) -> usize;
    fn pending_transmit(&self) -> usize;
    fn poll_event(&mut self) -> Option<Self::Event>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn release_idle_memory(&mut self);
    fn direction(&self) -> Direction;
}

macro_rules! proto {
    ($t:ty, $ev:ty, $dir:expr, $tls:expr) => {
        impl Proto for $t {
            type Event = $ev;
            #[allow(clippy::redundant_closure_call)]
            fn handle_tls_established(
                &mut self,
                chain: Vec<CertificateDer<'static>>,
                now: Instant,
                at: rustls::pki_types::UnixTime,
            ) {
                ($tls)(self, chain, now, at)
            }
            fn handle_input(&mut self, data: &[u8], now: Instant) {
                <$t>::handle_input(self, data, now)
            }
            fn handle_input_with(
                &mut self,
                len: usize,
                fill: impl FnOnce(&mut BytesMut),
                now: Instant,
            ) {
                <$t>::handle_input_with(self, len, fill, now)
            }
            fn handle_tls_failed(&mut self, reason: &str) {
                <$t>::handle_tls_failed(self, reason)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self, into: &mut Vec<u8>) -> usize {
                <$t>::poll_transmit(self, into)
            }
            fn poll_transmit_with(&mut self, take: impl FnOnce(&[u8])) -> usize {
                <$t>::poll_transmit_with(self, take)
            }
            fn pending_transmit(&self) -> usize {
                <$t>::pending_transmit(self)
            }
            fn poll_event(&mut self) -> Option<$ev> {
                <$t>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
            fn release_idle_memory(&mut self) {
                <$t>::release_idle_memory(self)
            }
            #[allow(clippy::redundant_closure_call)]
            fn direction(&self) -> Direction {
                ($dir)(self)
            }
        }
    };
}
proto!(
    S2sConnection,
    Event,
    |c: &S2sConnection| c.direction(),
    |c: &mut S2sConnection, chain, now, at| c.handle_tls_established(chain, now, at)
);
proto!(
    C2sConnection,
    c2s::Event,
    |_: &C2sConnection| Direction::Inbound,
    // Client certificates are not checked (no SASL EXTERNAL for clients): no time needed.
    |c: &mut C2sConnection, chain, now, _at| c.handle_tls_established(chain, now)
);

/// Smallest read buffer. The buffer is owned by the in-flight read for the whole life of
/// the connection, so it is part of every idle stream's memory: it starts small and
/// doubles (up to [`READ_BUF_MAX`]) while reads fill it, then shrinks back when traffic
/// drops.
pub(crate) const READ_BUF: usize = 1024;

/// Largest read buffer (a busy stream).
pub(crate) const READ_BUF_MAX: usize = 64 * 1024;

/// A connection id, unique within the process: shard in the top 16 bits.
pub(crate) type ConnId = u64;

/// TLS state on the socket.
pub(crate) enum Tls {
    /// We are the TLS client (outbound STARTTLS or XEP-0368 direct TLS).
    Client(rustls::ClientConnection),
    /// We are the TLS server (inbound).
    Server(rustls::ServerConnection),
}

impl Tls {
    fn conn(&mut self) -> &mut dyn TlsConn {
        match self {
            Tls::Client(c) => c,
            Tls::Server(c) => c,
        }
    }

    fn is_handshaking(&self) -> bool {
        match self {
            Tls::Client(c) => c.is_handshaking(),
            Tls::Server(c) => c.is_handshaking(),
        }
    }

    fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        let certs = match self {
            Tls::Client(c) => c.peer_certificates(),
            Tls::Server(c) => c.peer_certificates(),
        };
        certs.map(|c| c.to_vec()).unwrap_or_default()
    }
}

/// The parts of rustls's `ConnectionCommon` the driver uses, over both sides.
trait TlsConn {
    fn read_tls(&mut self, rd: &mut dyn std::io::Read) -> std::io::Result<usize>;
    fn process_new_packets(&mut self) -> Result<rustls::IoState, rustls::Error>;
    fn write_tls(&mut self, wr: &mut dyn std::io::Write) -> std::io::Result<usize>;
    fn wants_write(&self) -> bool;
    fn reader(&mut self) -> rustls::Reader<'_>;
    fn writer(&mut self) -> rustls::Writer<'_>;
    fn send_close_notify(&mut self);
}

macro_rules! tls_conn {
    ($t:ty) => {
        impl TlsConn for $t {
            fn read_tls(&mut self, rd: &mut dyn std::io::Read) -> std::io::Result<usize> {
                rustls::ConnectionCommon::read_tls(self, rd)
            }
            fn process_new_packets(&mut self) -> Result<rustls::IoState, rustls::Error> {
                rustls::ConnectionCommon::process_new_packets(self)
            }
            fn write_tls(&mut self, wr: &mut dyn std::io::Write) -> std::io::Result<usize> {
                rustls::ConnectionCommon::write_tls(self, wr)
            }
            fn wants_write(&self) -> bool {
                rustls::CommonState::wants_write(&***self)
            }
            fn reader(&mut self) -> rustls::Reader<'_> {
                rustls::ConnectionCommon::reader(self)
            }
            fn writer(&mut self) -> rustls::Writer<'_> {
                rustls::ConnectionCommon::writer(self)
            }
            fn send_close_notify(&mut self) {
                rustls::CommonState::send_close_notify(&mut ***self)
            }
        }
    };
}
tls_conn!(rustls::ClientConnection);
tls_conn!(rustls::ServerConnection);

/// Moves up to `max` bytes of the plaintext rustls has decrypted to `to`, chunk by chunk
/// in place (`BufRead` over rustls's buffer: no copy of ours between).
fn take_plaintext(reader: &mut rustls::Reader<'_>, max: usize, mut to: impl FnMut(&[u8])) {
    let mut left = max;
    // Bounded: every pass but the last takes at least one byte of `left`.
    for _ in 0..=max {
        if left == 0 {
            break;
        }
        // WouldBlock: no more plaintext now; Ok(empty): the peer's close_notify.
        let Ok(chunk) = reader.fill_buf() else {
            break;
        };
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len().min(left);
        to(&chunk[..n]);
        reader.consume(n);
        left -= n;
    }
}

/// Encrypts `plain` into TLS records appended to `wire`. rustls holds at most its buffer
/// limit (64 KiB) of records not yet taken, so the records are moved to `wire` as they
/// are made: a transmit buffer larger than that is encrypted whole, none of it dropped.
fn encrypt_into(c: &mut dyn TlsConn, mut plain: &[u8], wire: &mut Vec<u8>) {
    // Bounded: every pass but the last encrypts at least one byte.
    for _ in 0..=plain.len() {
        if plain.is_empty() {
            break;
        }
        match c.writer().write(plain) {
            Ok(n) if n > 0 => plain = &plain[n..],
            _ => break,
        }
        flush_tls(c, wire);
    }
}

/// Moves every TLS record rustls has ready to `wire`.
fn flush_tls(c: &mut dyn TlsConn, wire: &mut Vec<u8>) {
    // Bounded: rustls holds at most its buffer limit, and each pass into a `Vec` takes
    // at least one record (or fails).
    for _ in 0..1024 {
        if !c.wants_write() || c.write_tls(wire).is_err() {
            break;
        }
    }
}

/// Everything about a connection except its socket: what moves to another shard on a
/// hand-off.
pub(crate) struct ConnState<P: Proto = S2sConnection> {
    /// The protocol.
    pub proto: P,
    /// TLS, once started.
    pub tls: Option<Tls>,
    /// Whether the TLS handshake of a STARTTLS upgrade is still running.
    pub tls_handshaking: bool,
    /// Bytes ready for the socket (already encrypted when TLS is on).
    pub wire: Vec<u8>,
    /// Events taken from the protocol but not yet acted on.
    pub events: VecDeque<P::Event>,
    /// The peer's stream header has arrived.
    pub opened: bool,
    /// Counted in the shard's unauthenticated connections.
    pub counted_unauth: bool,
    /// The connection has ended (the writer flushes and shuts the socket down).
    pub closed: bool,
    /// The shard has decided to move the connection to another shard.
    pub handing_off: bool,
    /// The connection was handed over once already (it never moves twice).
    pub moved: bool,
    /// A verification or authentication was already acted on here: the connection stays
    /// on this shard (verdicts come back addressed to it).
    pub pinned: bool,
    /// Read times of the stanzas now in `wire` (routing latency, taken by the writer).
    pub marks: Vec<Instant>,
    /// When the connection was set up (negotiation time).
    pub started: Instant,
    /// Bytes the writer has taken out of `wire` so far (the stream offset where `wire`
    /// starts).
    pub taken: u64,
    /// Bytes the socket has accepted so far (handed to the kernel).
    pub written: u64,
    /// TLS: plaintext bytes sealed into records so far ([`ConnState::seal`]).
    pub sealed: u64,
    /// Stanzas whose bytes are in `wire` or in the write in flight, not yet accepted by
    /// the socket, with the stream offset where their bytes end (see
    /// [`ConnState::track`]). On a write stall or a lost stream these are exactly the
    /// stanzas that never left this process: bounced, or sent again on the next stream.
    pub unsent: VecDeque<(u64, Queued)>,
    /// When each stanza of `unsent` entered the stream, while holding for
    /// acknowledgements (parallel to `unsent`), for the ack latency histogram.
    pub sent_at: VecDeque<Instant>,
    /// XEP-0198 on an outbound S2S stream: stanzas stay in `unsent` after the socket took
    /// them, until the peer acknowledges them ([`ConnState::acknowledged`]).
    pub hold_until_acked: bool,
    /// Of `unsent`, how many of the oldest were sent before stream management counted
    /// them (an inbound bidirectional stream whose peer enabled it late,
    /// [`ConnState::start_holding`]): they leave once the socket takes them.
    pub uncounted: usize,
    /// C2S, XEP-0198: the socket is gone but the session waits for resumption; what is
    /// sent to it is kept by the protocol core, not written.
    pub detached: bool,
    /// Since when the write in flight has been waiting for the socket to accept a byte
    /// (`None`: nothing to write).
    pub write_waiting_since: Option<Instant>,
    /// C2S: the connection counted against its client's address until it authenticates
    /// or ends (`limits.c2s_unauthenticated_per_address`); dropping it gives the slot back.
    pub address_slot: Option<super::floods::AddressSlot>,
    /// When the writer gives the stream's idle buffers back (its spare write buffer,
    /// the protocol's receive and transmit buffers) if nothing was read or written
    /// since. A busy stream (its previous read, or write, less than [`IDLE_TRIM`] ago)
    /// sets it [`IDLE_TRIM`] ahead at each read and write instead of giving its buffers
    /// back at once, so it allocates none per burst, and an idle one holds none; a
    /// stream with sparser traffic gives them back at once, without a timer's wake-up.
    pub trim_at: Option<Instant>,
}

/// Marks an end offset in [`ConnState::unsent`] as that of a stanza whose bytes are still
/// plaintext with the protocol (TLS, not yet sealed into records); the other bits hold
/// where its plaintext ends ([`ConnState::sealed`] counts). Resolved by
/// [`ConnState::seal`]; never `<= written` before, so such a stanza is never taken for
/// written. Stream offsets stay far below 2^63.
const UNSEALED: u64 = 1 << 63;

/// Plaintext per TLS record (RFC 8446 §5.1: 2^14 octets at most).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// How long a busy stream must see no read and no write before its idle buffers are
/// given back ([`ConnState::trim_at`]), and how close together reads (or writes) make a
/// stream busy. So the timer fires at most once per second of quiet after traffic.
pub(crate) const IDLE_TRIM: std::time::Duration = std::time::Duration::from_secs(1);

impl<P: Proto> ConnState<P> {
    /// A new state around `proto`, with TLS already established when `tls` is given.
    pub fn new(proto: P, tls: Option<Tls>) -> Self {
        ConnState {
            proto,
            tls,
            tls_handshaking: false,
            wire: Vec::new(),
            events: VecDeque::new(),
            opened: false,
            counted_unauth: false,
            closed: false,
            handing_off: false,
            moved: false,
            pinned: false,
            marks: Vec::new(),
            started: Instant::now(),
            taken: 0,
            written: 0,
            sealed: 0,
            unsent: VecDeque::new(),
            sent_at: VecDeque::new(),
            hold_until_acked: false,
            uncounted: 0,
            detached: false,
            write_waiting_since: None,
            address_slot: None,
            trim_at: None,
        }
    }

    /// Bytes produced for this stream and not yet taken by a write: the protocol's pending
    /// output plus `wire`.
    pub fn backlog(&self) -> usize {
        self.wire.len() + self.proto.pending_transmit()
    }

    /// Remembers where `stanza`'s bytes end in the stream (call right after the
    /// [`ConnState::pump`] following its queueing): the current end of `wire` on a plain
    /// stream, the end of its record once sealed on TLS; until the socket accepts them.
    pub fn track(&mut self, stanza: Queued) {
        // On TLS its bytes are still the protocol's plaintext: the end is known once
        // sealed.
        let pending = self.proto.pending_transmit() as u64;
        let end = if self.tls.is_some() && pending > 0 {
            UNSEALED | (self.sealed + pending)
        } else {
            self.taken + self.wire.len() as u64
        };
        self.unsent.push_back((end, stanza));
        if self.hold_until_acked {
            self.sent_at.push_back(Instant::now());
        }
    }

    /// Takes the bytes in `wire` for a write, leaving `spare` (emptied) in its place.
    pub fn take_wire(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        let out = std::mem::replace(&mut self.wire, spare);
        self.taken += out.len() as u64;
        out
    }

    /// The socket accepted `n` more bytes: stanzas wholly inside them have left (unless
    /// they are held until acknowledged).
    pub fn accepted(&mut self, n: usize) {
        self.written += n as u64;
        if self.hold_until_acked {
            self.release_uncounted();
            return;
        }
        self.release_written();
    }

    /// Starts holding stanzas for acknowledgements on a stream that already carried some
    /// (XEP-0198 enabled by the peer on an inbound bidirectional stream, XEP-0288): of
    /// those still in `unsent`, the newest `counted` were sent after stream management
    /// began counting and are held; the older ones leave once the socket takes them.
    pub fn start_holding(&mut self, counted: usize) {
        if self.hold_until_acked {
            return;
        }
        self.hold_until_acked = true;
        let counted = counted.min(self.unsent.len());
        self.uncounted = self.unsent.len() - counted;
        let now = Instant::now();
        self.sent_at.clear();
        self.sent_at.extend(std::iter::repeat_n(now, counted));
        self.release_uncounted();
    }

    fn release_uncounted(&mut self) {
        while self.uncounted > 0
            && self
                .unsent
                .front()
                .is_some_and(|(end, _)| *end <= self.written)
        {
            self.unsent.pop_front();
            self.uncounted -= 1;
        }
    }

    /// The peer acknowledged the `n` oldest stanzas (XEP-0198): they are delivered.
    /// Returns how many were released (fewer only if fewer were held).
    pub fn acknowledged(&mut self, n: usize) -> usize {
        // Uncounted ones went before the acknowledged ones: they arrived too.
        let before = std::mem::take(&mut self.uncounted).min(self.unsent.len());
        self.unsent.drain(..before);
        let n = n.min(self.unsent.len());
        self.unsent.drain(..n);
        let now = Instant::now();
        let timed = n.min(self.sent_at.len());
        for t in self.sent_at.drain(..timed) {
            super::metrics(|m| m.observe(crate::metrics::Latency::SmAck, now - t));
        }
        n
    }

    /// Stops holding stanzas for acknowledgements (the peer refused XEP-0198): those the
    /// socket took are released, as without it.
    pub fn stop_holding(&mut self) {
        self.hold_until_acked = false;
        self.uncounted = 0;
        self.sent_at.clear();
        self.release_written();
    }

    /// Stanzas held in memory for this stream: every one not yet acknowledged while
    /// holding for acknowledgements (they count against `s2s.queue_per_domain`), else 0.
    pub fn held(&self) -> usize {
        if self.hold_until_acked {
            self.unsent.len()
        } else {
            0
        }
    }

    fn release_written(&mut self) {
        while self
            .unsent
            .front()
            .is_some_and(|(end, _)| *end <= self.written)
        {
            self.unsent.pop_front();
        }
    }

    /// The stanzas that never reached the socket, oldest first.
    pub fn take_unsent(&mut self) -> Vec<Queued> {
        self.sent_at.clear();
        self.uncounted = 0;
        self.unsent.drain(..).map(|(_, q)| q).collect()
    }

    /// [`ConnState::take_unsent`] for the stanzas to remote domain `d` only (an ownership
    /// key), on a stream that multiplexes several (XEP-0220 §2.4), and how many of them
    /// the socket had already taken (held for XEP-0198 acknowledgements). The others
    /// stay.
    pub fn take_unsent_for(&mut self, d: &str) -> (Vec<Queued>, usize) {
        let mut mine = Vec::new();
        let mut resent = 0;
        let mut keep = std::collections::VecDeque::with_capacity(self.unsent.len());
        for (end, q) in self.unsent.drain(..) {
            if q.remote_domain() == d {
                if end <= self.written {
                    resent += 1;
                }
                mine.push(q);
            } else {
                keep.push_back((end, q));
            }
        }
        self.unsent = keep;
        if self.unsent.is_empty() {
            self.sent_at.clear();
        }
        (mine, resent)
    }

    /// Notes that a stanza read at `read_at` is now in `wire` (call after `pump`).
    pub fn mark(&mut self, read_at: Option<Instant>) {
        if let Some(t) = read_at {
            self.marks.push(t);
        }
    }

    /// Feeds bytes read from the socket: through TLS when on, then into the protocol.
    /// A TLS error closes the stream ([`Proto::handle_tls_failed`]). TLS plaintext goes
    /// from rustls's buffer straight into the protocol's receive buffer
    /// ([`Proto::handle_input_with`]), one copy, with no buffer of the driver's between.
    pub fn input(&mut self, data: &[u8], now: Instant) {
        let Some(tls) = self.tls.as_mut() else {
            self.proto.handle_input(data, now);
            self.collect_events();
            return;
        };
        let mut rd = data;
        // At least one pass even for no new bytes: plaintext may be buffered in rustls
        // from the handshake (a peer that sent its stream header right after Finished).
        // Bounded: every pass but the last consumes some of `rd`.
        for _ in 0..=data.len() {
            let c = tls.conn();
            if !rd.is_empty() {
                match c.read_tls(&mut rd) {
                    Err(e) => {
                        self.proto.handle_tls_failed(&e.to_string());
                        break;
                    }
                    // The peer's close_notify came: rustls takes nothing after it, the
                    // rest is dropped (this loop waited for it to be taken forever).
                    Ok(0) => rd = &[],
                    Ok(_) => {}
                }
            }
            let plaintext = match c.process_new_packets() {
                Ok(io) => io.plaintext_bytes_to_read(),
                Err(e) => {
                    // Send the alert rustls queued, then give up.
                    let _ = c.write_tls(&mut self.wire);
                    self.proto.handle_tls_failed(&e.to_string());
                    break;
                }
            };
            // The handshake's end first: the stream restarts (RFC 6120 §5.4.3.3) before
            // the plaintext that came with it, the peer's new stream header, is fed.
            if self.tls_handshaking && !tls.is_handshaking() {
                self.tls_handshaking = false;
                let chain = tls.peer_chain();
                self.proto
                    .handle_tls_established(chain, now, rustls::pki_types::UnixTime::now());
            }
            if plaintext > 0 {
                let mut reader = tls.conn().reader();
                self.proto.handle_input_with(
                    plaintext,
                    |buf| take_plaintext(&mut reader, plaintext, |p| buf.extend_from_slice(p)),
                    now,
                );
                // What the stream did not take (it is closed): dropped, as the protocol
                // drops input then.
                take_plaintext(&mut reader, plaintext, |_| {});
            }
            if rd.is_empty() {
                break;
            }
        }
        self.collect_events();
    }

    /// Moves the protocol's events into [`ConnState::events`].
    pub fn collect_events(&mut self) {
        while let Some(e) = self.proto.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Moves what the protocol wants to send to [`ConnState::wire`]: on a plain stream,
    /// all of it. On a TLS stream only the records rustls made by itself (handshake,
    /// tickets, alerts): the protocol's bytes stay with the protocol until the writer
    /// seals them ([`ConnState::seal`]), so the stanzas queued between two writes become
    /// one record (up to 16 KiB) rather than a record each: one AEAD pass and no
    /// allocation per stanza.
    pub fn pump(&mut self) {
        match self.tls.as_mut() {
            None => {
                self.proto.poll_transmit(&mut self.wire);
            }
            Some(tls) => flush_tls(tls.conn(), &mut self.wire),
        }
    }

    /// Moves everything the protocol wants to send to [`ConnState::wire`], encrypted
    /// when TLS is on, and gives the stanzas [`ConnState::track`]ed meanwhile their end
    /// in the stream: the end of the records now holding them (a record reaches the
    /// peer whole or not at all, so a stanza counts as written once its record is). The
    /// writer calls it before each write.
    pub fn seal(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            self.proto.poll_transmit(&mut self.wire);
            return;
        };
        let c = tls.conn();
        if !self.tls_handshaking {
            // The unsealed stanzas are the newest of `unsent`, oldest first from `next`.
            let mut next = self
                .unsent
                .iter()
                .rposition(|(e, _)| e & UNSEALED == 0)
                .map_or(0, |i| i + 1);
            let (wire, unsent, sealed) = (&mut self.wire, &mut self.unsent, &mut self.sealed);
            let taken = self.taken;
            self.proto.poll_transmit_with(|bytes| {
                // One record per chunk (rustls splits a write at the same size), so each
                // stanza ends in the record(s) of the chunk holding its last byte.
                for chunk in bytes.chunks(MAX_RECORD_PLAINTEXT) {
                    encrypt_into(c, chunk, wire);
                    *sealed += chunk.len() as u64;
                    let end = taken + wire.len() as u64;
                    while let Some((e, _)) = unsent.get_mut(next) {
                        if *e & !UNSEALED > *sealed {
                            break;
                        }
                        *e = end;
                        next += 1;
                    }
                }
            });
        }
        flush_tls(c, &mut self.wire);
    }

    /// Starts TLS on this stream (STARTTLS, RFC 6120 §5.4.3.3): whatever the protocol
    /// produced so far goes out in plaintext first.
    pub fn start_tls(&mut self, tls: Tls) {
        self.proto.poll_transmit(&mut self.wire);
        self.tls = Some(tls);
        self.tls_handshaking = true;
        self.pump();
    }

    /// Queues a TLS close_notify (before the socket is shut down), after whatever the
    /// protocol still had to send (a final `<failure/>`, the stream error): rustls would
    /// encrypt data written later, but the peer drops records after close_notify.
    pub fn close_tls(&mut self) {
        self.seal();
        if let Some(tls) = self.tls.as_mut() {
            let c = tls.conn();
            c.send_close_notify();
            flush_tls(c, &mut self.wire);
        }
    }

    /// The protocol's next deadline (negotiation steps, the peer's stream header,
    /// keepalives, idle close: all in the sans-IO machine).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.proto.poll_timeout()
    }
}

/// A connection running on this shard.
pub(crate) struct Conn<P: Proto = S2sConnection> {
    /// Unique id.
    pub id: ConnId,
    /// The socket.
    pub stream: TcpStream,
    /// Protocol and TLS state.
    pub st: RefCell<ConnState<P>>,
    /// Wakes the writer.
    pub wake: Notify,
    /// Signalled when the writer has stopped (for hand-off and cleanup).
    pub writer_done: Notify,
    /// Whether the writer has stopped.
    pub writer_stopped: Cell<bool>,
    /// `Outbound` or `Inbound`.
    pub direction: Direction,
    /// The stream's tracing span; fields are recorded with [`Conn::record_once`].
    pub span: tracing::Span,
    /// Which of `span`'s fields are recorded (bit = the field's position in the span).
    recorded: Cell<u64>,
}

impl<P: Proto> Conn<P> {
    /// Wraps a socket.
    pub fn new(id: ConnId, stream: TcpStream, st: ConnState<P>, span: tracing::Span) -> Self {
        let direction = st.proto.direction();
        Conn {
            id,
            stream,
            st: RefCell::new(st),
            wake: Notify::new(),
            writer_done: Notify::new(),
            writer_stopped: Cell::new(false),
            direction,
            span,
            recorded: Cell::new(0),
        }
    }

    /// Records `value` as `field` of the stream's span, unless that field was recorded
    /// already: the first value stays. Recording it again would not replace it in text
    /// logs, because tracing-subscriber's text formatter appends every recorded field
    /// (`FormatFields::add_fields`), so a stream restarted after STARTTLS and SASL wrote
    /// three `id=` on every line. The current stream id stays with the protocol
    /// (`stream_id()`); the lines that need it carry it as an event field.
    pub fn record_once(&self, field: &str, value: &str) {
        let Some(i) = self
            .span
            .metadata()
            .and_then(|m| m.fields().iter().position(|f| f.name() == field))
        else {
            return;
        };
        let bit = 1u64 << (i % 64);
        if self.recorded.get() & bit == 0 {
            self.recorded.set(self.recorded.get() | bit);
            self.span.record(field, value);
        }
    }

    /// Bytes waiting to be written (protocol and socket buffers).
    pub fn backlog(&self) -> usize {
        self.st.borrow().backlog()
    }

    /// A duplicate of the socket's descriptor, for a hand-off: the new owner shard wraps
    /// it in its own runtime while this one drops its copy.
    pub fn dup_fd(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: `dup` on a descriptor we own; the result is checked and owned by the
        // returned `OwnedFd`.
        let fd = unsafe { libc::dup(self.stream.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// A connection in transit to its owner shard (DESIGN.md "Ownership": "the socket plus
/// its protocol state").
pub(crate) struct Handoff<P: Proto = S2sConnection> {
    /// The socket (a duplicate descriptor; the old shard closed its own).
    pub fd: OwnedFd,
    /// Protocol, TLS and unprocessed events.
    pub state: ConnState<P>,
}

// The protocol state is plain data; rustls connections are `Send`.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Handoff>();
    assert_send::<Handoff<C2sConnection>>();
};

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
