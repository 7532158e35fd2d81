//! XEP-0227 (Portable Import/Export Format for XMPP-IM Servers): moving users, their
//! SCRAM credentials and their rosters between fedrouter and other servers (Prosody's
//! `prosody-migrator`, ejabberd's `ejabberdctl export_piefxis`).
//!
//! # Shape
//!
//! ```text
//!  FILE | DIR ──► tree (quick-xml, namespaces resolved) ──► read: Document
//!                 (xi:include followed, XEP-0227 §4)          │ hosts ─ users ─ items
//!                                                             ▼
//!                       import: per user, Store::import_user (one transaction) ─► Summary
//!  Store ──► export: one `<domain>.xml` per hosted domain (write) ──► DIR
//! ```
//!
//! What is read (XEP-0227 §4, and what the two servers actually write):
//!
//! - `<server-data xmlns='urn:xmpp:pie:0'>` holding `<host jid='…'>`, or a `<host/>` as
//!   the root of its own file (ejabberd writes one file per host, included from the main
//!   file with `<xi:include href='…'/>`).
//! - `<user name='LOCALPART' password='…'>`: a plain password (SCRAM-SHA-1 and
//!   SCRAM-SHA-256 credentials are derived from it; the password is never stored), or
//!   ejabberd's older `password='scram:STORED,SERVER,SALT,ITER'` (base64 fields, SHA-1;
//!   `scram:sha256,…` for SHA-256).
//! - `<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>` with
//!   `<iter-count/>`, `<salt/>`, `<server-key/>`, `<stored-key/>` (base64), as both Prosody
//!   (`mod_storage_xep0227`) and ejabberd (`ejabberd_piefxis`) write it. Mechanisms other
//!   than SCRAM-SHA-1 and SCRAM-SHA-256 (ejabberd's SCRAM-SHA-512) are noted and left out.
//! - `<query xmlns='jabber:iq:roster'>` items (RFC 6121 §2.1.2: `jid`, `name`,
//!   `subscription`, `ask`, `<group/>`).
//! - `<presence xmlns='jabber:client' type='subscribe' from='…'/>` children of `<user/>`:
//!   pending inbound subscription requests (RFC 6121 §3.1.3). Prosody 0.12 writes them
//!   without `xmlns` (so in `urn:xmpp:pie:0`), and its own reader then misses them; they
//!   are read in either namespace.
//!
//! Everything else under `<user/>` (vCard, private XML, offline messages, privacy lists,
//! PEP) is counted in the summary as not imported: fedrouter keeps no such data.

pub mod export;
pub mod import;
pub mod read;
pub mod tree;
pub mod write;

use crate::store::ScramCredentials;

/// The XEP-0227 namespace (`<server-data/>`, `<host/>`, `<user/>`).
pub const NS_PIE: &str = "urn:xmpp:pie:0";
/// The namespace of `<scram-credentials/>` inside `<user/>`.
pub const NS_PIE_SCRAM: &str = "urn:xmpp:pie:0#scram";
/// RFC 6121 §2 roster namespace.
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// The client namespace of stanzas stored in a `<user/>` (pending subscription requests).
pub const NS_CLIENT: &str = "jabber:client";
/// The server namespace, accepted for stored presence stanzas too.
pub const NS_SERVER: &str = "jabber:server";
/// XInclude (ejabberd's main file includes one file per host).
pub const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";

/// Why a file cannot be read at all (one bad entry is a [`Skip`] instead).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieError {
    /// The file or folder cannot be read: its path and the OS error.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: String,
        /// The error's message.
        error: String,
    },
    /// Not well-formed XML, or a construct refused (DTD): where (byte offset) and why.
    #[error("not well-formed XML at byte {offset}: {reason}")]
    Xml {
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The root element is not XEP-0227's `<server-data/>` or `<host/>` in `urn:xmpp:pie:0`:
    /// what it is (`{namespace}name`).
    #[error("not a XEP-0227 file: the root element is {0}, not <server-data xmlns='urn:xmpp:pie:0'/> or <host/>")]
    NotPie(String),
    /// An `<xi:include/>` that cannot be followed: why.
    #[error("xi:include: {0}")]
    Include(String),
}

/// One entry left out, and why: an error, so the import exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// What was left out: `user alice@example.com`, `roster item bob@… of alice@…`.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// A user's credentials as the file gives them.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// SCRAM credentials (at most one per hash).
    Scram(Vec<ScramCredentials>),
    /// A plain password (`password='…'`): credentials are derived from it.
    Password(String),
    /// None: the user cannot log in with a password until one is set (`fedrouter user
    /// passwd`) or an external authentication (LDAP) takes over.
    #[default]
    None,
}

impl std::fmt::Debug for Credentials {
    /// Never shows a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Scram(c) => f.debug_tuple("Scram").field(c).finish(),
            Credentials::Password(_) => f.write_str("Password(…)"),
            Credentials::None => f.write_str("None"),
        }
    }
}

/// One roster item of a `<user/>` (RFC 6121 §2.1.2), checked: `jid` is a normalised bare
/// JID, `subscription` one of `none`, `to`, `from`, `both`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The contact (normalised bare JID).
    pub jid: String,
    /// `name`, if any.
    pub name: Option<String>,
    /// `subscription`.
    pub subscription: String,
    /// `ask='subscribe'`: a request of the user not answered yet.
    pub ask: bool,
    /// `<group/>`s, in file order, without duplicates.
    pub groups: Vec<String>,
}

/// One `<user/>`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The normalised bare JID (`name@host`).
    pub jid: String,
    /// Its credentials.
    pub credentials: Credentials,
    /// Roster items, in file order.
    pub roster: Vec<Item>,
    /// Contacts (normalised bare JIDs) whose subscription request waits for the user's
    /// answer, with the request's `<status/>` text if any.
    pub pending_in: Vec<(String, Option<String>)>,
}

/// What one file held: its users (by host), what was left out, what was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document {
    /// The users, in file order, each with its host's domain.
    pub users: Vec<User>,
    /// Entries left out (errors).
    pub skipped: Vec<Skip>,
    /// Notes that are not errors (a credential mechanism not supported...).
    pub notes: Vec<String>,
    /// Elements under `<user/>` fedrouter does not import, by `{namespace}name`, with how
    /// many there were.
    pub ignored: std::collections::BTreeMap<String, usize>,
    /// `href`s of `<xi:include/>` elements, in order, as written.
    pub includes: Vec<String>,
}
