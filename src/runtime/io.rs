//! A connection's I/O on its shard: the accept loops, one read loop and one writer per
//! stream (socket reads into the protocol machine, its bytes out with the write-stall
//! timer, its deadlines), the hand-off of a stream to another shard, and the TLS
//! handshake that precedes XEP-0368 direct TLS streams.
//!
//! What differs between S2S and C2S streams is the [`Driven`] trait, implemented in
//! `s2s.rs` and `local/`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, warn, Instrument};

use super::conn::{Conn, ConnId, Handoff, Proto, IDLE_TRIM, READ_BUF, READ_BUF_MAX};
use super::msg::ShardMsg;
use super::shard::Shard;
use crate::metrics::Latency;
use crate::stream::s2s::CloseReason;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// S2S with STARTTLS (RFC 6120), port 5269.
    S2s,
    /// S2S with direct TLS (XEP-0368), port 5270.
    S2sDirectTls,
    /// C2S, port 5222.
    C2s,
}

/// Where the read loop goes after handling a read.
pub(super) enum After {
    /// Keep reading.
    Continue,
    /// Move the connection to this shard.
    HandOff(usize),
}

/// How a write of a stream's bytes ended.
enum WriteEnd {
    /// The socket accepted every byte.
    Done,
    /// The socket failed (reset, closed).
    Failed,
    /// The socket accepted no byte for the write-stall timeout; the stream is closed.
    Stalled,
}

/// A writer keeps its last write's buffer for the next one up to this capacity (bytes)
/// while the stream is busy ([`IDLE_TRIM`]).
const MAX_SPARE: usize = 64 * 1024;

/// ... and up to this capacity always: what an idle stream may keep.
const SMALL_SPARE: usize = 4 * 1024;

/// How the shard drives the connections of one protocol (S2S, C2S): the parts of the read
/// loop, the writer and the hand-off that differ.
pub(super) trait Driven: Proto + Sized + 'static {
    /// The `proto` label of its metrics.
    const PROTO: &'static str;
    /// Acts on the connection's events; `may_hand_off`: the caller is the read loop and
    /// can move the connection to another shard.
    fn on_events(shard: &Shard, conn: &Rc<Conn<Self>>, may_hand_off: bool) -> After;
    /// Bookkeeping when the connection ends (called once).
    fn ended(shard: &Shard, conn: &Rc<Conn<Self>>, reason: &CloseReason);
    /// The writer moved bytes to the socket: there is room in the stream again.
    fn written(_shard: &Shard, _conn: &Rc<Conn<Self>>) {}
    /// How long the socket may accept no byte while some wait (`*.write_stall_timeout`).
    fn write_stall_timeout(shard: &Shard) -> Duration;
    /// The socket accepted no byte for the write-stall timeout: the stream is closed
    /// (marked so, socket shut down); bounce or re-route what waited for it and do the
    /// bookkeeping of [`Driven::ended`].
    fn write_stalled(shard: &Shard, conn: &Rc<Conn<Self>>);
    /// The shard's table of these connections.
    fn conns(shard: &Shard) -> &RefCell<HashMap<ConnId, Rc<Conn<Self>>>>;
    /// The message that hands the connection to another shard.
    fn adopt_msg(h: Handoff<Self>) -> ShardMsg;
}

/// Readers call this before each read: waits while the shard's outbox is over its limit
/// or the shard is paused ([`super::outbox::Outbox::wait_for_room`]), and counts the
/// wait in `reads_paused_ms{proto}`.
async fn wait_for_room(shard: &Shard, proto: &'static str) {
    let paused = shard
        .outbox
        .wait_for_room(|| shard.shutting_down.get())
        .await;
    if let Some(t) = paused {
        let ms = t.elapsed().as_millis() as u64;
        super::metrics(|m| m.count("reads_paused_ms", &[("proto", proto)], ms));
    }
}

pub(super) fn spawn_conn<P: Driven>(shard: &Shard, conn: Rc<Conn<P>>) {
    let span = conn.span.clone();
    let c2 = Rc::clone(&conn);
    tokio_uring::spawn(writer(shard.rc(), c2).instrument(span.clone()));
    tokio_uring::spawn(reader(shard.rc(), conn).instrument(span));
}

