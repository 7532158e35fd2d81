//! Failures with the real peer: Prosody stopped mid-session (stanzas bounce with
//! `remote-server-not-found`, federation resumes when it is back), and Prosody refusing
//! our certificate (dialback fallback where policy allows it; a refusal, plainly logged,
//! counted and bounced where it does not).
//!
//! "Plainly" means a WARN line that says what happened in words, and a counter:
//! `fedrouter_auth_total{proto="s2s",method="sasl-external",result="not-offered"}` when
//! Prosody offers no SASL EXTERNAL after TLS (it did not accept our certificate; the WARN
//! also names the other possibility, a peer without EXTERNAL), and
//! `fedrouter_stream_errors_total{dir,condition}` when it closes the stream with a stream
//! error.

use std::time::{Duration, Instant};

use crate::lab::{Lab, LabOptions, Profile, CUPUSER, JDOE, OURS, THEIRS};
use crate::server::http_get;
use crate::xmpp::{attr, child_text, condition, is_stanza, jid_matches, Client};

/// The WARN line fedrouter writes when a peer offers no SASL EXTERNAL after TLS, up to
/// its ending (`falling back to dialback` / `policy forbids dialback`).
const NOT_OFFERED: &str = "peer did not offer SASL EXTERNAL after TLS: it does not accept our certificate for cupdomain.test, or it does not implement SASL EXTERNAL (XEP-0178); `fedrouter check gmail.test` tells which where it can; ";

/// `fedrouter_auth_total{proto="s2s",method="sasl-external",result="not-offered"}`.
fn not_offered_count(lab: &Lab) -> u64 {
    metric(
        lab,
        "fedrouter_auth_total",
        &[
            ("proto", "s2s"),
            ("method", "sasl-external"),
            ("result", "not-offered"),
        ],
    )
}

/// Waits (5 s at most) for a WARN line of fedrouter's with every one of `needles`.
fn expect_warn(lab: &Lab, needles: &[&str]) -> String {
    let mut all = vec![" WARN "];
    all.extend_from_slice(needles);
    lab.fedrouter
        .wait_log(&all, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("fedrouter: no WARN line with {needles:?}"))
}

/// Sum of the `/metrics` samples of `name` whose labels include every `k="v"` of `labels`.
pub fn metric(lab: &Lab, name: &str, labels: &[(&str, &str)]) -> u64 {
    let (status, body) = http_get(lab.fedrouter.admin, "/metrics", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn send_message(c: &mut Client, to: &str, id: &str, body: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}' id='{id}'><body>{body}</body></message>"
    ));
}

/// Waits for the message `id` at `to` (from `from`, with `body`); panics otherwise.
fn expect_message(to: &mut Client, from: &str, id: &str, body: &str) {
    let m = to.expect(&format!("message {id}"), |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
    });
    assert_ne!(attr(&m, "type").as_deref(), Some("error"), "{m}");
    assert!(
        attr(&m, "from").is_some_and(|f| jid_matches(&f, from)),
        "{id} not from {from}: {m}"
    );
    assert_eq!(child_text(&m, "body").as_deref(), Some(body), "{m}");
}

/// Waits for the bounce of message `id` back at its sender; returns its condition.
fn expect_bounce(from: &mut Client, id: &str) -> String {
    let e = from.expect_error("message", id);
    condition(&e).unwrap_or_else(|| panic!("bounce of {id} without a condition: {e}"))
}

/// Both users logged in and available; a message each way proves federation works.
fn logged_in(lab: &Lab) -> (Client, Client) {
    let mut cup = lab.login_cupuser();
    let mut jdoe = lab.login_jdoe();
    cup.send("<presence/>");
    jdoe.send("<presence/>");
    cup.sync();
    jdoe.sync();
    (cup, jdoe)
}

fn cup_jid() -> String {
    format!("{CUPUSER}@{OURS}")
}

fn jdoe_jid() -> String {
    format!("{JDOE}@{THEIRS}")
}

