//! Opening an outbound S2S stream: DNS SRV (RFC 6120 §3.2, XEP-0368), each target's
//! addresses in turn with the connect timeout, direct TLS where the target asks for it,
//! then the stream handed to the shard's I/O loops (`io.rs`) and the domain's state
//! (`remote.rs`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio_uring::net::TcpStream;
use tracing::{debug, info};

use super::conn::{Conn, ConnState, Tls};
use super::shard::Shard;
use crate::condition::StanzaCondition;
use crate::dns::DnsError;
use crate::metrics::Latency;
use crate::router::queue::{BounceCause, Failure};
use crate::srv::{Resolution, Target};
use crate::stream::s2s::S2sConnection;

/// What an outbound connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// The domain's outbound stream: authenticates us and carries our stanzas (and
    /// `db:verify`s).
    Stream,
    /// A verify-only stream (XEP-0220 §2.1.3): our `db:verify`s and nothing else
    /// ([`S2sConnection::verify_only`]); `remote.rs` keeps it apart from the domain's
    /// stream.
    VerifyOnly,
}

/// Resolves `d`, connects to its targets in order and starts the outbound stream (for
/// `purpose`).
pub(super) async fn connect(shard: Rc<Shard>, d: String, local: String, purpose: Purpose) {
    let started = Instant::now();
    // Declared before the stream is registered: dropped (waiters go on) after it.
    let mut dialing = DialGuard {
        shard: Rc::clone(&shard),
        key: None,
    };
    let opened = match resolve(&shard, &d).await {
        Ok(targets) => {
            // XEP-0220 §2.4: a target this shard already has an authenticated stream to
            // carries `d` too, where policy and certificate allow (`remote/multiplex.rs`).
            if purpose == Purpose::Stream && !shard.shutting_down.get() {
                if shard.remotes.join_target(&d, &local, &targets)
                    || shard.remotes.wait_for_dial(&d, &local, &targets)
                {
                    return;
                }
                dialing.key = shard.remotes.begin_dial(&targets);
            }
            dial(&shard, &local, &d, targets).await
        }
        Err(f) => Err(f),
    };
    if shard.shutting_down.get() {
        // The shutdown began while connecting: the stream would outlive the drain.
        if let Ok((stream, _, _)) = &opened {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if purpose == Purpose::VerifyOnly {
            return shard
                .remotes
                .verifier_failed(&shard, &d, Failure::shutdown());
        }
        return shard.remotes.refuse_during_shutdown(&shard, &d);
    }
    if purpose == Purpose::VerifyOnly {
        return match opened {
            Ok((stream, target, tls)) => {
                debug!(target = %target.host, port = target.port, ms = started.elapsed().as_millis() as u64, "connected (verify-only)");
                let proto = S2sConnection::verify_only(
                    Arc::clone(&shard.shared().s2s),
                    &local,
                    &d,
                    tls.is_some(),
                    Instant::now(),
                );
                let conn = start(&shard, stream, proto, tls);
                shard.remotes.verifier_connected(&d, &conn);
                super::io::spawn_conn(&shard, conn);
            }
            Err(f) => {
                info!(condition = %f.condition, reason = %f.text, "remote server unreachable for dialback verification");
                shard.remotes.verifier_failed(&shard, &d, f);
            }
        };
    }
    match opened {
        Ok((stream, target, tls)) => {
            debug!(target = %target.host, port = target.port, ms = started.elapsed().as_millis() as u64, "connected");
            let now = Instant::now();
            let proto = S2sConnection::outbound(
                Arc::clone(&shard.shared().s2s),
                &local,
                &d,
                tls.is_some(),
                now,
            );
            let mut st = ConnState::new(proto, tls);
            st.collect_events();
            st.pump();
            let conn = Rc::new(Conn::new(
                shard.next_conn_id(),
                stream,
                st,
                tracing::Span::current(),
            ));
            let others = shard.remotes.connected(&d, &local, &conn);
            shard.remotes.register_target(&target, &conn);
            {
                let mut st = conn.st.borrow_mut();
                for l in &others {
                    let _ = st.proto.request_dialback(l, now);
                }
            }
            shard.remotes.send_pending_verifies(&d);
            shard
                .s2s
                .conns
                .borrow_mut()
                .insert(conn.id, Rc::clone(&conn));
            super::io::spawn_conn(&shard, conn);
        }
        Err(f) => {
            info!(condition = %f.condition, reason = %f.text, "remote server unreachable");
            shard
                .remotes
                .remote_failed(&shard, &d, f, BounceCause::Unreachable);
        }
    }
}

/// This shard dials a target for a domain's stream: when the attempt is over (at the
/// end of [`connect`], after the stream is registered), the domains that waited for it
/// go on ([`super::remote::Remotes::end_dial`]).
struct DialGuard {
    shard: Rc<Shard>,
    key: Option<super::remote::TargetKey>,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shard.remotes.end_dial(&self.shard, &key);
        }
    }
}

