//! Unit tests of `check`.

use std::time::UNIX_EPOCH;

use fedrouter_testkit::TestCa;

use super::*;

#[test]
fn not_after_of_generated_certificates() {
    let ca = TestCa::new("ca").unwrap();
    let leaf = ca.issue("a.test").unwrap();
    // LeafOptions::default: valid until 2100-01-01.
    let t = not_after(&leaf.chain[0]).unwrap();
    assert_eq!(rfc3339(t), "2100-01-01T00:00:00Z");
    let expired = ca.issue_expired("a.test").unwrap();
    assert_eq!(
        rfc3339(not_after(&expired.chain[0]).unwrap()),
        "2001-01-01T00:00:00Z"
    );
    assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    assert_eq!(not_after(&[0x30, 0x00]), None);
    assert_eq!(not_after(b"garbage"), None);
}

#[test]
fn dates_format() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    assert_eq!(rfc3339(2_524_607_999), "2049-12-31T23:59:59Z");
}

#[test]
fn facts_and_expiry_window() {
    let ca = TestCa::new("ca").unwrap();
    let leaf = ca.issue("a.test").unwrap();
    let f = CertFacts::of(&leaf.chain[0], "a.test");
    assert!(f.covers && !f.self_signed);
    assert_eq!(f.names, ["a.test"]);
    assert!(!CertFacts::of(&leaf.chain[0], "b.test").covers);
    let ss = tls::self_signed("a.test").unwrap();
    assert!(CertFacts::of(&ss.chain()[0], "a.test").self_signed);
    let end = UNIX_EPOCH + Duration::from_secs(f.not_after.unwrap());
    let month = Duration::from_secs(30 * 86_400);
    assert_eq!(f.expires_within(end - month * 2, month), None);
    assert_eq!(
        f.expires_within(end - Duration::from_secs(10 * 86_400 + 5), month),
        Some(10)
    );
    assert_eq!(f.expires_within(end + month, month), Some(0));
    assert!(f
        .expiry_text(end + month)
        .starts_with("expired on 2100-01-01"));
}

#[test]
fn verify_answers_are_recorded() {
    let seen = verify_answers(
        b"<db:result from='a' to='b' type='valid'/><db:verify from='a.test' to='b.test' \
          id='x' type='valid'/><db:verify from='a.test' to='c.test' id='y' type='invalid'/>",
    );
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (
            seen[0].asked_by.as_str(),
            seen[0].about.as_str(),
            seen[0].answer.as_str()
        ),
        ("b.test", "a.test", "valid")
    );
    assert_eq!(seen[1].answer, "invalid");
}

#[test]
fn report_json_and_text() {
    let mut r = Report::default();
    r.steps.push(
        Step::new("b.test", steps::SRV, Verdict::Pass, "targets").took(Duration::from_micros(1234)),
    );
    assert!(r.ok());
    r.steps.push(
        Step::new("b.test", steps::TCP, Verdict::Fail, "refused")
            .at("127.0.0.1:5999")
            .fix("open port 5999"),
    );
    assert!(!r.ok());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["steps"][0]["verdict"], "pass");
    assert_eq!(v["steps"][0]["millis"], 1.2);
    assert_eq!(v["steps"][1]["fix"], "open port 5999");
    assert_eq!(v["steps"][1]["target"], "127.0.0.1:5999");
    let text = r.text();
    assert!(text.contains("FAIL  tcp"), "{text}");
    assert!(text.contains("fix: open port 5999"), "{text}");
    assert!(
        text.contains("1 passed, 0 warned, 1 failed, 0 skipped"),
        "{text}"
    );
    assert_eq!(r.failures().count(), 1);
    assert_eq!(r.find("b.test", steps::TCP).count(), 1);
}