/// Prosody is stopped while both S2S streams are up: fedrouter sees them close, a message
/// for gmail.test then bounces to its sender with `remote-server-not-found` (RFC 6120
/// §8.3.3.15: the remote server cannot be reached), counted in `fedrouter_bounces_total`.
/// When Prosody is back, federation resumes both ways without touching fedrouter.
pub fn prosody_stopped_mid_session(k: u8) {
    let mut lab = Lab::start(
        k,
        Profile::Google,
        LabOptions {
            fedrouter_extra: "[s2s]\nbackoff_initial = \"100ms\"\nbackoff_max = \"400ms\"\n".into(),
            ..LabOptions::default()
        },
    );
    let (cup_bare, jdoe_bare) = (cup_jid(), jdoe_jid());
    let (mut cup, mut jdoe) = logged_in(&lab);
    send_message(&mut cup, &jdoe_bare, "before-1", "before the stop");
    expect_message(&mut jdoe, &cup_bare, "before-1", "before the stop");
    send_message(&mut jdoe, &cup_bare, "before-2", "before the stop, back");
    expect_message(&mut cup, &jdoe_bare, "before-2", "before the stop, back");

    // Stop Prosody; fedrouter must notice its outbound stream close (Prosody closes its
    // streams on SIGTERM) before the next stanza is sent, so that stanza takes the
    // reconnect path rather than racing the close.
    assert!(lab.prosody.stop(), "prosody did not stop on SIGTERM");
    let closed = lab.fedrouter.wait_log(
        &["dir=\"out\" peer=gmail.test", "stream closed"],
        Duration::from_secs(10),
    );
    assert!(
        closed.is_some(),
        "fedrouter did not log the close of its stream to gmail.test within 10 s"
    );
    jdoe.expect_closed();

    let bounces_before = metric(
        &lab,
        "fedrouter_bounces_total",
        &[("condition", "remote-server-not-found")],
    );
    send_message(&mut cup, &jdoe_bare, "during-1", "while prosody is down");
    let cond = expect_bounce(&mut cup, "during-1");
    assert_eq!(
        cond, "remote-server-not-found",
        "the bounce of a message for a stopped server"
    );
    let bounces_after = metric(
        &lab,
        "fedrouter_bounces_total",
        &[("condition", "remote-server-not-found")],
    );
    assert!(
        bounces_after > bounces_before,
        "fedrouter_bounces_total{{condition=\"remote-server-not-found\"}} did not grow: {bounces_before} -> {bounces_after}"
    );
    assert!(
        lab.fedrouter
            .wait_log(
                &["gmail.test", "remote server unreachable"],
                Duration::from_secs(5)
            )
            .is_some(),
        "fedrouter did not log that gmail.test is unreachable"
    );

    // Prosody comes back on the same data; jdoe logs in again.
    lab.prosody.restart();
    let mut jdoe = lab.login_jdoe();
    jdoe.send("<presence/>");
    jdoe.sync();

    // Federation resumes: fedrouter retries once its (short) backoff is over. Each try is
    // either delivered or bounced; at most 40 tries of at most 2 s, 30 s in all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut delivered = None;
    for i in 0..40 {
        if Instant::now() >= deadline {
            break;
        }
        let id = format!("after-{i}");
        send_message(&mut cup, &jdoe_bare, &id, "prosody is back");
        let got = jdoe.try_recv(
            |x| is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id.as_str()),
            Duration::from_secs(2),
        );
        if let Some(m) = got {
            delivered = Some(m);
            break;
        }
        // Not delivered: it must have bounced (nothing is dropped silently).
        let bounce = cup.try_recv(
            |x| {
                is_stanza(x, "message")
                    && attr(x, "id").as_deref() == Some(id.as_str())
                    && attr(x, "type").as_deref() == Some("error")
            },
            Duration::from_secs(2),
        );
        assert!(
            bounce.is_some(),
            "message {id} was neither delivered to jdoe1 nor bounced to cupuser1"
        );
    }
    let m = delivered.expect("federation did not resume within 30 s of Prosody's restart");
    assert_eq!(
        child_text(&m, "body").as_deref(),
        Some("prosody is back"),
        "{m}"
    );
    // And the other way: Prosody opens a new stream to us.
    send_message(&mut jdoe, &cup_bare, "after-back", "hello again");
    expect_message(&mut cup, &jdoe_bare, "after-back", "hello again");
    cup.close();
    jdoe.close();
}

