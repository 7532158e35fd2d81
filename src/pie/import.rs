//! Importing XEP-0227 files into a [`Store`]: finding the files (a file and what it
//! `xi:include`s, or every `*.xml` of a folder), then each user in its own transaction
//! ([`Store::import_user`]), with a [`Summary`] of what happened.
//!
//! Idempotent: a user already stored with the same credentials and roster rows is left
//! unchanged (no roster version bump); a plain password that verifies against the stored
//! credentials is not derived again. Rows the file does not name are kept: an import adds
//! and updates, it never removes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quick_xml::escape::escape;

use super::{read, Credentials, Document, PieError, Skip, User};
use crate::presence::{SubState, Subscription};
use crate::store::{ScramCredentials, ScramHash, Store, StoredItem, SCRAM_ITERATIONS};

/// Deepest chain of `xi:include`s followed.
pub const MAX_INCLUDE_DEPTH: usize = 4;

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Files read (included ones too).
    pub files: usize,
    /// Users created.
    pub users_created: usize,
    /// Users that existed and whose credentials or roster rows changed.
    pub users_updated: usize,
    /// Users that existed and were left as they were (same data).
    pub users_unchanged: usize,
    /// Roster items read (in users that were imported).
    pub roster_items: usize,
    /// Pending inbound subscription requests read (in users that were imported).
    pub pending_in: usize,
    /// Roster rows written (new or different).
    pub rows_written: usize,
    /// Imported users that have no credentials (none in the file and none stored): they
    /// need `fedrouter user passwd`, or an external authentication such as LDAP.
    pub without_credentials: Vec<String>,
    /// Imported users whose only credentials are SCRAM-SHA-1 (Prosody 0.12 keeps no
    /// other): they log in with SCRAM-SHA-1 or PLAIN until their password is set again.
    pub sha1_only: Vec<String>,
    /// Entries left out, each with why: errors.
    pub skipped: Vec<Skip>,
    /// Notes that are not errors.
    pub notes: Vec<String>,
    /// Elements not imported, by `{namespace}name`, with their count.
    pub ignored: BTreeMap<String, usize>,
}

impl Summary {
    /// Whether anything was left out with an error (the command then exits with 1).
    pub fn has_errors(&self) -> bool {
        !self.skipped.is_empty()
    }

    /// Users skipped: the skipped entries that are whole users.
    pub fn users_skipped(&self) -> usize {
        self.skipped
            .iter()
            .filter(|s| s.what.starts_with("user "))
            .count()
    }

    /// The summary as text for the operator, one fact per line.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "users: {} created, {} updated, {} unchanged, {} skipped (from {} file{})",
            self.users_created,
            self.users_updated,
            self.users_unchanged,
            self.users_skipped(),
            self.files,
            if self.files == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            s,
            "roster items: {}; pending subscription requests: {}; rows written: {} (new or changed)",
            self.roster_items, self.pending_in, self.rows_written
        );
        if !self.without_credentials.is_empty() {
            let _ = writeln!(
                s,
                "users without credentials ({}): they cannot log in with a password until one is set with `fedrouter user passwd JID` (or an external authentication such as LDAP takes over):",
                self.without_credentials.len()
            );
            for u in &self.without_credentials {
                let _ = writeln!(s, "  {u}");
            }
        }
        if !self.sha1_only.is_empty() {
            let _ = writeln!(
                s,
                "users with SCRAM-SHA-1 credentials only ({}): their clients must use SCRAM-SHA-1 or PLAIN until the password is set again (`fedrouter user passwd JID` adds SCRAM-SHA-256)",
                self.sha1_only.len()
            );
        }
        if !self.ignored.is_empty() {
            let list: Vec<String> = self
                .ignored
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            let _ = writeln!(
                s,
                "not imported (fedrouter keeps no such data): {}",
                list.join(", ")
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for k in &self.skipped {
            let _ = writeln!(s, "skipped: {}: {}", k.what, k.reason);
        }
        s
    }
}

