//! Characterises what tokio-uring 0.5 does with a read that is cancelled by dropping its
//! future, on this kernel, and checks the pattern fedrouter uses instead.
//!
//! # What happens (asserted by `dropped_read_swallows_the_next_bytes`)
//!
//! A `tokio_uring::net::TcpStream::read` submits an `IORING_OP_READ` whose buffer the
//! kernel owns until the completion. Dropping the future (here: `tokio::time::timeout`
//! firing after 50 ms while nothing has arrived) does **not** cancel the operation:
//! tokio-uring 0.5 only marks it "ignored" and keeps the buffer alive until the
//! completion comes (`Driver::remove_op`: `Lifecycle::Ignored`; no `IORING_OP_ASYNC_CANCEL`
//! is submitted). The read stays armed in the kernel, so the next bytes the peer sends
//! ("hello") complete that orphaned read, land in a buffer nobody will look at, and are
//! freed with it. A new read on the same stream never sees them: it gets the bytes sent
//! after ("world"). The loss is silent; no error is reported anywhere. Observed on every
//! run (the test was run repeatedly; it is deterministic, because the orphaned read is
//! armed before the peer writes).
//!
//! So a read must never be raced against anything in a `select!` or under a timeout.
//! fedrouter gives each connection one long-lived read loop task that owns the only read
//! in flight; timeouts, shutdown and hand-off act on the socket from other tasks
//! (`shutdown`, which makes the pending read return), never by dropping a read future.
//!
//! # The pattern (asserted by `shutdown_ends_the_read_loop_without_losing_bytes`)
//!
//! One read loop task holds the stream (`Rc`, tasks are thread-local) and reads until
//! `Ok(0)` or an error; another task calls `stream.shutdown(Shutdown::Both)`. The pending
//! read completes promptly with `Ok(0)`, and every byte the peer sent before the shutdown
//! has been returned by the loop.
//!
//! The peer side is plain `std::net` on a thread, on 127.0.0.1 with an ephemeral port.
//! Every wait is bounded by [`LIMIT`], which only catches a hang; nothing is asserted about
//! how fast anything happens.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_uring::net::TcpStream;

/// Bound on every wait in these tests (a hang catcher, not a speed requirement).
const LIMIT: Duration = Duration::from_secs(60);

/// What the peer thread is told to do.
enum Cmd {
    /// Write these bytes, then acknowledge.
    Write(&'static [u8]),
    /// Read until end of stream, acknowledge, and exit.
    ReadToEnd,
}

/// A `std::net` peer on a thread: accepts one connection on `listener`, then runs the
/// commands in order, acknowledging each on `acks` once done (writes are in the kernel's
/// socket buffers by then; on loopback they are in our receive queue).
fn peer(listener: TcpListener, cmds: mpsc::Receiver<Cmd>, acks: UnboundedSender<()>) {
    let (mut s, _) = listener.accept().expect("accept");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_nodelay(true).unwrap();
    for cmd in cmds {
        match cmd {
            Cmd::Write(b) => s.write_all(b).expect("peer write"),
            Cmd::ReadToEnd => {
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).expect("peer read to end");
                let _ = acks.send(());
                return;
            }
        }
        if acks.send(()).is_err() {
            return;
        }
    }
}

/// Sends `cmd` to the peer and waits (bounded) for its acknowledgement.
async fn tell(cmds: &mpsc::Sender<Cmd>, acks: &mut UnboundedReceiver<()>, cmd: Cmd) {
    cmds.send(cmd).expect("peer gone");
    tokio::time::timeout(LIMIT, acks.recv())
        .await
        .expect("peer did not acknowledge in time")
        .expect("peer gone");
}

/// Starts the peer thread and connects to it; returns the stream and the peer's handles.
async fn connected() -> (
    TcpStream,
    mpsc::Sender<Cmd>,
    UnboundedReceiver<()>,
    std::thread::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let (ack_tx, ack_rx) = unbounded_channel();
    let t = std::thread::spawn(move || peer(listener, cmd_rx, ack_tx));
    let stream = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    (stream, cmd_tx, ack_rx, t)
}