/// The lab for the certificate tests: fedrouter's certificate comes from a CA Prosody does
/// not trust; Prosody requires TLS, trusts only the test CA (so its own certificate
/// verifies at fedrouter) and has `s2s_secure_auth = secure_auth`; fedrouter requires TLS,
/// verifies certificates and authenticates with `auth` (`any` or `sasl-external`).
fn certificate_rejected_lab(k: u8, auth: &str, secure_auth: bool) -> Lab {
    Lab::start(
        k,
        Profile::Strict,
        LabOptions {
            fedrouter_foreign_cert: true,
            fedrouter_policy: Some(format!(
                "[federation.default]\ntls = \"required\"\nauth = \"{auth}\"\nverify_certificates = true\n"
            )),
            prosody_secure_auth: Some(secure_auth),
            ..LabOptions::default()
        },
    )
}

/// Prosody refuses our certificate (unknown issuer): after TLS it offers no SASL
/// EXTERNAL. Policy `auth = "any"` lets fedrouter fall back to dialback on the same
/// encrypted stream: messages flow, and fedrouter's log and `fedrouter_auth_total` say
/// dialback authenticated our outbound stream, not SASL EXTERNAL; fedrouter says at WARN
/// that Prosody did not accept our certificate and that it falls back to dialback, and
/// counts it (`result="not-offered"`, once: one outbound stream); Prosody's log says our
/// certificate did not verify. No stream error was received.
pub fn certificate_rejected_dialback_fallback(k: u8) {
    let lab = certificate_rejected_lab(k, "any", false);
    let (cup_bare, jdoe_bare) = (cup_jid(), jdoe_jid());
    let (mut cup, mut jdoe) = logged_in(&lab);
    send_message(&mut cup, &jdoe_bare, "fallback-1", "over dialback");
    expect_message(&mut jdoe, &cup_bare, "fallback-1", "over dialback");
    send_message(&mut jdoe, &cup_bare, "fallback-2", "and back");
    expect_message(&mut cup, &jdoe_bare, "fallback-2", "and back");

    assert!(
        lab.prosody
            .wait_log(
                &["s2sin", "certificate chain validation result: invalid"],
                Duration::from_secs(5)
            )
            .is_some(),
        "prosody did not reject our certificate"
    );
    let out = lab.fedrouter.log_lines(&[
        "dir=\"out\"",
        "authenticated local=cupdomain.test remote=gmail.test",
    ]);
    assert!(
        !out.is_empty(),
        "fedrouter: outbound stream not authenticated"
    );
    assert!(
        out.iter().all(|l| l.contains("method=Dialback")),
        "fedrouter: outbound stream not authenticated by dialback: {out:#?}"
    );
    let dialback_ok = metric(
        &lab,
        "fedrouter_auth_total",
        &[("proto", "s2s"), ("method", "dialback"), ("result", "ok")],
    );
    assert!(
        dialback_ok >= 1,
        "fedrouter_auth_total: no s2s dialback success"
    );
    let warn = expect_warn(
        &lab,
        &[
            "dir=\"out\"",
            "remote=gmail.test",
            &format!("{NOT_OFFERED}falling back to dialback"),
        ],
    );
    assert!(
        !warn.contains("policy forbids dialback"),
        "fedrouter: {warn}"
    );
    assert_eq!(
        not_offered_count(&lab),
        1,
        "fedrouter_auth_total{{method=\"sasl-external\",result=\"not-offered\"}}: one outbound stream to gmail.test"
    );
    assert_eq!(
        metric(&lab, "fedrouter_stream_errors_total", &[]),
        0,
        "fedrouter_stream_errors_total: Prosody sent no stream error here"
    );
    cup.close();
    jdoe.close();
}

