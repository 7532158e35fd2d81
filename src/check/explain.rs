//! `check`: turning what a peer did into a sentence and a fix.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::condition::StreamCondition;
use crate::config::Config;
use crate::dns::DnsError;
use crate::stream::CloseReason;
use crate::xml::tree::Node;
use crate::xml::{ns, StreamHeader};

use super::*;

pub(super) fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn dns_fix(e: &DnsError, config: &Config) -> String {
    let servers = if config.dns.nameservers.is_empty() {
        "the name servers of /etc/resolv.conf".to_owned()
    } else {
        format!("[dns] nameservers ({})", join(&config.dns.nameservers))
    };
    match e {
        DnsError::Timeout { .. } => format!(
            "no answer from {servers} within the timeout: check that they are reachable \
             (UDP and TCP port 53) and answer"
        ),
        _ => format!("{servers} answered with an error: check them, and the domain's zone"),
    }
}

/// Explains why a stream closed: what, and the fix when the condition says it.
/// `opening`: before the peer's features, i.e. a stream error then refuses our stream
/// (RFC 6120 §4.9.1.2).
pub(super) fn close_explained(
    reason: &CloseReason,
    domain: &str,
    local: &str,
    side: Side,
    opening: bool,
) -> (String, Option<String>) {
    use StreamCondition as C;
    match reason {
        CloseReason::ReceivedError(cond, text) => {
            let what = format!(
                "the peer {} with <{cond}/>{}",
                if opening {
                    "refused our stream"
                } else {
                    "closed the stream"
                },
                text.as_deref()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            );
            let fix = match (cond, side) {
                (C::HostUnknown, Side::Remote) => Some(format!(
                    "the server there does not host {domain}: {domain}'s SRV record points at \
                     the wrong server, or its configuration lacks the domain"
                )),
                (C::HostUnknown, Side::Own) => Some(format!(
                    "the server there does not host {domain}: add it to `domains`, or point \
                     the SRV record at the server that does"
                )),
                (C::PolicyViolation, _) => Some(format!(
                    "the server's policy refuses this stream (TLS required, or {local} not \
                     allowed): see its log or ask its administrators"
                )),
                (C::RemoteConnectionFailed, _) => Some(format!(
                    "it could not connect back to {local}'s authoritative server: check \
                     {local}'s SRV/A records and that its S2S port is reachable"
                )),
                (C::SeeOtherHost, _) => Some(
                    "the server redirects elsewhere (see-other-host): update the SRV record"
                        .to_owned(),
                ),
                // RFC 6120 §4.9.3.12: it will not authenticate us. Prosody with
                // s2s_secure_auth, for one, says so when it does not trust our certificate
                // and accepts no dialback without one.
                (C::NotAuthorized, Side::Remote)
                    if text
                        .as_deref()
                        .is_some_and(|t| t.to_ascii_lowercase().contains("certificate")) =>
                {
                    Some(format!(
                        "{domain} requires a certificate it trusts from {local} and accepts no \
                         dialback without one: configure [[tls.certificate]] for {local} with \
                         a certificate from a public CA whose subjectAltName lists {local}, \
                         served with its intermediates"
                    ))
                }
                // The peer said why; DNS or reachability advice would be a guess.
                (_, Side::Remote) => Some(format!(
                    "{domain} ended the stream with <{cond}/> for the reason it gives: its \
                     administrators (or its logs) can say more"
                )),
                _ => None,
            };
            (what, fix)
        }
        CloseReason::SentError(cond, text) => {
            let fix = match cond {
                C::ConnectionTimeout => Some(format!(
                    "the peer did not answer in time (s2s.negotiation_timeout): is the port \
                     right for {domain} (STARTTLS on _xmpp-server, direct TLS on \
                     _xmpps-server)? Its logs may say more"
                )),
                C::PolicyViolation => Some(format!(
                    "this configuration's [federation] policy for {domain} and what it offers \
                     disagree: adjust tls/auth for it"
                )),
                _ => None,
            };
            (
                format!("fedrouter closed the stream with <{cond}/>: {text}"),
                fix,
            )
        }
        CloseReason::PeerClosed => ("the peer closed the stream without an error".into(), None),
        CloseReason::TlsFailed(r) => (format!("TLS failed: {r}"), None),
        CloseReason::CloseTimeout => ("the stream close timed out".into(), None),
        CloseReason::Local => ("the stream was closed".into(), None),
    }
}

/// `from='b.test' id='…' version='1.0'; features: starttls, dialback`.
pub(super) fn stream_detail(header: Option<&StreamHeader>, features: &Node) -> String {
    let mut d = String::from("header");
    if let Some(h) = header {
        if let Some(f) = &h.from {
            let _ = write!(d, " from='{f}'");
        }
        if let Some(id) = &h.id {
            let _ = write!(d, " id='{id}'");
        }
        match &h.version {
            Some(v) => {
                let _ = write!(d, " version='{v}'");
            }
            None => d.push_str(" (no version: pre-RFC 3920 server)"),
        }
        if h.declares_dialback() {
            d.push_str(" xmlns:db");
        }
    }
    let _ = write!(d, "; features: {}", features_summary(features));
    d
}

/// The stream features, briefly: `starttls (required), sasl EXTERNAL, dialback`.
pub(super) fn features_summary(features: &Node) -> String {
    let list: Vec<String> = features
        .children
        .iter()
        .map(|c| match (c.name.as_str(), c.ns.as_str()) {
            ("starttls", ns::TLS) => {
                if c.children.iter().any(|r| r.name == "required") {
                    "starttls (required)".to_owned()
                } else {
                    "starttls".to_owned()
                }
            }
            ("mechanisms", ns::SASL) => {
                let mechs: Vec<&str> = c
                    .children
                    .iter()
                    .filter(|m| m.name == "mechanism")
                    .map(|m| m.text.trim())
                    .collect();
                format!("sasl {}", mechs.join(" "))
            }
            ("dialback", ns::DIALBACK_FEATURE) => "dialback".to_owned(),
            (name, _) => name.to_owned(),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}
