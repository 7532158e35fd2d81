//! First-attempt S2S authentication failures, by cause.
//!
//! A peer whose dialback fails (XEP-0220 §2.1.1, `db:result type='invalid'` or
//! `type='error'`) tries again after a pause, so the run loses nothing; a real server may
//! not retry for minutes. [`FirstFailures`] counts the failures of a domain's first attempt
//! (not those of its retries) and says why each happened, for the summary table and
//! `summary.json` (`params.auth_first_failures`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use fedrouter::dialback::DialbackResult;

/// Why a dialback request failed, as the requesting peer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The SUT answered `type='invalid'` (XEP-0220 §2.1.2).
    Invalid,
    /// The SUT answered `type='error'` with this condition (XEP-0220 §2.5), e.g.
    /// `remote-server-timeout` when it could not verify the key in time.
    Error(fedrouter::dialback::DialbackErrorCondition),
    /// The stream to the SUT ended before any answer (XEP-0220 §2.1.1: a dialback error).
    StreamEnded,
    /// No answer within the peer's own negotiation timeout.
    NoAnswer,
}

impl Cause {
    /// The cause of a failed dialback request: `result` as the peer's stream core reported
    /// it, whether that stream was `closed` by then, and how long the request `waited`
    /// against the peer's negotiation timeout `limit` (the core reports both an ended
    /// stream and its own timeout as `Error(remote-server-timeout)`).
    pub fn of(result: DialbackResult, closed: bool, waited: Duration, limit: Duration) -> Cause {
        if closed {
            Cause::StreamEnded
        } else if waited >= limit {
            Cause::NoAnswer
        } else {
            match result {
                DialbackResult::Error(c) => Cause::Error(c),
                // `Valid` is not a failure; counted with `invalid` if it ever comes here.
                DialbackResult::Invalid | DialbackResult::Valid => Cause::Invalid,
            }
        }
    }

    /// Its key in the report: `invalid`, `error:<condition>` (answered by the SUT),
    /// `stream-ended` or `no-answer`.
    pub fn key(self) -> String {
        match self {
            Cause::Invalid => "invalid".to_owned(),
            Cause::Error(c) => format!("error:{}", c.as_str()),
            Cause::StreamEnded => "stream-ended".to_owned(),
            Cause::NoAnswer => "no-answer".to_owned(),
        }
    }
}

/// Failed first attempts at authenticating a peer domain's stream to the SUT, by cause
/// ([`Cause::key`]). A split run adds its children's ([`FirstFailures::merge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FirstFailures {
    /// All of them.
    pub total: u64,
    /// Per cause.
    pub by_cause: BTreeMap<String, u64>,
}

impl FirstFailures {
    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &FirstFailures) {
        self.total += other.total;
        for (k, n) in &other.by_cause {
            *self.by_cause.entry(k.clone()).or_default() += n;
        }
    }

    /// One line for the summary: `0`, or `3 (error:remote-server-timeout 2, stream-ended 1)`.
    pub fn line(&self) -> String {
        if self.total == 0 {
            return "0".to_owned();
        }
        let causes: Vec<String> = self
            .by_cause
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!("{} ({})", self.total, causes.join(", "))
    }
}

/// The counter the peers share.
#[derive(Debug, Default)]
pub struct FirstFailureCounter(Mutex<FirstFailures>);

impl FirstFailureCounter {
    /// Counts one failed first attempt with `cause`.
    pub fn count(&self, cause: Cause) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.total += 1;
        *f.by_cause.entry(cause.key()).or_default() += 1;
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> FirstFailures {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedrouter::dialback::DialbackErrorCondition;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn causes_are_told_apart() {
        let timeout = DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout);
        let short = Duration::from_secs(1);
        assert_eq!(
            Cause::of(timeout, false, short, LIMIT).key(),
            "error:remote-server-timeout"
        );
        assert_eq!(Cause::of(timeout, true, short, LIMIT), Cause::StreamEnded);
        assert_eq!(Cause::of(timeout, false, LIMIT, LIMIT), Cause::NoAnswer);
        assert_eq!(
            Cause::of(DialbackResult::Invalid, false, short, LIMIT).key(),
            "invalid"
        );
    }

    #[test]
    fn counts_merge_by_cause() {
        let c = FirstFailureCounter::default();
        c.count(Cause::StreamEnded);
        c.count(Cause::Error(DialbackErrorCondition::RemoteServerTimeout));
        c.count(Cause::Error(DialbackErrorCondition::RemoteServerTimeout));
        let mut a = c.snapshot();
        assert_eq!(
            a.line(),
            "3 (error:remote-server-timeout 2, stream-ended 1)"
        );
        a.merge(&c.snapshot());
        assert_eq!(a.total, 6);
        assert_eq!(a.by_cause["error:remote-server-timeout"], 4);
        assert_eq!(FirstFailures::default().line(), "0");
    }
}