/// A message for gmail.test bounces to cupuser1 with `remote-server-not-found`, counted in
/// `fedrouter_bounces_total`, and never reaches jdoe1; for each entry of `why`,
/// fedrouter's log has a line with every one of its strings.
fn assert_refused(lab: &Lab, why: &[&[&str]]) {
    let jdoe_bare = jdoe_jid();
    let (mut cup, mut jdoe) = logged_in(lab);
    send_message(&mut cup, &jdoe_bare, "refused-1", "should bounce");
    let cond = expect_bounce(&mut cup, "refused-1");
    assert_eq!(cond, "remote-server-not-found", "the bounce of refused-1");
    jdoe.assert_none("a message that should have bounced", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some("refused-1")
    });
    for line in why {
        assert!(
            lab.fedrouter
                .wait_log(line, Duration::from_secs(5))
                .is_some(),
            "fedrouter did not log why the stream to gmail.test failed (a line with {line:?})"
        );
    }
    let bounced = metric(
        lab,
        "fedrouter_bounces_total",
        &[("condition", "remote-server-not-found")],
    );
    assert!(
        bounced >= 1,
        "fedrouter_bounces_total did not count the bounce"
    );
    cup.close();
    jdoe.close();
}

/// Prosody refuses our certificate and forbids dialback for it (`s2s_secure_auth`): right
/// after TLS it closes the stream with `not-authorized` ("Your server's certificate is not
/// trusted"), although our policy (`auth = "any"`) would fall back. fedrouter says at WARN
/// that the peer closed our outbound stream with that stream error (condition and text),
/// counts it in `fedrouter_stream_errors_total{dir="out",condition="not-authorized"}`,
/// and bounces the message. Prosody closes before its post-TLS features, so nothing is
/// counted as "EXTERNAL not offered".
pub fn certificate_rejected_peer_forbids_dialback(k: u8) {
    let lab = certificate_rejected_lab(k, "any", true);
    assert_refused(
        &lab,
        &[&[
            " WARN ",
            "the peer closed the stream with a stream error",
            "direction=\"out\"",
            "remote=gmail.test",
            "condition=not-authorized",
            "Your server's certificate is not trusted",
        ]],
    );
    let errors = metric(
        &lab,
        "fedrouter_stream_errors_total",
        &[("dir", "out"), ("condition", "not-authorized")],
    );
    assert!(
        errors >= 1,
        "fedrouter_stream_errors_total{{dir=\"out\",condition=\"not-authorized\"}} = {errors}"
    );
    assert_eq!(
        metric(&lab, "fedrouter_stream_errors_total", &[("dir", "out")]),
        errors,
        "fedrouter_stream_errors_total: an outbound stream error other than not-authorized"
    );
    assert_eq!(
        not_offered_count(&lab),
        0,
        "Prosody closed the stream before offering features: nothing was 'not offered'"
    );
    assert!(
        lab.prosody
            .wait_log(
                &["Forbidding insecure connection to/from cupdomain.test"],
                Duration::from_secs(5)
            )
            .is_some(),
        "prosody did not say why it refused us"
    );
}

/// Prosody refuses our certificate but would accept dialback; our policy allows only SASL
/// EXTERNAL (`auth = "sasl-external"`): fedrouter does not fall back, says at WARN that
/// Prosody did not accept our certificate and that policy forbids dialback, counts it
/// (`result="not-offered"`, once), logs that no allowed authentication method is
/// available, and bounces the message.
pub fn certificate_rejected_policy_forbids_dialback(k: u8) {
    let lab = certificate_rejected_lab(k, "sasl-external", false);
    let forbids = format!("{NOT_OFFERED}policy forbids dialback");
    assert_refused(
        &lab,
        &[
            &[
                " WARN ",
                "dir=\"out\"",
                "remote=gmail.test",
                forbids.as_str(),
            ],
            &[
                "gmail.test",
                "no authentication method allowed by policy is available",
            ],
        ],
    );
    assert_eq!(
        not_offered_count(&lab),
        1,
        "fedrouter_auth_total{{method=\"sasl-external\",result=\"not-offered\"}}: one outbound stream to gmail.test"
    );
    assert!(
        lab.fedrouter
            .log_lines(&["falling back to dialback"])
            .is_empty(),
        "fedrouter claims a dialback fallback its policy forbids"
    );
}
