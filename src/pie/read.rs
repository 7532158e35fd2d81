//! Reading a XEP-0227 document (§4) into checked [`User`]s: pure, no I/O. A bad entry
//! (a user whose JID or credentials do not parse, a roster item with no valid `jid` or an
//! unknown `subscription`) is left out as a [`Skip`] naming it and why; the rest is read.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::tree::{self, Element};
use super::{
    Credentials, Document, Item, PieError, Skip, User, NS_CLIENT, NS_PIE, NS_PIE_SCRAM, NS_ROSTER,
    NS_SERVER, NS_XINCLUDE,
};
use crate::jid::BareJid;
use crate::store::{ScramCredentials, ScramHash};

/// Reads a whole XEP-0227 file: `<server-data/>` (with `<host/>` children or
/// `<xi:include/>`s, whose `href`s go to [`Document::includes`]) or a lone `<host/>`.
///
/// Errors: [`PieError::Xml`], [`PieError::NotPie`].
pub fn read(text: &str) -> Result<Document, PieError> {
    let root = tree::parse(text)?;
    let mut doc = Document::default();
    if root.is("host", NS_PIE) {
        read_host(&root, &mut doc);
    } else if root.is("server-data", NS_PIE) {
        for c in &root.children {
            if c.is("host", NS_PIE) {
                read_host(c, &mut doc);
            } else if c.is("include", NS_XINCLUDE) {
                match c.attr("href") {
                    Some(h) => doc.includes.push(h.to_owned()),
                    None => doc.skipped.push(Skip {
                        what: "xi:include".into(),
                        reason: "no href attribute".into(),
                    }),
                }
            } else {
                *doc.ignored.entry(c.qname()).or_default() += 1;
            }
        }
    } else {
        return Err(PieError::NotPie(root.qname()));
    }
    Ok(doc)
}

fn read_host(host: &Element, doc: &mut Document) {
    let Some(raw) = host.attr("jid") else {
        doc.skipped.push(Skip {
            what: "host".into(),
            reason: format!(
                "no jid attribute; its {} users are left out",
                host.children.len()
            ),
        });
        return;
    };
    let domain = match BareJid::new(raw) {
        Ok(j) if j.node().is_none() => j.as_str().to_owned(),
        _ => {
            doc.skipped.push(Skip {
                what: format!("host {raw}"),
                reason: "jid is not a valid domain; its users are left out".into(),
            });
            return;
        }
    };
    for u in &host.children {
        if u.is("user", NS_PIE) {
            if let Some(user) = read_user(u, &domain, doc) {
                doc.users.push(user);
            }
        } else if u.is("include", NS_XINCLUDE) {
            if let Some(h) = u.attr("href") {
                doc.includes.push(h.to_owned());
            }
        } else {
            *doc.ignored.entry(u.qname()).or_default() += 1;
        }
    }
}