/// A read dropped while in flight swallows the next bytes the peer sends: a later read
/// on the same stream gets only what comes after them. (See the module docs.)
#[test]
fn dropped_read_swallows_the_next_bytes() {
    tokio_uring::start(async {
        let (stream, cmds, mut acks, peer) = connected().await;
        let stream = Rc::new(stream);

        // 1. A read raced against a 50 ms timer: nothing is sent, so the timer wins
        //    however slow the machine, and the read future is dropped while the
        //    operation is in flight.
        let raced = tokio::time::timeout(Duration::from_millis(50), stream.read(vec![0u8; 64]));
        assert!(
            raced.await.is_err(),
            "nothing was sent, the read cannot have completed"
        );

        // 2. The peer writes "hello".
        tell(&cmds, &mut acks, Cmd::Write(b"hello")).await;

        // 3. A new read on the same stream, in its own task so that it is never dropped.
        let reader = Rc::clone(&stream);
        let second = tokio_uring::spawn(async move {
            let (res, buf) = reader.read(vec![0u8; 64]).await;
            let n = res.expect("second read");
            buf[..n].to_vec()
        });
        // 4. The peer writes "world", the marker: TCP delivers it after "hello", so had
        //    the new read been given "hello", that (or "helloworld") is what it returns.
        //    It returns "world": the dropped read's buffer took "hello", which is lost.
        tell(&cmds, &mut acks, Cmd::Write(b"world")).await;
        let got = tokio::time::timeout(LIMIT, second)
            .await
            .expect("second read never completed")
            .expect("read task");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "world",
            "expected only the bytes after the swallowed \"hello\": the dropped read did not \
             swallow it"
        );

        stream.shutdown(Shutdown::Both).unwrap();
        drop(cmds);
        peer.join().unwrap();
    });
}

/// The pattern fedrouter uses: one long-lived read loop per connection; another task
/// shuts the socket down, which ends the pending read promptly with `Ok(0)`, and nothing
/// the peer sent before the shutdown is lost.
#[test]
fn shutdown_ends_the_read_loop_without_losing_bytes() {
    tokio_uring::start(async {
        let (stream, cmds, mut acks, peer) = connected().await;
        let stream = Rc::new(stream);

        // The read loop: the only reader, never cancelled. Forwards each chunk; returns
        // how the loop ended.
        let (chunk_tx, mut chunks) = unbounded_channel::<Vec<u8>>();
        let reader = Rc::clone(&stream);
        let read_loop = tokio_uring::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (res, b) = reader.read(buf).await;
                buf = b;
                match res {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        let _ = chunk_tx.send(buf[..n].to_vec());
                    }
                    Err(e) => return Err(e),
                }
            }
        });

        // The loop sees "hello"; its next read is now pending with nothing to read.
        tell(&cmds, &mut acks, Cmd::Write(b"hello")).await;
        let first = tokio::time::timeout(LIMIT, chunks.recv())
            .await
            .expect("read loop did not deliver \"hello\"")
            .unwrap();
        assert_eq!(first, b"hello");

        // The peer sends more, and right after it is in our receive queue another task
        // shuts the socket down, racing the loop's pending read.
        tell(&cmds, &mut acks, Cmd::Write(b" world, before the shutdown")).await;
        let closer = Rc::clone(&stream);
        tokio_uring::spawn(async move { closer.shutdown(Shutdown::Both) })
            .await
            .unwrap()
            .expect("shutdown");

        let ended = tokio::time::timeout(LIMIT, read_loop)
            .await
            .expect("pending read not ended by shutdown")
            .expect("read task");
        // Ended by the shutdown: the peer has not closed its side (it waits for our
        // next command), so nothing else could have ended the pending read.
        assert!(
            ended.is_ok(),
            "read loop ended with {ended:?}, expected Ok(0)"
        );

        let mut got = first;
        while let Ok(c) = chunks.try_recv() {
            got.extend_from_slice(&c);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "hello world, before the shutdown",
            "bytes sent before the shutdown were lost"
        );

        // The peer sees the end of the stream (our FIN).
        tell(&cmds, &mut acks, Cmd::ReadToEnd).await;
        drop(cmds);
        peer.join().unwrap();
    });
}
