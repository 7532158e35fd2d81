//! The NATS test harness (`common/nats.rs`) against the real server (`.ci/setup-nats`),
//! spoken to over a raw `TcpStream` in the NATS client protocol (text, CRLF-terminated):
//!
//! - the server greets with `INFO {json}` naming its port; `CONNECT {"verbose":false}` +
//!   `PING` gets `PONG`; `SUB` then `PUB` to ourselves comes back as `MSG` with the
//!   payload;
//! - the pid file holds the pid the harness reports, the log has the ready line;
//! - SIGKILL (`kill`): the open connection sees EOF, the port refuses; `restart` brings
//!   the server back on the SAME port and the exchange works again; `stop` (SIGTERM)
//!   ends it, and a second `stop` is a no-op;
//! - a missing binary fails naming `.ci/setup-nats`; a server that cannot start (its port
//!   taken while it was down) fails with its log.
//!
//! Loopback 127.0.183.x only. Every read waits on the socket with a timeout; no sleeps.

#[path = "common/nats.rs"]
mod nats;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use nats::NatsServer;

/// Longest wait for any one line from the server.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw NATS protocol connection.
struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawClient {
    /// Connects and reads the server's `INFO` line; returns the client and the INFO JSON.
    fn connect(server: &NatsServer) -> (RawClient, serde_json::Value) {
        let stream = TcpStream::connect_timeout(&server.addr(), READ_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "connect to {}: {e}; log:\n{}",
                server.addr(),
                server.log_tail()
            )
        });
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut c = RawClient {
            reader: BufReader::new(stream),
            writer,
        };
        let info = c.line();
        let json = info
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("first line is not INFO: {info:?}"));
        let info: serde_json::Value = serde_json::from_str(json).expect("INFO carries JSON");
        (c, info)
    }

    fn send(&mut self, s: &str) {
        self.writer
            .write_all(s.as_bytes())
            .expect("write to nats-server");
    }

    /// One CRLF-terminated line, without the CRLF. Panics on EOF or after READ_TIMEOUT.
    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self
            .reader
            .read_line(&mut l)
            .unwrap_or_else(|e| panic!("read a line from nats-server: {e}"));
        assert!(n > 0, "nats-server closed the connection");
        assert!(l.ends_with("\r\n"), "line without CRLF: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    /// The next line that is not a server `PING` (answered with `PONG`).
    fn next(&mut self) -> String {
        // Bounded: the server pings at most every ping_interval (minutes).
        for _ in 0..8 {
            let l = self.line();
            if l == "PING" {
                self.send("PONG\r\n");
                continue;
            }
            return l;
        }
        panic!("only PINGs from nats-server");
    }

    /// Reads until EOF (or an error such as a reset): the server went away.
    fn expect_eof(&mut self) {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + READ_TIMEOUT;
        // Bounded in count (each read returns data, EOF or an error) and time.
        for _ in 0..1000 {
            match self.reader.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) if Instant::now() < deadline => continue,
                Ok(_) => break,
            }
        }
        panic!("the connection stayed open after the server was killed");
    }
}

/// CONNECT + PING/PONG, then SUB/PUB to ourselves and the MSG back.
fn round_trip(server: &NatsServer, subject: &str, payload: &str) {
    let (mut c, info) = RawClient::connect(server);
    assert_eq!(
        info["port"].as_u64(),
        Some(u64::from(server.addr().port())),
        "INFO names the port: {info}"
    );
    assert!(
        info["server_id"].is_string(),
        "INFO has a server_id: {info}"
    );
    c.send("CONNECT {\"verbose\":false,\"pedantic\":true,\"name\":\"nats_harness\"}\r\nPING\r\n");
    assert_eq!(c.next(), "PONG");
    c.send(&format!("SUB {subject} 7\r\n"));
    c.send(&format!(
        "PUB {subject} {}\r\n{payload}\r\nPING\r\n",
        payload.len()
    ));
    assert_eq!(
        c.next(),
        format!("MSG {subject} 7 {}", payload.len()),
        "the message comes back to its subscriber"
    );
    assert_eq!(c.next(), payload);
    assert_eq!(c.next(), "PONG", "nothing else arrived before the PONG");
}

#[test]
fn starts_answers_and_restarts_on_the_same_port() {
    let mut server = NatsServer::start(Ipv4Addr::new(127, 0, 183, 201));
    let addr = server.addr();
    assert_eq!(addr.ip().to_string(), "127.0.183.201");
    assert_ne!(addr.port(), 0);
    assert_eq!(
        server.url(),
        format!("nats://127.0.183.201:{}", addr.port())
    );
    let pid = server.pid().expect("running");
    let pid_file = std::fs::read_to_string(server.pid_file()).expect("the pid file");
    assert_eq!(
        pid_file.trim(),
        pid.to_string(),
        "pid file = the harness's pid"
    );
    assert!(server.log().contains("Server is ready"), "{}", server.log());

    round_trip(&server, "fedrouter.test.one", "hello");

    // Killed (SIGKILL): an open connection ends, nothing listens on the port.
    let (mut open, _) = RawClient::connect(&server);
    server.kill();
    assert_eq!(server.pid(), None);
    open.expect_eof();
    let refused = TcpStream::connect_timeout(&addr, READ_TIMEOUT);
    assert!(refused.is_err(), "nothing listens on {addr} after kill");

    // Started again on the same port: a new process, the same exchange.
    server.restart();
    assert_eq!(server.addr(), addr, "restart keeps the address and port");
    let pid2 = server.pid().expect("running again");
    assert_ne!(pid2, pid);
    round_trip(&server, "fedrouter.test.two", "again, after a restart");

    // Graceful stop, twice (the second is a no-op), then restart again.
    server.stop();
    assert_eq!(server.pid(), None);
    server.stop();
    assert!(
        TcpStream::connect_timeout(&addr, READ_TIMEOUT).is_err(),
        "nothing listens on {addr} after stop"
    );
    server.restart();
    round_trip(&server, "fedrouter.test.three", "x");
}

#[test]
fn two_servers_on_two_addresses_are_independent() {
    let a = NatsServer::start(Ipv4Addr::new(127, 0, 183, 202));
    let mut b = NatsServer::start(Ipv4Addr::new(127, 0, 183, 203));
    assert_ne!(a.url(), b.url());
    b.kill();
    round_trip(&a, "fedrouter.test.a", "a still runs");
    drop(a);
    b.restart();
    round_trip(&b, "fedrouter.test.b", "b back");
}

#[test]
#[should_panic(expected = "run .ci/setup-nats")]
fn a_missing_binary_names_the_setup_script() {
    NatsServer::start_binary(
        std::path::Path::new("/nonexistent/nats-server"),
        Ipv4Addr::new(127, 0, 183, 204),
    );
}

#[test]
fn a_server_that_cannot_start_fails_with_its_log() {
    let mut server = NatsServer::start(Ipv4Addr::new(127, 0, 183, 205));
    let addr = server.addr();
    server.kill();
    // Someone else takes the port while it is down.
    let _squatter = std::net::TcpListener::bind(addr).expect("bind the freed port");
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()));
    let msg = failed.expect_err("restart on a taken port must fail");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("127.0.183.205"), "names the address: {msg}");
    assert!(msg.contains("exited before it was ready"), "{msg}");
    assert!(
        msg.contains("address already in use"),
        "carries the log: {msg}"
    );
    assert_eq!(server.pid(), None);
}