/// The connection's one read loop.
async fn reader<P: Driven>(shard: Rc<Shard>, conn: Rc<Conn<P>>) {
    // Events carried over (adopted connections, outbound header already sent).
    if let After::HandOff(dst) = P::on_events(&shard, &conn, true) {
        return hand_off(shard, conn, dst).await;
    }
    conn.wake.notify_one();
    let mut buf = super::read_buffers::take(READ_BUF);
    let mut last_read: Option<Instant> = None;
    for _ in 0..u64::MAX {
        wait_for_room(&shard, P::PROTO).await;
        let (res, b) = conn.stream.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        super::count_bytes(P::PROTO, false, n as u64);
        {
            let mut st = conn.st.borrow_mut();
            if st.closed {
                break;
            }
            st.input(&buf[..n], now);
        }
        // Adapt the next read's buffer: grow while reads fill it; once a read leaves it
        // part empty (the socket is drained, the burst is over), give the grown buffer
        // back before waiting: the next read may be hours away, and a session that once
        // received a large stanza must not keep its buffers (benches/README.md,
        // `c2s_idle`: 330 KiB per session after one 60 KiB message, before this). The
        // buffers come from and go back to the shard's few spares (`read_buffers`), so
        // that a busy stream's bursts allocate nothing.
        let cap = buf.capacity();
        let grown = cap > READ_BUF;
        if n == cap && cap < READ_BUF_MAX {
            super::read_buffers::give(std::mem::replace(
                &mut buf,
                super::read_buffers::take(cap * 2),
            ));
        } else if n < cap && grown {
            super::read_buffers::give(std::mem::replace(
                &mut buf,
                super::read_buffers::take(READ_BUF),
            ));
        } else {
            buf.clear();
        }
        // After a short read, the protocol's buffers are given back: at once when reads
        // are sparse, by the writer after IDLE_TRIM of quiet on a busy stream (which
        // would otherwise allocate them again for every burst).
        if n < READ_BUF / 2 || (grown && n < cap) {
            let busy = last_read.is_some_and(|t| now.saturating_duration_since(t) < IDLE_TRIM);
            let mut st = conn.st.borrow_mut();
            if busy {
                st.trim_at = Some(now + IDLE_TRIM);
            } else {
                st.trim_at = None;
                st.proto.release_idle_memory();
            }
        }
        last_read = Some(now);
        let before = super::set_read_at(Some(now));
        let before_now = super::set_now(Some(now));
        let after = P::on_events(&shard, &conn, true);
        super::set_now(before_now);
        super::set_read_at(before);
        conn.st.borrow_mut().pump();
        conn.wake.notify_one();
        if let After::HandOff(dst) = after {
            return hand_off(shard, conn, dst).await;
        }
    }
    // The peer closed, the socket failed, or the writer shut it down.
    super::read_buffers::give(buf);
    let was_closed = {
        let mut st = conn.st.borrow_mut();
        let was = st.closed;
        st.closed = true;
        was
    };
    if !was_closed {
        P::ended(&shard, &conn, &CloseReason::PeerClosed);
    }
    conn.wake.notify_one();
    if !conn.writer_stopped.get() {
        conn.writer_done.notified().await;
    }
    P::conns(&shard).borrow_mut().remove(&conn.id);
    shard.conn_ended.notify_waiters();
}