fn read_user(u: &Element, domain: &str, doc: &mut Document) -> Option<User> {
    let Some(name) = u.attr("name") else {
        doc.skipped.push(Skip {
            what: format!("a user of {domain}"),
            reason: "no name attribute".into(),
        });
        return None;
    };
    let jid = match BareJid::new(&format!("{name}@{domain}")) {
        Ok(j) => j.as_str().to_owned(),
        Err(e) => {
            doc.skipped.push(Skip {
                what: format!("user {name}@{domain}"),
                reason: format!("not a valid JID: {e}"),
            });
            return None;
        }
    };
    let credentials = match read_credentials(u, &jid, doc) {
        Ok(c) => c,
        Err(reason) => {
            doc.skipped.push(Skip {
                what: format!("user {jid}"),
                reason,
            });
            return None;
        }
    };
    let mut user = User {
        jid: jid.clone(),
        credentials,
        ..User::default()
    };
    for c in &u.children {
        if c.is("query", NS_ROSTER) {
            for i in &c.children {
                if i.is("item", NS_ROSTER) {
                    match read_item(i, &jid) {
                        Ok(item) if user.roster.iter().any(|x| x.jid == item.jid) => {
                            doc.skipped.push(Skip {
                                what: format!("roster item {} of {jid}", item.jid),
                                reason: "a second item for the same contact".into(),
                            });
                        }
                        Ok(item) => user.roster.push(item),
                        Err(skip) => doc.skipped.push(skip),
                    }
                }
            }
        } else if c.name == "presence" && [NS_CLIENT, NS_PIE, NS_SERVER].contains(&c.ns.as_str()) {
            // ejabberd writes xmlns='jabber:client'; Prosody 0.12 writes no xmlns, so the
            // element inherits urn:xmpp:pie:0 from <server-data/>.
            if c.attr("type") != Some("subscribe") {
                *doc.ignored
                    .entry(format!("{{{NS_CLIENT}}}presence (not type='subscribe')"))
                    .or_default() += 1;
                continue;
            }
            let from = c.attr("from").unwrap_or_default();
            match BareJid::new(from) {
                Ok(f) if f.as_str() != jid => {
                    let from = f.as_str().to_owned();
                    if !user.pending_in.iter().any(|(p, _)| *p == from) {
                        let status = c
                            .child("status", NS_CLIENT)
                            .map(|s| s.text.clone())
                            .filter(|s| !s.is_empty());
                        user.pending_in.push((from, status));
                    }
                }
                _ => doc.skipped.push(Skip {
                    what: format!("subscription request to {jid}"),
                    reason: format!("from {from:?} is not a valid bare JID of another entity"),
                }),
            }
        } else if !c.is("scram-credentials", NS_PIE_SCRAM) {
            *doc.ignored.entry(c.qname()).or_default() += 1;
        }
    }
    Some(user)
}

/// The user's credentials: a plain `password` wins (both hashes are derived from it),
/// then `<scram-credentials/>`, then ejabberd's `password='scram:…'`.
fn read_credentials(u: &Element, jid: &str, doc: &mut Document) -> Result<Credentials, String> {
    let password = u.attr("password").unwrap_or_default();
    if let Some(old) = password.strip_prefix("scram:") {
        return old_scram(old).map(|c| Credentials::Scram(vec![twice_encoded(&c).unwrap_or(c)]));
    }
    if !password.is_empty() {
        return Ok(Credentials::Password(password.to_owned()));
    }
    let mut creds: Vec<ScramCredentials> = Vec::new();
    for c in u
        .children
        .iter()
        .filter(|c| c.is("scram-credentials", NS_PIE_SCRAM))
    {
        let mechanism = c.attr("mechanism").unwrap_or_default();
        let Some(hash) = ScramHash::from_mechanism(mechanism) else {
            doc.notes.push(format!(
                "{jid}: {mechanism:?} credentials are not supported and were left out"
            ));
            continue;
        };
        let field = |name: &str| -> Result<String, String> {
            c.child(name, NS_PIE_SCRAM)
                .map(|e| e.text.trim().to_owned())
                .ok_or_else(|| format!("{mechanism} credentials without <{name}/>"))
        };
        let b64 = |name: &str| -> Result<Vec<u8>, String> {
            B64.decode(field(name)?)
                .map_err(|e| format!("{mechanism} <{name}/> is not base64: {e}"))
        };
        let iterations: u32 = field("iter-count")?
            .parse()
            .map_err(|_| format!("{mechanism} <iter-count/> is not a positive integer"))?;
        let mut cred = ScramCredentials {
            mechanism: hash,
            salt: b64("salt")?,
            iterations,
            stored_key: b64("stored-key")?,
            server_key: b64("server-key")?,
        };
        if let Some(c) = twice_encoded(&cred) {
            doc.notes.push(format!(
                "{jid}: the {mechanism} salt and keys were base64-encoded twice (as ejabberd \
                 23.01 writes them); decoded twice"
            ));
            cred = c;
        }
        check(&cred)?;
        if creds.iter().any(|x| x.mechanism == hash) {
            return Err(format!("two {mechanism} credentials"));
        }
        creds.push(cred);
    }
    Ok(if creds.is_empty() {
        Credentials::None
    } else {
        Credentials::Scram(creds)
    })
}