/// Reads `path`: a XEP-0227 file (following its `xi:include`s, relative to its folder),
/// or a folder, whose `*.xml` files are each read unless another of them includes it
/// (ejabberd's main file includes its per-host files). Files are read in name order.
///
/// Errors: [`PieError::Io`] for the path itself or a file; [`PieError::Xml`] /
/// [`PieError::NotPie`] for a file that is not a XEP-0227 document (with its path);
/// [`PieError::Include`] for an include that cannot be followed.
pub fn load(path: &Path) -> Result<Vec<(PathBuf, Document)>, PieError> {
    let io = |p: &Path, e: std::io::Error| PieError::Io {
        path: p.display().to_string(),
        error: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    let mut files: Vec<PathBuf> = if meta.is_dir() {
        let mut v = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| io(path, e))? {
            let p = entry.map_err(|e| io(path, e))?.path();
            if p.extension().is_some_and(|x| x == "xml") && p.is_file() {
                v.push(p);
            }
        }
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out: Vec<(PathBuf, Document)> = Vec::new();
    for f in &files {
        out.push((f.clone(), read_file(f)?));
    }
    // Follow includes (breadth-first, bounded); a folder's file that is included by
    // another is not read on its own too.
    let mut included: Vec<PathBuf> = Vec::new();
    let mut frontier: Vec<(PathBuf, usize)> = Vec::new();
    for (p, d) in &out {
        for h in &d.includes {
            frontier.push((resolve(p, h), 1));
        }
    }
    while let Some((p, depth)) = frontier.pop() {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(PieError::Include(format!(
                "{}: more than {MAX_INCLUDE_DEPTH} nested includes",
                p.display()
            )));
        }
        if included.contains(&p) {
            continue;
        }
        included.push(p.clone());
        if files.contains(&p) {
            continue;
        }
        let doc = read_file(&p).map_err(|e| match e {
            PieError::Io { path, error } => {
                PieError::Include(format!("{path} (included): {error}"))
            }
            other => other,
        })?;
        for h in &doc.includes {
            frontier.push((resolve(&p, h), depth + 1));
        }
        files.push(p.clone());
        out.push((p, doc));
    }
    Ok(out)
}

