//! [`ConnState`]'s TLS paths over real rustls in memory (no socket): TLS plaintext fed
//! straight into the protocol's receive buffer gives the same stream however the records
//! are split, limits included; a transmit buffer of any size is encrypted whole.

use std::io::{BufRead as _, Write as _};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::UnixTime;

use super::{encrypt_into, ConnState, Tls};
use crate::dialback::{DialbackResult, DialbackSecret};
use crate::stream::s2s::S2sConnection;
use crate::stream::{FederationPolicy, PeerPolicy, S2sConfig, Timeouts};
use crate::tls::{self, ClientAuth, DomainCertResolver};
use crate::xml::Limits;

/// Bound on the records exchanged for one handshake.
const HANDSHAKE_FLIGHTS: usize = 16;

/// Moves every TLS record each side has ready to the other.
fn exchange(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    let mut buf = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut buf).expect("client records");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        server.read_tls(&mut rd).expect("server reads records");
        server
            .process_new_packets()
            .expect("server processes records");
    }
    buf.clear();
    while server.wants_write() {
        server.write_tls(&mut buf).expect("server records");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        client.read_tls(&mut rd).expect("client reads records");
        client
            .process_new_packets()
            .expect("client processes records");
    }
}

/// A client and a server connection, handshake done (`a.test`'s self-signed certificate,
/// not verified: the WebEx-style profile).
fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    tls::install_default_provider();
    let cert = tls::self_signed("a.test").expect("self-signed certificate");
    let mut resolver = DomainCertResolver::new();
    resolver.add(&cert).expect("a.test certificate");
    let server_cfg = tls::server_config(Arc::new(resolver), ClientAuth::Request, &[]);
    let client_cfg = tls::client_config(None, false, None, &[]).expect("client configuration");
    let name = "a.test".try_into().expect("server name");
    let mut client = rustls::ClientConnection::new(client_cfg, name).expect("client");
    let mut server = rustls::ServerConnection::new(server_cfg).expect("server");
    for _ in 0..HANDSHAKE_FLIGHTS {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        exchange(&mut client, &mut server);
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    // The server's session tickets (TLS 1.3) reach the client before anything else.
    exchange(&mut client, &mut server);
    (client, server)
}

/// Decrypts `records` at `client` and returns the plaintext, a record at a time
/// (rustls's receive buffer is bounded).
fn decrypt(client: &mut rustls::ClientConnection, records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rd = records;
    // Bounded: every pass consumes some of `rd`.
    for _ in 0..=records.len() {
        if rd.is_empty() {
            break;
        }
        client.read_tls(&mut rd).expect("client reads records");
        client.process_new_packets().expect("client decrypts");
        let mut reader = client.reader();
        while let Ok(chunk) = reader.fill_buf() {
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            out.extend_from_slice(chunk);
            reader.consume(n);
        }
    }
    out
}

