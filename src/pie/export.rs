//! Exporting a [`Store`] to XEP-0227 files: one `<domain>.xml` per domain in a folder,
//! each a `<server-data/>` with one `<host/>` ([`super::write::host_document`]).

use std::path::{Path, PathBuf};

use super::write::{host_document, ExportUser};
use super::PieError;
use crate::store::{ScramHash, Store};

/// What an export wrote: per file, its path and how many users it holds.
pub type Written = Vec<(PathBuf, usize)>;

/// Writes every stored user of `domains` (all stored users when `domains` is empty) into
/// `dir` (created if needed), one `<domain>.xml` per domain that has users. A file is
/// written to `<domain>.xml.tmp` then renamed, so a reader never sees half a file.
///
/// Errors: [`PieError::Io`] for the folder or a file; a store failure as
/// [`PieError::Io`] naming the store.
pub fn export(store: &mut dyn Store, dir: &Path, domains: &[String]) -> Result<Written, PieError> {
    let store_err = |e: crate::store::StoreError| PieError::Io {
        path: "the store".into(),
        error: e.to_string(),
    };
    let io = |p: &Path, e: std::io::Error| PieError::Io {
        path: p.display().to_string(),
        error: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let all = store.list_users(None).map_err(store_err)?;
    let mut by_domain: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for jid in all {
        let d = crate::jid::domain_of(&jid).to_owned();
        if domains.is_empty() || domains.contains(&d) {
            by_domain.entry(d).or_default().push(jid);
        }
    }
    let mut written = Vec::new();
    for (domain, jids) in by_domain {
        let mut users = Vec::with_capacity(jids.len());
        for jid in jids {
            let mut credentials = Vec::new();
            for h in [ScramHash::Sha1, ScramHash::Sha256] {
                credentials.extend(store.credentials(&jid, h).map_err(store_err)?);
            }
            let (_, rows) = store.roster(&jid).map_err(store_err)?;
            users.push(ExportUser {
                jid,
                credentials,
                rows,
            });
        }
        let path = dir.join(format!("{domain}.xml"));
        let tmp = dir.join(format!("{domain}.xml.tmp"));
        std::fs::write(&tmp, host_document(&domain, &users)).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        written.push((path, users.len()));
    }
    Ok(written)
}