/// ejabberd's `scram:` password form: `STORED,SERVER,SALT,ITER` (SHA-1) or
/// `sha256,STORED,SERVER,SALT,ITER` (`ejabberd_piefxis:parse_scram_password/1`).
fn old_scram(data: &str) -> Result<ScramCredentials, String> {
    let parts: Vec<&str> = data.split(',').collect();
    let (hash, f) = match parts.as_slice() {
        [a, b, c, d] => (ScramHash::Sha1, [*a, *b, *c, *d]),
        ["sha256", a, b, c, d] => (ScramHash::Sha256, [*a, *b, *c, *d]),
        [h, ..] if parts.len() == 5 => {
            return Err(format!(
                "password='scram:{h},…': hash {h:?} is not supported"
            ))
        }
        _ => return Err("password='scram:…' does not have 4 or 5 fields".into()),
    };
    let b64 = |s: &str, what: &str| {
        B64.decode(s)
            .map_err(|e| format!("password='scram:…' {what} is not base64: {e}"))
    };
    let cred = ScramCredentials {
        mechanism: hash,
        stored_key: b64(f[0], "stored key")?,
        server_key: b64(f[1], "server key")?,
        salt: b64(f[2], "salt")?,
        iterations: f[3]
            .parse()
            .map_err(|_| "password='scram:…' iteration count is not a positive integer")?,
    };
    check(&cred)?;
    Ok(cred)
}

/// ejabberd up to at least 23.01 keeps SCRAM salt and keys base64-encoded in its
/// database and `export_piefxis` encodes them once more: when both keys decode to text
/// that is itself base64 of a key of the hash's length, the credentials decoded twice
/// (salt too); `None` when the keys already have the right length or do not decode so.
fn twice_encoded(c: &ScramCredentials) -> Option<ScramCredentials> {
    let len = c.mechanism.output_len();
    if c.stored_key.len() == len && c.server_key.len() == len {
        return None;
    }
    let again = |b: &[u8]| B64.decode(b).ok();
    let stored_key = again(&c.stored_key).filter(|k| k.len() == len)?;
    let server_key = again(&c.server_key).filter(|k| k.len() == len)?;
    let salt = again(&c.salt).filter(|s| !s.is_empty())?;
    Some(ScramCredentials {
        mechanism: c.mechanism,
        salt,
        iterations: c.iterations,
        stored_key,
        server_key,
    })
}

fn check(c: &ScramCredentials) -> Result<(), String> {
    let len = c.mechanism.output_len();
    let m = c.mechanism.mechanism();
    if c.stored_key.len() != len || c.server_key.len() != len {
        return Err(format!("{m} keys are not {len} octets long"));
    }
    if c.iterations == 0 {
        return Err(format!("{m} iteration count is 0"));
    }
    if c.salt.is_empty() {
        return Err(format!("{m} salt is empty"));
    }
    Ok(())
}

fn read_item(i: &Element, user: &str) -> Result<Item, Skip> {
    let raw = i.attr("jid").unwrap_or_default();
    let skip = |reason: String| Skip {
        what: format!("roster item {raw:?} of {user}"),
        reason,
    };
    let jid = match BareJid::new(raw) {
        Ok(j) => j.as_str().to_owned(),
        Err(e) => return Err(skip(format!("jid is not a valid bare JID: {e}"))),
    };
    if jid == user {
        return Err(skip("the user's own JID (a self-contact)".into()));
    }
    let subscription = i.attr("subscription").unwrap_or("none");
    if !matches!(subscription, "none" | "to" | "from" | "both") {
        return Err(skip(format!(
            "subscription {subscription:?} is not none, to, from or both (RFC 6121 §2.1.2.5)"
        )));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in i.children.iter().filter(|g| g.is("group", NS_ROSTER)) {
        if !g.text.is_empty() && !groups.contains(&g.text) {
            groups.push(g.text.clone());
        }
    }
    Ok(Item {
        jid,
        name: i.attr("name").filter(|n| !n.is_empty()).map(str::to_owned),
        subscription: subscription.to_owned(),
        ask: i.attr("ask") == Some("subscribe"),
        groups,
    })
}