fn resolve(from: &Path, href: &str) -> PathBuf {
    let base = from.parent().unwrap_or(Path::new("."));
    let p = base.join(href);
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn read_file(p: &Path) -> Result<Document, PieError> {
    let text = std::fs::read_to_string(p).map_err(|e| PieError::Io {
        path: p.display().to_string(),
        error: e.to_string(),
    })?;
    read::read(&text).map_err(|e| match e {
        PieError::Xml { offset, reason } => PieError::Xml {
            offset,
            reason: format!("{}: {reason}", p.display()),
        },
        PieError::NotPie(r) => PieError::NotPie(format!("{r} in {}", p.display())),
        other => other,
    })
}

/// Imports every user of `docs` whose domain is one of `domains` into `store`, each in
/// its own transaction; derives credentials for plain passwords with salts from `rng`.
/// Users of other domains, and users the store refuses, are skipped with the reason.
pub fn import<R: rand::CryptoRng + ?Sized>(
    store: &mut dyn Store,
    docs: &[(PathBuf, Document)],
    domains: &[String],
    rng: &mut R,
) -> Summary {
    let mut sum = Summary {
        files: docs.len(),
        ..Summary::default()
    };
    for (_, d) in docs {
        sum.skipped.extend(d.skipped.iter().cloned());
        sum.notes.extend(d.notes.iter().cloned());
        for (k, n) in &d.ignored {
            *sum.ignored.entry(k.clone()).or_default() += n;
        }
        for u in &d.users {
            if let Err(reason) = import_one(store, u, domains, rng, &mut sum) {
                sum.skipped.push(Skip {
                    what: format!("user {}", u.jid),
                    reason,
                });
            }
        }
    }
    sum
}

fn import_one<R: rand::CryptoRng + ?Sized>(
    store: &mut dyn Store,
    u: &User,
    domains: &[String],
    rng: &mut R,
    sum: &mut Summary,
) -> Result<(), String> {
    let domain = crate::jid::domain_of(&u.jid);
    if !domains.iter().any(|d| d == domain) {
        return Err(format!(
            "{domain} is not one of this server's domains ({}); add it to `domains` in the configuration",
            domains.join(", ")
        ));
    }
    let mut stored = Vec::new();
    for h in ScramHash::ALL {
        stored.extend(store.credentials(&u.jid, h).map_err(|e| e.to_string())?);
    }
    let creds: Option<Vec<ScramCredentials>> = match &u.credentials {
        Credentials::Scram(c) => Some(c.clone()),
        Credentials::Password(p) => {
            if !stored.is_empty() && stored.iter().all(|c| c.verify_password(p)) {
                None
            } else {
                let derived: Result<Vec<_>, _> = ScramHash::ALL
                    .iter()
                    .map(|&h| ScramCredentials::with_random_salt(p, h, SCRAM_ITERATIONS, rng))
                    .collect();
                Some(derived.map_err(|e| format!("password: {e}"))?)
            }
        }
        Credentials::None => None,
    };
    let rows = rows(u);
    let pending = rows.iter().filter(|r| r.pending_in.is_some()).count();
    let out = store
        .import_user(&u.jid, creds.as_deref(), &rows)
        .map_err(|e| e.to_string())?;
    let now = creds.as_deref().unwrap_or(&stored);
    if now.is_empty() {
        sum.without_credentials.push(u.jid.clone());
    } else if now.iter().all(|c| c.mechanism == ScramHash::Sha1) {
        sum.sha1_only.push(u.jid.clone());
    }
    sum.roster_items += u.roster.len();
    sum.pending_in += pending;
    sum.rows_written += out.items_written;
    if out.created {
        sum.users_created += 1;
    } else if out.credentials_replaced || out.items_written > 0 {
        sum.users_updated += 1;
    } else {
        sum.users_unchanged += 1;
    }
    Ok(())
}

/// The stored rows for a user's roster items and pending requests, with each state
/// normalised (RFC 6121 Appendix A: no `ask` with `to`, no pending request with `from`).
pub fn rows(u: &User) -> Vec<StoredItem> {
    let request = |from: &str| -> Option<String> {
        let (_, status) = u.pending_in.iter().find(|(p, _)| p == from)?;
        Some(match status {
            Some(t) => format!(
                "<presence from='{}' to='{}' type='subscribe'><status>{}</status></presence>",
                escape(from),
                escape(u.jid.as_str()),
                escape(t.as_str())
            ),
            None => format!(
                "<presence from='{}' to='{}' type='subscribe'/>",
                escape(from),
                escape(u.jid.as_str())
            ),
        })
    };
    let mut out: Vec<StoredItem> = u
        .roster
        .iter()
        .map(|i| {
            let st = SubState {
                subscription: Subscription::from_attr(&i.subscription).unwrap_or_default(),
                pending_out: i.ask,
                pending_in: u.pending_in.iter().any(|(p, _)| *p == i.jid),
                pre_approved: false,
            }
            .normalized();
            StoredItem {
                contact: i.jid.clone(),
                name: i.name.clone(),
                groups: i.groups.clone(),
                subscription: st.subscription.as_str().to_owned(),
                pending_out: st.pending_out,
                pending_in: if st.pending_in { request(&i.jid) } else { None },
                pre_approved: false,
                in_roster: true,
            }
        })
        .collect();
    for (from, _) in &u.pending_in {
        if !u.roster.iter().any(|i| i.jid == *from) {
            out.push(StoredItem {
                contact: from.clone(),
                name: None,
                groups: Vec::new(),
                subscription: "none".to_owned(),
                pending_out: false,
                pending_in: request(from),
                pre_approved: false,
                in_roster: false,
            });
        }
    }
    out
}
