//! The LDAP side of a password check ([`LdapClient`]), run on the directory thread's
//! tokio runtime with `ldap3`: search then bind (RFC 4513 §5.2.1 simple bind, RFC 4511
//! §4.5 search), over LDAPS or StartTLS (RFC 4513 §3), with a bounded pool of
//! connections.
//!
//! One check: take an idle pooled connection or open one (`auth.ldap.urls` in order,
//! within `connect_timeout`); bind as the service account (or anonymously, re-binding a
//! reused connection); search `base_dn` (subtree) with `filter`, `%u` replaced by the
//! RFC 4515 §3-escaped username, asking for no attribute; exactly one entry is the user
//! (none: unknown or outside the filter; more: ambiguous, refused); bind as that DN with
//! the password. Each operation is bounded by `timeout`. Bind result 49
//! (`invalidCredentials`) and the other refusals are a rejection; `busy` (51),
//! `unavailable` (52), I/O, TLS and timeouts mean the directory could not answer. A
//! reused connection that fails with an I/O error is dropped and the check tried once
//! more on a fresh one (the directory may have restarted since). A connection goes back
//! to the pool only after a clean check.

use std::sync::{Arc, Mutex};

use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use tracing::{debug, warn};

use crate::config::LdapSection;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckOutcome {
    /// The bind as the user succeeded.
    Accepted,
    /// The password, the user or the filter said no; the text says which (for the log).
    Rejected(&'static str),
    /// The directory could not be asked or did not answer: its error.
    Unavailable(String),
}

/// LDAP result codes (RFC 4511 §4.1.9) that mean "try later" rather than "no".
const BUSY: u32 = 51;
const UNAVAILABLE: u32 = 52;
const INVALID_CREDENTIALS: u32 = 49;

/// The settings and the pool of one directory.
pub(crate) struct LdapClient {
    cfg: LdapSection,
    bind_password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Idle connections, each bound as whoever used it last.
    idle: Mutex<Vec<Ldap>>,
}

/// Why one attempt failed.
enum Failure {
    /// Worth one more attempt on a fresh connection (I/O on a reused one).
    Retry(String),
    /// The directory cannot answer now.
    Unavailable(String),
}

fn describe(e: &LdapError) -> String {
    match e {
        LdapError::LdapResult { result } => {
            let text = result.text.trim();
            if text.is_empty() {
                format!("LDAP result {}", result.rc)
            } else {
                format!("LDAP result {}: {text}", result.rc)
            }
        }
        other => other.to_string(),
    }
}

/// Whether `e` is the connection's fault (I/O, closed, timeout) rather than an answer.
fn is_transport(e: &LdapError) -> bool {
    !matches!(e, LdapError::LdapResult { .. })
}

impl LdapClient {
    /// A client for `cfg`, binding the service account with `bind_password`, trusting
    /// `tls` (`None`: ldap3's default, the system's roots).
    pub(crate) fn new(
        cfg: LdapSection,
        bind_password: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> LdapClient {
        LdapClient {
            cfg,
            bind_password,
            tls,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn settings(&self) -> LdapConnSettings {
        let mut s = LdapConnSettings::new()
            .set_conn_timeout(self.cfg.connect_timeout)
            .set_starttls(self.cfg.starttls);
        if let Some(tls) = &self.tls {
            s = s.set_config(Arc::clone(tls));
        }
        s
    }

    /// Opens a connection: each URL in order, each within `connect_timeout`; the last
    /// error when none answers.
    pub(crate) async fn connect(&self) -> Result<Ldap, String> {
        let mut last = String::from("no URL configured");
        for url in &self.cfg.urls {
            let attempt = tokio::time::timeout(
                self.cfg.connect_timeout,
                LdapConnAsync::with_settings(self.settings(), url),
            )
            .await;
            match attempt {
                Ok(Ok((conn, ldap))) => {
                    ldap3::drive!(conn);
                    return Ok(ldap);
                }
                Ok(Err(e)) if !matches!(e, LdapError::Timeout { .. }) => {
                    last = format!("{url}: {}", describe(&e))
                }
                // ldap3's own connect timeout (the same duration), or ours.
                Ok(Err(_)) | Err(_) => {
                    last = format!(
                        "{url}: no connection within {}",
                        humantime::format_duration(self.cfg.connect_timeout)
                    )
                }
            }
            debug!(error = %last, "LDAP connection failed");
        }
        Err(last)
    }

    /// Binds as the service account (or anonymously): `Err` is the directory's failure.
    async fn bind_service(&self, ldap: &mut Ldap) -> Result<(), LdapError> {
        let t = self.cfg.timeout;
        let (dn, pw) = match (&self.cfg.bind_dn, &self.bind_password) {
            (Some(dn), Some(pw)) => (dn.as_str(), pw.as_str()),
            _ => ("", ""),
        };
        ldap.with_timeout(t).simple_bind(dn, pw).await?.success()?;
        Ok(())
    }

    /// Whether the directory answers now: a fresh connection and the service bind.
    pub(crate) async fn probe(&self) -> Result<(), String> {
        let mut ldap = self.connect().await?;
        let r = self
            .bind_service(&mut ldap)
            .await
            .map_err(|e| format!("service account bind failed: {}", describe(&e)));
        let _ = ldap.with_timeout(self.cfg.timeout).unbind().await;
        r
    }

    /// Drops every idle connection (the directory went away).
    pub(crate) fn clear_pool(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Checks `password` for `username` (see the module docs).
    pub(crate) async fn check(&self, username: &str, password: &str) -> CheckOutcome {
        if password.is_empty() {
            // RFC 4513 §5.1.2: an empty password is an unauthenticated bind, which
            // succeeds without proving anything.
            return CheckOutcome::Rejected("empty password");
        }
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let was_reused = reused.is_some();
        let ldap = match reused {
            Some(l) => l,
            None => match self.connect().await {
                Ok(l) => l,
                Err(e) => return CheckOutcome::Unavailable(e),
            },
        };
        match self.attempt(ldap, username, password).await {
            Ok(outcome) => outcome,
            Err(Failure::Retry(e)) if was_reused => {
                debug!(error = %e, "pooled LDAP connection failed; retrying on a new one");
                self.clear_pool();
                let ldap = match self.connect().await {
                    Ok(l) => l,
                    Err(e) => return CheckOutcome::Unavailable(e),
                };
                match self.attempt(ldap, username, password).await {
                    Ok(outcome) => outcome,
                    Err(Failure::Retry(e) | Failure::Unavailable(e)) => {
                        CheckOutcome::Unavailable(e)
                    }
                }
            }
            Err(Failure::Retry(e) | Failure::Unavailable(e)) => CheckOutcome::Unavailable(e),
        }
    }

    /// One check on `ldap`, which goes back to the pool when it ends cleanly.
    async fn attempt(
        &self,
        mut ldap: Ldap,
        username: &str,
        password: &str,
    ) -> Result<CheckOutcome, Failure> {
        let t = self.cfg.timeout;
        let fail = |stage: &str, e: &LdapError| {
            let text = format!("{stage}: {}", describe(e));
            if is_transport(e) {
                Failure::Retry(text)
            } else {
                Failure::Unavailable(text)
            }
        };
        self.bind_service(&mut ldap)
            .await
            .map_err(|e| fail("service account bind", &e))?;
        let filter = self.cfg.filter.replace("%u", &ldap_escape(username));
        let (entries, _) = ldap
            .with_timeout(t)
            .search(&self.cfg.base_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| fail("search", &e))?;
        let dn = match entries.len() {
            0 => {
                self.give_back(ldap);
                return Ok(CheckOutcome::Rejected("no entry matches the filter"));
            }
            1 => SearchEntry::construct(entries.into_iter().next().expect("one entry")).dn,
            n => {
                warn!(
                    user = username,
                    entries = n,
                    filter = %filter,
                    "auth.ldap.filter matches more than one entry: login refused"
                );
                self.give_back(ldap);
                return Ok(CheckOutcome::Rejected("the filter matches several entries"));
            }
        };
        let bound = ldap.with_timeout(t).simple_bind(&dn, password).await;
        let outcome = match bound {
            Ok(r) if r.rc == 0 => CheckOutcome::Accepted,
            Ok(r) if r.rc == INVALID_CREDENTIALS => CheckOutcome::Rejected("wrong password"),
            Ok(r) if r.rc == BUSY || r.rc == UNAVAILABLE => {
                return Err(Failure::Unavailable(format!(
                    "bind as the user: LDAP result {}: {}",
                    r.rc,
                    r.text.trim()
                )))
            }
            Ok(r) => {
                debug!(user = username, rc = r.rc, text = %r.text, "LDAP bind refused");
                CheckOutcome::Rejected("the directory refused the bind")
            }
            Err(e) => return Err(fail("bind as the user", &e)),
        };
        self.give_back(ldap);
        Ok(outcome)
    }

    fn give_back(&self, ldap: Ldap) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.cfg.pool_size {
            idle.push(ldap);
        }
    }
}