/// The shard's connection for a new outbound stream `proto` on `stream`, registered with
/// the shard's S2S streams (not yet spawned).
fn start(shard: &Shard, stream: TcpStream, proto: S2sConnection, tls: Option<Tls>) -> Rc<Conn> {
    let mut st = ConnState::new(proto, tls);
    st.collect_events();
    st.pump();
    let conn = Rc::new(Conn::new(
        shard.next_conn_id(),
        stream,
        st,
        tracing::Span::current(),
    ));
    shard
        .s2s
        .conns
        .borrow_mut()
        .insert(conn.id, Rc::clone(&conn));
    conn
}

/// A `remote-server-not-found` failure saying `text`.
fn not_found(text: String) -> Failure {
    Failure {
        condition: StanzaCondition::RemoteServerNotFound,
        text,
    }
}

/// The failure for a DNS error: `remote-server-timeout` when it timed out, else
/// `remote-server-not-found`.
fn dns_failure(e: DnsError) -> Failure {
    Failure {
        condition: if e.is_timeout() {
            StanzaCondition::RemoteServerTimeout
        } else {
            StanzaCondition::RemoteServerNotFound
        },
        text: format!("DNS: {e}"),
    }
}

/// DNS SRV (RFC 6120 §3.2, XEP-0368): `d`'s targets in the order to try them (the
/// domain itself on 5269 when it publishes no SRV record).
async fn resolve(shard: &Shard, d: &str) -> Result<Vec<Target>, Failure> {
    let resolver = shard.resolver();
    let resolution = {
        let mut rng = SmallRng::from_rng(&mut *shard.rng.borrow_mut());
        let t0 = Instant::now();
        let r = resolver.resolve_srv(d, &mut rng).await;
        super::metrics(|m| m.observe(Latency::Dns, t0.elapsed()));
        r
    };
    Ok(match resolution.map_err(dns_failure)? {
        Resolution::Targets(t) => t,
        Resolution::Fallback => vec![Target {
            host: d.to_owned(),
            port: 5269,
            direct_tls: false,
        }],
        Resolution::NoService => {
            return Err(not_found(format!(
                "{d} publishes no XMPP server service (SRV '.')"
            )))
        }
    })
}

/// Each of `targets`' addresses in turn with the connect timeout; direct TLS targets get
/// their TLS handshake here.
async fn dial(
    shard: &Shard,
    local: &str,
    d: &str,
    targets: Vec<Target>,
) -> Result<(TcpStream, Target, Option<Tls>), Failure> {
    let connect_timeout = shard.shared().config.s2s.connect_timeout;
    let resolver = shard.resolver();
    let mut last = not_found(format!("no address for {d}"));
    for target in targets.into_iter().take(16) {
        let addrs = match resolver.resolve_host(&target.host).await {
            Ok(a) => a,
            Err(e) => {
                last = dns_failure(e);
                continue;
            }
        };
        for ip in addrs.into_iter().take(8) {
            let addr = SocketAddr::new(ip, target.port);
            // A connect that times out is abandoned with its socket: nothing else
            // reads from it, so the dropped operation loses nothing.
            let t0 = Instant::now();
            let attempt = tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await;
            let stream = match attempt {
                Ok(Ok(s)) => {
                    super::metrics(|m| m.observe(Latency::Connect, t0.elapsed()));
                    s
                }
                Ok(Err(e)) => {
                    last = not_found(format!("connecting to {addr}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = Failure {
                        condition: StanzaCondition::RemoteServerTimeout,
                        text: format!("connecting to {addr} timed out"),
                    };
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if !target.direct_tls {
                return Ok((stream, target, None));
            }
            match client_handshake(shard, &stream, local, d).await {
                Ok(tls) => return Ok((stream, target, Some(tls))),
                Err(text) => {
                    last = not_found(format!("direct TLS to {addr}: {text}"));
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }
    Err(last)
}

/// A XEP-0368 direct TLS handshake as client, before any XMPP byte. Bounded by the
/// negotiation timeout; on failure the socket is abandoned (so a read dropped by the
/// timeout loses nothing we need).
async fn client_handshake(
    shard: &Shard,
    stream: &TcpStream,
    local: &str,
    d: &str,
) -> Result<Tls, String> {
    let cfg = shard
        .shared()
        .client_tls(local, d, true)
        .ok_or("no trust anchors to verify the server's certificate (tls.trust)")?;
    let name = crate::tls::server_name(d).map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let fut = super::io::tls_handshake(stream, &mut tls);
    let limit = shard.shared().config.s2s.negotiation_timeout;
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(())) => Ok(Tls::Client(tls)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("handshake timed out".into()),
    }
}
