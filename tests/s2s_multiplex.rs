//! Outbound multiplexing by target (XEP-0220 §2.4) over real sockets: `a.test` sends to
//! `b1.test` and `b2.test`, whose SRV records name one target served by one peer process
//! (a second `fedrouter serve` hosting both, Google-Apps-style). Driven through the admin
//! endpoint's XEP-0199 ping and read back through `/status` and `/metrics`.
//!
//! Loopback ranges `127.20.1.0/24` to `127.20.3.0/24`, one per test: `.1:5300` DNS, `.2`
//! a.test, `.3` the peer (5269, 5270, admin 9269). Every wait is bounded (the harness's timeouts).

#[path = "common/server.rs"]
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fedrouter_testkit::zone::ZoneServer;
use server::{a, assert_pong, http_get, srv, Fedrouter, DNS_PORT, GOOGLE_STYLE};

/// `127.20.NET.HOST`: each test its own NET (nextest runs them at once).
fn addr(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 20, net, host)
}

/// One instance at `at` hosting `domains` (one shard, so that the domains a.test
/// multiplexes are all its shard's), resolving through our zone, Google-style policy
/// plus `extra`.
fn config(net: u8, at: Ipv4Addr, domains: &[&str], extra: &str) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"domains = [{domains}]
shards = 1

[listen]
s2s = ["{at}:5269"]
s2s_tls = ["{at}:5270"]
c2s = []
admin = "{at}:9269"

[dns]
nameservers = ["{dns}"]
timeout = "2s"

{GOOGLE_STYLE}
{extra}
"#,
        domains = domains.join(", "),
        dns = SocketAddr::new(addr(net, 1).into(), DNS_PORT),
    )
}

/// a.test at `.2`; b1.test and b2.test both at the target `xmpp.peer.test:5269` (`.3`).
fn zone(net: u8) -> ZoneServer {
    let records = vec![
        srv("_xmpp-server", "a.test", "xmpp.a.test", 5269),
        a("xmpp.a.test", addr(net, 2)),
        srv("_xmpp-server", "b1.test", "xmpp.peer.test", 5269),
        srv("_xmpp-server", "b2.test", "xmpp.peer.test", 5269),
        a("xmpp.peer.test", addr(net, 3)),
    ];
    ZoneServer::start(SocketAddr::new(addr(net, 1).into(), DNS_PORT), records)
        .expect("start the zone server")
}

/// `/status` of `srv`: every (domain, stream object).
fn streams(srv: &Fedrouter) -> Vec<(String, serde_json::Value)> {
    let (code, body) = http_get(srv.admin, "/status", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{}: GET /status: {e}", srv.name));
    assert_eq!(code, 200, "{}: /status: {body}", srv.name);
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    v.as_array()
        .expect("/status is an array of domains")
        .iter()
        .flat_map(|d| {
            let name = d["domain"].as_str().unwrap_or_default().to_owned();
            d["streams"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |s| (name.clone(), s))
        })
        .collect()
}

/// The outbound streams that authenticate (not verify-only ones) among `streams`: one
/// per TCP connection (a domain that rides on another's stream shows `via`, not a
/// stream).
fn outbound(streams: &[(String, serde_json::Value)]) -> Vec<&(String, serde_json::Value)> {
    streams
        .iter()
        .filter(|(_, s)| {
            s["direction"] == "out" && s["verify_only"] != true && s.get("via").is_none()
        })
        .collect()
}

#[test]
fn two_domains_behind_one_target_share_one_stream() {
    const NET: u8 = 1;
    let _dns = zone(NET);
    let a_srv = Fedrouter::start("a.test", &config(NET, addr(NET, 2), &["a.test"], ""));
    let peer = Fedrouter::start(
        "peer",
        &config(NET, addr(NET, 3), &["b1.test", "b2.test"], ""),
    );

    assert_pong(&a_srv.ping("b1.test"), "a → b1");
    assert_pong(&a_srv.ping("b2.test"), "a → b2 (multiplexed)");
    assert_pong(&a_srv.ping("b1.test"), "a → b1 again");

    let all = streams(&a_srv);
    let out = outbound(&all);
    assert_eq!(
        out.len(),
        1,
        "exactly one outbound stream to the target: {all:#?}"
    );
    let (domain, s) = out[0];
    assert_eq!(domain, "b1.test", "{s}");
    assert_eq!(
        s["domains"],
        serde_json::json!(["b1.test", "b2.test"]),
        "{s}"
    );
    assert_eq!(s["multiplexed"], true, "{s}");
    let mut remotes: Vec<&str> = s["authenticated"]
        .as_array()
        .expect("authenticated pairs")
        .iter()
        .map(|p| p["remote"].as_str().unwrap_or_default())
        .collect();
    remotes.sort();
    assert_eq!(remotes, ["b1.test", "b2.test"], "{s}");
    let b2: Vec<_> = all.iter().filter(|(d, _)| d == "b2.test").collect();
    assert_eq!(b2.len(), 1, "{all:#?}");
    assert_eq!(b2[0].1["state"], "multiplexed", "{all:#?}");
    assert_eq!(b2[0].1["via"], "b1.test", "{all:#?}");
    assert_eq!(
        a_srv.metric("fedrouter_s2s_multiplexed_domains_total", &[]),
        Some(1.0),
        "{}",
        a_srv.log()
    );
    drop(peer);
}

#[test]
fn a_second_domain_refused_by_the_peer_bounces_and_the_first_keeps_working() {
    const NET: u8 = 2;
    let _dns = zone(NET);
    let a_srv = Fedrouter::start("a.test", &config(NET, addr(NET, 2), &["a.test"], ""));
    // The peer does not host b2.test: it answers our db:result for it with
    // `item-not-found` (XEP-0220 §2.5).
    let peer = Fedrouter::start("peer", &config(NET, addr(NET, 3), &["b1.test"], ""));

    assert_pong(&a_srv.ping("b1.test"), "a → b1");
    let refused = a_srv.ping("b2.test");
    assert_eq!(refused["result"], "error", "a → b2 must bounce: {refused}");
    assert_eq!(refused["condition"], "remote-server-not-found", "{refused}");
    // The marker: the first domain still works on the same stream.
    assert_pong(&a_srv.ping("b1.test"), "a → b1 after the refusal");

    let all = streams(&a_srv);
    let out = outbound(&all);
    assert_eq!(out.len(), 1, "the shared stream stayed up: {all:#?}");
    let s = &out[0].1;
    assert_eq!(
        s["authenticated"],
        serde_json::json!([{"local": "a.test", "remote": "b1.test", "method": "dialback"}]),
        "{s}"
    );
    drop(peer);
}

#[test]
fn per_domain_switch_gives_the_domain_a_stream_of_its_own() {
    const NET: u8 = 3;
    let _dns = zone(NET);
    let extra = r#"
[federation.domains."b2.test"]
tls = "disabled"
auth = "dialback"
verify_certificates = false
multiplex = false
"#;
    let a_srv = Fedrouter::start("a.test", &config(NET, addr(NET, 2), &["a.test"], extra));
    let peer = Fedrouter::start(
        "peer",
        &config(NET, addr(NET, 3), &["b1.test", "b2.test"], ""),
    );
    assert_pong(&a_srv.ping("b1.test"), "a → b1");
    assert_pong(&a_srv.ping("b2.test"), "a → b2 (own stream)");
    let all = streams(&a_srv);
    let out = outbound(&all);
    assert_eq!(out.len(), 2, "one stream per domain: {all:#?}");
    assert!(
        out.iter().all(|(_, s)| s["multiplexed"] == false),
        "{all:#?}"
    );
    drop(peer);
}
