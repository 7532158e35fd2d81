//! Characterises what fedrouter's write-stall timeout relies on (`s2s.write_stall_timeout`,
//! `Shard::write_out` in `src/runtime/shard.rs`): with tokio-uring 0.5 on this kernel, a
//! write to a peer that stops reading stays in flight; `shutdown(Both)` on the socket
//! ends it at once (an error, or the count of bytes taken meanwhile), and afterwards the
//! peer receives **exactly** the bytes the completed writes reported as accepted, no more
//! (nothing of the ended write reaches it later) and no less (TCP delivers its send
//! buffer before the FIN). That is what lets the runtime tell, stanza by stanza, which
//! ones never left the process (bounced) and which ones the kernel had taken.
//!
//! The peer is plain `std::net` on a thread, on 127.0.0.1 with an ephemeral port: it
//! accepts, reads nothing until told, then reads to the end. Bounded: every wait has a
//! limit that only catches a hang.

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// Bound on every wait that must end (a hang catcher, not a speed requirement).
const LIMIT: Duration = Duration::from_secs(10);

/// How long a write may take no byte before the test treats the socket as stalled. Not a
/// speed requirement: a write taken for stalled too early (a slow machine) is ended by the
/// shutdown all the same, and what is asserted holds for it too. The timer is armed only
/// once a write has completed, so some bytes were accepted before.
const STALL: Duration = Duration::from_millis(200);

#[test]
fn shutdown_ends_a_stalled_write_and_the_peer_gets_exactly_what_was_accepted() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (got_tx, got_rx) = mpsc::channel::<usize>();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        // Stalled: read nothing until the client has given up.
        go_rx.recv_timeout(LIMIT * 3).expect("told to read");
        s.set_read_timeout(Some(LIMIT)).expect("timeout");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read to end");
        got_tx.send(all.len()).expect("report");
    });

    let accepted = tokio_uring::start(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        // Far more than the socket buffers hold on loopback.
        let total = 64 << 20;
        let mut buf = vec![b'x'; total];
        let mut off = 0usize;
        let mut accepted = 0usize;
        // Bounded: each pass moves at least one byte, or ends.
        while off < total {
            let op = stream.write(buf.slice(off..)).submit();
            tokio::pin!(op);
            tokio::select! {
                (res, slice) = &mut op => {
                    buf = slice.into_inner();
                    let n = res.expect("write before the stall");
                    assert!(n > 0, "a write completed with 0 bytes");
                    off += n;
                    accepted += n;
                }
                _ = tokio::time::sleep(STALL), if accepted > 0 => {
                    stream.shutdown(std::net::Shutdown::Both).expect("shutdown");
                    let (res, _) = tokio::time::timeout(LIMIT, op)
                        .await
                        .expect("the shutdown ended the write in flight");
                    if let Ok(n) = res {
                        accepted += n;
                    }
                    return (accepted, true);
                }
            }
        }
        (accepted, false)
    });
    let (accepted, stalled) = accepted;
    assert!(stalled, "the peer read nothing, yet 64 MiB were accepted");
    assert!(accepted > 0, "the socket buffers took nothing at all");
    go_tx.send(()).expect("peer alive");
    let got = got_rx.recv_timeout(LIMIT).expect("peer finished");
    peer.join().expect("peer thread");
    assert_eq!(
        got, accepted,
        "the peer must receive exactly the bytes the writes reported as accepted"
    );
}
