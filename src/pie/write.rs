//! Writing a XEP-0227 document (§4): one `<server-data/>` with one `<host/>`, pure. What
//! [`super::read::read`] reads back to the same users, credentials and rosters.
//!
//! Per user: `<scram-credentials xmlns='urn:xmpp:pie:0#scram'/>` for each stored hash (as
//! Prosody and ejabberd write them), the roster as a `jabber:iq:roster` `<query/>` of the
//! items in the roster (RFC 6121 §2.1.2), and each pending inbound subscription request
//! as a `<presence xmlns='jabber:client' type='subscribe'/>` child of `<user/>`, with the
//! request's `<status/>` if it had one.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use quick_xml::escape::escape;

use super::{NS_CLIENT, NS_PIE, NS_PIE_SCRAM, NS_ROSTER};
use crate::store::{ScramCredentials, StoredItem};

/// One user to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportUser {
    /// The user's normalised bare JID (its domain is the host's).
    pub jid: String,
    /// Its stored credentials (none: written without, and read back without).
    pub credentials: Vec<ScramCredentials>,
    /// Its stored roster rows.
    pub rows: Vec<StoredItem>,
}

/// The XEP-0227 document of `domain` with `users`, as UTF-8 text with one element per
/// line.
pub fn host_document(domain: &str, users: &[ExportUser]) -> String {
    let mut s = String::new();
    s.push_str("<?xml version='1.0' encoding='UTF-8'?>\n");
    let _ = writeln!(s, "<server-data xmlns='{NS_PIE}'>");
    let _ = writeln!(s, "  <host jid='{}'>", escape(domain));
    for u in users {
        user(&mut s, u);
    }
    s.push_str("  </host>\n</server-data>\n");
    s
}

fn user(s: &mut String, u: &ExportUser) {
    let local = u.jid.split_once('@').map_or("", |(l, _)| l);
    let _ = writeln!(s, "    <user name='{}'>", escape(local));
    for c in &u.credentials {
        let _ = writeln!(
            s,
            "      <scram-credentials xmlns='{NS_PIE_SCRAM}' mechanism='{}'>\
<iter-count>{}</iter-count><salt>{}</salt><server-key>{}</server-key>\
<stored-key>{}</stored-key></scram-credentials>",
            c.mechanism.mechanism(),
            c.iterations,
            B64.encode(&c.salt),
            B64.encode(&c.server_key),
            B64.encode(&c.stored_key),
        );
    }
    let in_roster: Vec<&StoredItem> = u.rows.iter().filter(|r| r.in_roster).collect();
    if !in_roster.is_empty() {
        let _ = writeln!(s, "      <query xmlns='{NS_ROSTER}'>");
        for r in in_roster {
            let _ = write!(
                s,
                "        <item jid='{}' subscription='{}'",
                escape(r.contact.as_str()),
                escape(r.subscription.as_str())
            );
            if r.pending_out {
                s.push_str(" ask='subscribe'");
            }
            if let Some(n) = &r.name {
                let _ = write!(s, " name='{}'", escape(n.as_str()));
            }
            if r.groups.is_empty() {
                s.push_str("/>\n");
            } else {
                s.push('>');
                for g in &r.groups {
                    let _ = write!(s, "<group>{}</group>", escape(g.as_str()));
                }
                s.push_str("</item>\n");
            }
        }
        s.push_str("      </query>\n");
    }
    for r in &u.rows {
        let Some(stanza) = &r.pending_in else {
            continue;
        };
        let _ = write!(
            s,
            "      <presence xmlns='{NS_CLIENT}' from='{}' to='{}' type='subscribe'",
            escape(r.contact.as_str()),
            escape(u.jid.as_str())
        );
        match request_status(stanza) {
            Some(t) => {
                let _ = writeln!(s, "><status>{}</status></presence>", escape(t.as_str()));
            }
            None => s.push_str("/>\n"),
        }
    }
    s.push_str("    </user>\n");
}

/// The `<status/>` text of a stored subscription request (the stanza as received, or as
/// an import wrote it), if it has one and parses.
fn request_status(stanza: &str) -> Option<String> {
    let el = super::tree::parse(stanza).ok()?;
    el.children
        .iter()
        .find(|c| c.name == "status")
        .map(|c| c.text.clone())
        .filter(|t| !t.is_empty())
}