/// The connection's writer: socket writes and deadlines.
async fn writer<P: Driven>(shard: Rc<Shard>, conn: Rc<Conn<P>>) {
    let mut spare: Vec<u8> = Vec::new();
    let mut last_write: Option<Instant> = None;
    // Read times of the stanzas in the write in flight.
    let mut marks: Vec<Instant> = Vec::new();
    loop {
        let (out, deadline, trim_at, stop) = {
            let mut st = conn.st.borrow_mut();
            st.seal();
            if st.wire.is_empty() {
                if st.handing_off {
                    break;
                }
                if st.closed {
                    (None, None, None, true)
                } else {
                    (None, st.next_deadline(), st.trim_at, false)
                }
            } else {
                let out = st.take_wire(std::mem::take(&mut spare));
                marks.append(&mut st.marks);
                (Some(out), None, None, false)
            }
        };
        if stop {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            break;
        }
        if let Some(out) = out {
            let (end, mut b) = write_out(&conn, out, P::write_stall_timeout(&shard)).await;
            match end {
                WriteEnd::Done => {}
                WriteEnd::Failed => {
                    let was_closed = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                    if !was_closed {
                        P::ended(&shard, &conn, &CloseReason::PeerClosed);
                    }
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    break;
                }
                WriteEnd::Stalled => {
                    // `write_out` marked the stream closed and shut the socket down.
                    P::write_stalled(&shard, &conn);
                    break;
                }
            }
            let written = b.len() as u64;
            super::count_bytes(P::PROTO, true, written);
            // One clock read for the whole write: its stanzas left together.
            let now = Instant::now();
            super::metrics(|m| {
                for t in marks.drain(..) {
                    m.observe(Latency::Routing, now.saturating_duration_since(t));
                }
            });
            b.clear();
            // Keep a small spare; on a busy stream a large one too, given back after
            // IDLE_TRIM of quiet (below), unless a rare large write made it huge.
            let busy = last_write.is_some_and(|t| now.saturating_duration_since(t) < IDLE_TRIM);
            last_write = Some(now);
            if b.capacity() <= SMALL_SPARE {
                spare = b;
            } else if busy && b.capacity() <= MAX_SPARE {
                spare = b;
                conn.st.borrow_mut().trim_at = Some(now + IDLE_TRIM);
            } else {
                // The protocol's transmit buffer grew for it too.
                conn.st.borrow_mut().proto.release_idle_memory();
            }
            P::written(&shard, &conn);
            continue;
        }
        let wake_at = match (deadline, trim_at) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        let sleep = async {
            match wake_at {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.wake.notified() => {}
            _ = sleep => {
                let now = Instant::now();
                {
                    // Quiet for IDLE_TRIM: an idle stream holds no buffer.
                    let mut st = conn.st.borrow_mut();
                    if st.trim_at.is_some_and(|t| now >= t) {
                        st.trim_at = None;
                        spare = Vec::new();
                        st.proto.release_idle_memory();
                    }
                }
                if deadline.is_some_and(|d| now >= d) {
                    {
                        let mut st = conn.st.borrow_mut();
                        st.proto.handle_timeout(now);
                        st.collect_events();
                    }
                    P::on_events(&shard, &conn, false);
                }
            }
        }
    }
    conn.writer_stopped.set(true);
    conn.writer_done.notify_waiters();
}

/// Writes `out` to the socket, one write at a time, while it accepts bytes: the
/// write-stall timer (`stall`, `s2s.write_stall_timeout` / `c2s.write_stall_timeout`)
/// restarts whenever the socket accepts some. When it fires, the stream is marked
/// closed and the socket shut down, which ends the write in flight (EPIPE) so that
/// nothing more of it reaches the peer later: the bytes the socket accepted before are
/// exactly those [`ConnState::accepted`] counted. Returns how it ended and the buffer.
async fn write_out<P: Driven>(
    conn: &Conn<P>,
    out: Vec<u8>,
    stall: Duration,
) -> (WriteEnd, Vec<u8>) {
    use tokio_uring::buf::BoundedBuf;
    let len = out.len();
    let mut buf = out;
    let mut off = 0;
    let mut deadline = Instant::now() + stall;
    conn.st.borrow_mut().write_waiting_since = Some(Instant::now());
    let end = 'write: {
        // Bounded: every pass but the last moves at least one byte.
        while off < len {
            let op = conn.stream.write(buf.slice(off..)).submit();
            tokio::pin!(op);
            let (res, slice) = tokio::select! {
                r = &mut op => r,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    conn.st.borrow_mut().closed = true;
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    // The shutdown completes the write with an error, or with what
                    // the socket took meanwhile; bounded in case it does not.
                    match tokio::time::timeout(Duration::from_secs(5), op).await {
                        Ok((Ok(n), slice)) => {
                            conn.st.borrow_mut().accepted(n);
                            buf = slice.into_inner();
                        }
                        Ok((Err(_), slice)) => buf = slice.into_inner(),
                        Err(_) => {
                            warn!("a write to a stalled stream did not end after its shutdown");
                            buf = Vec::new();
                        }
                    }
                    break 'write WriteEnd::Stalled;
                }
            };
            buf = slice.into_inner();
            match res {
                Ok(n) if n > 0 => {
                    off += n;
                    let now = Instant::now();
                    deadline = now + stall;
                    let mut st = conn.st.borrow_mut();
                    st.accepted(n);
                    st.write_waiting_since = Some(now);
                }
                _ => break 'write WriteEnd::Failed,
            }
        }
        WriteEnd::Done
    };
    conn.st.borrow_mut().write_waiting_since = None;
    (end, buf)
}