fn config(limits: Limits) -> Arc<S2sConfig> {
    Arc::new(S2sConfig {
        local_domains: vec!["a.test".to_owned()],
        certificate_domains: Vec::new(),
        policy: FederationPolicy {
            default: PeerPolicy::google(),
            ..Default::default()
        },
        dialback_secret: DialbackSecret::new("a.test's dialback secret"),
        stream_id_key: [3; 32],
        cert_verifier: None,
        limits,
        timeouts: Timeouts::default(),
        stream_management: None,
    })
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='b.test' to='a.test' version='1.0'>";

/// An inbound XEP-0368 direct TLS stream from `b.test`'s client side: `parts` are
/// written as separate TLS records, and those records reach the [`ConnState`] in pieces
/// of `chunk` bytes. Returns what the stream sent back (decrypted) and its events.
fn run(parts: &[&[u8]], chunk: usize, limits: Limits) -> (String, Vec<String>) {
    let (mut client, server) = tls_pair();
    let now = Instant::now();
    let proto = S2sConnection::inbound(config(limits), 1, Some((Vec::new(), UnixTime::now())), now);
    let mut st = ConnState::new(proto, Some(Tls::Server(server)));
    let mut records = Vec::new();
    for p in parts {
        client.writer().write_all(p).expect("client plaintext");
        while client.wants_write() {
            client.write_tls(&mut records).expect("client records");
        }
    }
    for piece in records.chunks(chunk) {
        st.input(piece, now);
        st.seal();
    }
    let wire = std::mem::take(&mut st.wire);
    let sent = String::from_utf8(decrypt(&mut client, &wire)).expect("UTF-8");
    let events = st.events.iter().map(|e| format!("{e:?}")).collect();
    (sent, events)
}

/// Runs `parts` at every chunk size of `chunks` and checks that the stream answered the
/// same each time; returns that answer.
fn same_however_split(parts: &[&[u8]], limits: Limits) -> (String, Vec<String>) {
    let whole = run(parts, usize::MAX, limits);
    for chunk in [1, 7, 100, 1500, 16 * 1024 + 5] {
        assert_eq!(
            run(parts, chunk, limits),
            whole,
            "records fed {chunk} bytes at a time"
        );
    }
    whole
}

#[test]
fn tls_plaintext_gives_the_same_stream_however_its_records_are_split() {
    let (sent, events) = same_however_split(
        &[
            HEADER.as_bytes(),
            b"<db:result from='b.test' ",
            b"to='a.test'>0123456789abcdef</db:result>",
        ],
        Limits::default(),
    );
    assert!(sent.contains("<stream:features"), "sent: {sent}");
    assert!(
        events.iter().any(|e| e.contains("VerifyNeeded")),
        "events: {events:?}"
    );
}

#[test]
fn a_tls_stanza_over_the_size_limit_closes_the_stream_however_split() {
    let limits = Limits {
        max_element_size: 2_000,
        ..Limits::default()
    };
    let big = format!(
        "<message from='u@b.test' to='v@a.test'><body>{}</body></message>",
        "x".repeat(5_000)
    );
    let (sent, _) = same_however_split(&[HEADER.as_bytes(), big.as_bytes()], limits);
    assert!(sent.contains("<policy-violation"), "sent: {sent}");
}

#[test]
fn a_transmit_buffer_larger_than_rustls_limit_is_encrypted_whole() {
    // 300 KiB: more than rustls keeps of records not yet taken (64 KiB).
    let plain: Vec<u8> = (0..300 * 1024).map(|i| b'a' + (i % 26) as u8).collect();

    // Written at once, rustls takes only what fits and the rest is lost.
    let (_, mut server) = tls_pair();
    assert!(server.writer().write_all(&plain).is_err());

    let (mut client, server) = tls_pair();
    let mut tls = Tls::Server(server);
    let mut wire = Vec::new();
    encrypt_into(tls.conn(), &plain, &mut wire);
    assert_eq!(decrypt(&mut client, &wire), plain);
}

#[test]
fn bytes_after_the_peers_close_notify_are_dropped() {
    let (mut client, server) = tls_pair();
    let now = Instant::now();
    let proto = S2sConnection::inbound(
        config(Limits::default()),
        1,
        Some((Vec::new(), UnixTime::now())),
        now,
    );
    let mut st = ConnState::new(proto, Some(Tls::Server(server)));
    let mut records = Vec::new();
    client
        .writer()
        .write_all(HEADER.as_bytes())
        .expect("client plaintext");
    client.send_close_notify();
    while client.wants_write() {
        client.write_tls(&mut records).expect("client records");
    }
    // Then the start of a record rustls will never take (it reads 4 KiB at a time, so
    // this arrives after it has seen the close_notify).
    records.extend_from_slice(&[23, 3, 3, 0x40, 0]);
    records.extend(std::iter::repeat_n(0u8, 16 * 1024));
    st.input(&records, now);
    st.seal();
    let sent = String::from_utf8(decrypt(&mut client, &st.wire)).expect("UTF-8");
    assert!(sent.contains("<stream:features"), "sent: {sent}");
}

// ----- cost of the TLS paths (measurements, not run by default) -----

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`, nanoseconds).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Stanzas per measured round, and rounds (the median round is reported).
const COST_STANZAS: usize = 20_000;
const COST_ROUNDS: usize = 15;

fn message(i: usize) -> String {
    format!(
        "<message from='u@b.test' to='nobody@a.test' type='chat' id='m{i}'>\
         <body>Hello, this is message number {i} of the cost run.</body></message>"
    )
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// What [`ConnState::input`] costs per stanza on an authenticated inbound TLS stream:
/// records of 100 stanzas each written together (as a busy peer sends them), fed in
/// 64 KiB pieces (as a busy socket's reads give them), decrypted and framed into stanza
/// events. Prints nanoseconds of thread CPU per stanza (median of the rounds).
#[test]
#[ignore = "a measurement: cargo test --release --lib tls_input_cost -- --ignored --nocapture"]
fn tls_input_cost() {
    let (mut client, server) = tls_pair();
    let now = Instant::now();
    let proto = S2sConnection::inbound(
        config(Limits::default()),
        1,
        Some((Vec::new(), UnixTime::now())),
        now,
    );
    let mut st = ConnState::new(proto, Some(Tls::Server(server)));
    let mut records = Vec::new();
    let send = |client: &mut rustls::ClientConnection, text: &[u8], records: &mut Vec<u8>| {
        client.writer().write_all(text).expect("client plaintext");
        while client.wants_write() {
            client.write_tls(records).expect("client records");
        }
    };
    send(
        &mut client,
        format!("{HEADER}<db:result from='b.test' to='a.test'>0123456789abcdef</db:result>")
            .as_bytes(),
        &mut records,
    );
    st.input(&records, now);
    st.proto
        .handle_dialback_verdict("a.test", "b.test", DialbackResult::Valid, now);
    st.collect_events();
    st.events.clear();
    st.seal();
    st.wire.clear();
    let mut per = Vec::new();
    let mut id = 0;
    for _ in 0..COST_ROUNDS {
        records.clear();
        for _ in 0..COST_STANZAS / 100 {
            let batch: String = (id..id + 100).map(message).collect();
            id += 100;
            send(&mut client, batch.as_bytes(), &mut records);
        }
        let t0 = thread_cpu_ns();
        for piece in records.chunks(64 * 1024) {
            st.input(piece, now);
            st.events.clear();
        }
        per.push(thread_cpu_ns() - t0);
        st.seal();
        st.wire.clear();
        assert!(!st.proto.is_closed(), "the stream closed: {:?}", st.events);
    }
    let ns = median(per) as f64 / COST_STANZAS as f64;
    println!("TLS input: {ns:.1} ns of CPU per stanza (median of {COST_ROUNDS} rounds of {COST_STANZAS})");
}

/// An outbound S2S stream `a.test` → `b.test` over TLS (the state is the TLS client),
/// authenticated by dialback against a scripted peer; and the peer's TLS side, which
/// decrypts what the state writes.
fn authenticated_tls_outbound() -> (ConnState, rustls::ServerConnection) {
    let (client, mut server) = tls_pair();
    let now = Instant::now();
    let proto = S2sConnection::outbound(config(Limits::default()), "a.test", "b.test", true, now);
    let mut st = ConnState::new(proto, Some(Tls::Client(client)));
    // What the stream writes goes to the peer, as writes would (TLS 1.3 record nonces
    // count records: the peer must see every one).
    let deliver = |st: &mut ConnState, server: &mut rustls::ServerConnection| {
        st.seal();
        let wire = st.take_wire(Vec::new());
        let mut rd = &wire[..];
        for _ in 0..=wire.len() {
            if rd.is_empty() {
                break;
            }
            server.read_tls(&mut rd).expect("peer takes the records");
            server.process_new_packets().expect("peer decrypts");
        }
        let mut discard = Vec::new();
        let _ = std::io::Read::read_to_end(&mut server.reader(), &mut discard);
        st.accepted(wire.len());
    };
    let send = |server: &mut rustls::ServerConnection, text: &str| {
        let mut records = Vec::new();
        server
            .writer()
            .write_all(text.as_bytes())
            .expect("server plaintext");
        while server.wants_write() {
            server.write_tls(&mut records).expect("server records");
        }
        records
    };
    deliver(&mut st, &mut server);
    let records = send(
        &mut server,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='b.test' to='a.test' id='s1' version='1.0'><stream:features>\
         <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
    );
    st.input(&records, now);
    deliver(&mut st, &mut server);
    let records = send(
        &mut server,
        "<db:result from='b.test' to='a.test' type='valid'/>",
    );
    st.input(&records, now);
    deliver(&mut st, &mut server);
    assert!(
        st.proto.is_authenticated("a.test", "b.test"),
        "the outbound stream did not authenticate: {:?}",
        st.events
    );
    st.events.clear();
    (st, server)
}

/// Stanzas queued one by one on a TLS stream are sealed into records of up to 16 KiB by
/// the writer ([`ConnState::seal`]); a stanza counts as written (leaves `unsent`) exactly
/// when the socket has accepted the end of the record holding its last byte, never
/// before (a write stall would otherwise lose it) and not later (it would be sent twice,
/// as stanzas/bounces of `tests/stalled_peer.rs` showed when every stanza of a seal got
/// the end of the whole batch).
#[test]
fn a_sealed_stanza_is_written_with_its_record() {
    let (mut st, mut server) = authenticated_tls_outbound();
    let now = Instant::now();
    // 60 stanzas of about 1.1 KiB: four records of 16 KiB and a last, shorter one.
    let mut plain_ends = Vec::new();
    let mut plain = 0usize;
    let mut sent = String::new();
    for i in 0..60 {
        let text = format!(
            "<message from='a.test' to='u@b.test' id='m{i}'><body>{}</body></message>",
            "x".repeat(1024)
        );
        st.proto
            .send_stanza("a.test", "b.test", text.as_bytes(), now)
            .expect("the stream takes the stanza");
        st.pump();
        assert!(
            st.wire.is_empty(),
            "TLS plaintext is sealed by the writer only"
        );
        let el = crate::xml::parse_stanza(text.as_bytes()).expect("a stanza");
        st.track(super::Queued::Whole(el, None));
        plain = st.proto.pending_transmit();
        plain_ends.push(plain);
        sent.push_str(&text);
    }
    st.seal();
    let wire = st.take_wire(Vec::new());
    // The records: (end in the stream, plaintext bytes through it). TLS 1.3 adds a
    // content-type byte and a 16-byte tag to each record's plaintext.
    let mut records = Vec::new();
    let (mut at, mut through) = (0usize, 0usize);
    for _ in 0..wire.len() {
        if at == wire.len() {
            break;
        }
        let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
        at += 5 + len;
        through += len - 17;
        records.push((at, through));
    }
    assert_eq!(at, wire.len(), "the wire is whole records");
    assert!(records.len() >= 5, "{} records", records.len());
    assert_eq!(through, plain, "the records carry every stanza byte once");
    // The socket accepts the wire in steps ending one byte before, at, and one byte after
    // each record's end: the stanzas released are those whose last byte is in a record
    // wholly accepted.
    let start = st.written;
    let mut accepted = 0usize;
    for &(end, _) in &records {
        for cut in [end - 1, end, (end + 1).min(wire.len())] {
            if cut <= accepted {
                continue;
            }
            st.accepted(cut - accepted);
            accepted = cut;
            let whole = records
                .iter()
                .take_while(|(e, _)| *e <= cut)
                .last()
                .map_or(0, |(_, t)| *t);
            let released = plain_ends.iter().filter(|&&p| p <= whole).count();
            assert_eq!(
                60 - st.unsent.len(),
                released,
                "after {cut} of {} bytes (from offset {start})",
                wire.len()
            );
        }
    }
    assert!(st.unsent.is_empty());
    // And the peer reads exactly the stanzas, in order.
    let got = decrypt_all(&mut server, &wire);
    assert_eq!(got, sent);
}

/// Decrypts `records` with the peer's side of an established session.
fn decrypt_all(server: &mut rustls::ServerConnection, mut records: &[u8]) -> String {
    let mut out = Vec::new();
    for _ in 0..=records.len() {
        if records.is_empty() {
            break;
        }
        server
            .read_tls(&mut records)
            .expect("peer takes the records");
        server.process_new_packets().expect("peer decrypts");
        let _ = std::io::Read::read_to_end(&mut server.reader(), &mut out);
    }
    String::from_utf8(out).expect("UTF-8")
}

/// What queueing a stanza and [`ConnState::pump`] cost on an authenticated outbound TLS
/// stream, one stanza at a time as the router queues them, sealed into records
/// ([`ConnState::seal`]) and the wire taken every 64 stanzas as the writer would. Prints nanoseconds of thread CPU
/// per stanza (median of the rounds).
#[test]
#[ignore = "a measurement: cargo test --release --lib tls_output_cost -- --ignored --nocapture"]
fn tls_output_cost() {
    let (mut st, _server) = authenticated_tls_outbound();
    let now = Instant::now();
    let stanzas: Vec<String> = (0..COST_STANZAS).map(message).collect();
    let mut per = Vec::new();
    for _ in 0..COST_ROUNDS {
        let t0 = thread_cpu_ns();
        for (i, s) in stanzas.iter().enumerate() {
            st.proto
                .send_stanza("a.test", "b.test", s.as_bytes(), now)
                .expect("the stream takes the stanza");
            st.pump();
            if i % 64 == 63 {
                st.seal();
                st.wire.clear();
            }
        }
        per.push(thread_cpu_ns() - t0);
        st.wire.clear();
    }
    let ns = median(per) as f64 / COST_STANZAS as f64;
    println!("TLS output: {ns:.1} ns of CPU per stanza (median of {COST_ROUNDS} rounds of {COST_STANZAS})");
}