/// Moves an inbound connection to shard `dst` once the writer has flushed.
async fn hand_off<P: Driven>(shard: Rc<Shard>, conn: Rc<Conn<P>>, dst: usize) {
    conn.wake.notify_one();
    if !conn.writer_stopped.get() {
        conn.writer_done.notified().await;
    }
    P::conns(&shard).borrow_mut().remove(&conn.id);
    let fd = match conn.dup_fd() {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "hand-off failed; closing");
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    };
    let conn = match Rc::try_unwrap(conn) {
        Ok(c) => c,
        Err(c) => {
            warn!("connection still referenced at hand-off; closing");
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    };
    let mut state = conn.st.into_inner();
    state.handing_off = false;
    if std::mem::replace(&mut state.counted_unauth, false) {
        shard.s2s.release_unauthenticated();
    }
    drop(conn.stream);
    shard.send_to(dst, P::adopt_msg(Handoff { fd, state }));
    shard.conn_ended.notify_waiters();
}

/// First pause after a failed `accept`, doubled per failure in a row up to
/// [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between `accept`s while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one WARN per listener per this long while `accept` keeps failing.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// The `cause` label of `accept_errors` for an `accept` error: `fd_limit` when the
/// process or the system is out of file descriptors (`EMFILE`, `ENFILE`), else `other`.
fn accept_error_cause(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit",
        _ => "other",
    }
}

pub(super) async fn accept_loop(shard: Rc<Shard>, kind: ListenerKind, l: Rc<TcpListener>) {
    // While accepts fail (out of file descriptors, typically), back off and say so
    // once per ACCEPT_WARN_EVERY with the count, instead of a WARN every 50 ms.
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failed_since_warn: u64 = 0;
    let mut last_warn: Option<Instant> = None;
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                if shard.shutting_down.get() {
                    return;
                }
                let cause = accept_error_cause(&e);
                super::metrics(|m| m.count("accept_errors", &[("cause", cause)], 1));
                failed_since_warn += 1;
                let now = Instant::now();
                if last_warn.is_none_or(|t| now.duration_since(t) >= ACCEPT_WARN_EVERY) {
                    warn!(error = %e, cause, failures = failed_since_warn, retry_in = ?backoff, "accept failed");
                    failed_since_warn = 0;
                    last_warn = Some(now);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF_MIN;
        if shard.shutting_down.get() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = stream.set_nodelay(true);
        match kind {
            ListenerKind::C2s => shard.local.accept_c2s(&shard, stream, peer),
            ListenerKind::S2s | ListenerKind::S2sDirectTls => {
                if !shard.s2s.admit_unauthenticated(&shard) {
                    debug!(%peer, "too many unauthenticated connections; refusing");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let me = Rc::clone(&shard);
                let direct = kind == ListenerKind::S2sDirectTls;
                let span = info_span!(parent: &shard.span, "s2s", dir = "in", %peer, peer_domain = tracing::field::Empty, id = tracing::field::Empty);
                tokio_uring::spawn(super::s2s::inbound(me, stream, direct).instrument(span));
            }
        }
    }
}

/// Drives a TLS handshake to completion with sequential reads and writes (used before
/// any XMPP byte: XEP-0368 direct TLS).
pub(super) async fn tls_handshake<C, S>(stream: &TcpStream, tls: &mut C) -> Result<(), String>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let mut buf = Vec::with_capacity(READ_BUF);
    for _ in 0..64 {
        while tls.wants_write() {
            let mut out = Vec::new();
            tls.write_tls(&mut out).map_err(|e| e.to_string())?;
            let (res, _) = stream.write_all(out).await;
            res.map_err(|e| e.to_string())?;
        }
        if !tls.is_handshaking() {
            return Ok(());
        }
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the TLS handshake".into());
        }
        let mut rd = &buf[..n];
        // Bounded: every pass but the last consumes some of `rd`.
        for _ in 0..=n {
            if rd.is_empty() {
                break;
            }
            // 0: the peer's close_notify came (right after its Finished); rustls takes
            // nothing after it (this loop waited for it to be taken forever).
            if tls.read_tls(&mut rd).map_err(|e| e.to_string())? == 0 {
                break;
            }
            if let Err(e) = tls.process_new_packets() {
                let mut out = Vec::new();
                let _ = tls.write_tls(&mut out);
                let _ = stream.write_all(out).await;
                return Err(e.to_string());
            }
        }
        buf.clear();
    }
    Err("TLS handshake did not finish".into())
}
