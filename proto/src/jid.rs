//! JIDs: the XMPP address format of RFC 7622, `[localpart "@"] domainpart ["/" resourcepart]`.
//!
//! Parsing splits a string as RFC 7622 §3.1 says (the resourcepart starts at the first `/`,
//! the localpart ends at the first `@` before it) and then enforces each part on its own:
//!
//! | part | rule | RFC 7622 |
//! |---|---|---|
//! | localpart | PRECIS `UsernameCaseMapped` (RFC 8265 §3.3), minus `" & ' / : < > @` | §3.3 |
//! | domainpart | one trailing `.` stripped, then an IP literal or an IDNA2008 name in Unicode form (UTS #46 mapping: lowercase, NFC, A-labels decoded) | §3.2 |
//! | resourcepart | PRECIS `OpaqueString` (RFC 8265 §4.2) | §3.4 |
//!
//! Every part is 1 to 1023 octets once normalised. [`BareJid`], [`FullJid`] and [`Jid`] hold
//! only the normalised form, so their `Eq`, `Hash` and `Ord` compare JIDs the way RFC 7622
//! §3.1 wants (`Juliet@EXAMPLE.com` equals `juliet@example.com`), and `Display` gives it back.
//! [`domain_of`] is the allocation-free shortcut for routing hot paths.
//!
//! # Why not the `jid` crate
//!
//! We considered the `jid` crate from xmpp-rs: its README (0.12, 2025) says it "does not yet
//! implement RFC7622", and its 0.10/0.11 releases depend on the `stringprep` crate, i.e. the
//! RFC 6122 Nodeprep/Resourceprep/Nameprep profiles, under which `fußball` and `fussball` are
//! one JID (RFC 7622 §3.5 says they are two). So this module glues RFC 7622 together itself
//! from `precis-profiles` (RFC 8264/8265) and `idna` (UTS #46), and adds what neither does:
//! the localpart exclusions, the trailing-dot rule, IP literals, the length limits, and
//! rejection of the symbols UTS #46 lets through but IDNA2008 disallows (`♥.example`).
//!
//! # Known limits
//!
//! - `precis-core` takes PRECIS derived properties from the IANA registry, i.e. Unicode 6.3:
//!   a localpart with a letter assigned after Unicode 6.3 is rejected as unassigned.
//! - Domain names follow STD3 rules (letters, digits, hyphens: `a_b.example` is invalid) and
//!   may not start or end a label with `-`; `--` in the third and fourth position is allowed,
//!   as real names use it. DNS length limits (63-octet labels) are left to resolution.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, Hyphens, Uts46};
use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::precis_core::DerivedPropertyValue;
use precis_profiles::precis_core::{IdentifierClass, StringClass};
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// Longest part, in octets of its normalised UTF-8 form (RFC 7622 §3.2, §3.3, §3.4).
pub const MAX_PART_LEN: usize = 1023;

/// Longest raw part we are willing to normalise, in octets. No PRECIS or UTS #46 mapping
/// shrinks a string by more than a factor of three (a full-width letter or a Hangul jamo
/// triple becoming one short code point), so this never rejects a part that would fit
/// [`MAX_PART_LEN`]; it only keeps a hostile peer from making us normalise megabytes.
const MAX_RAW_PART_LEN: usize = 4 * MAX_PART_LEN;

/// Why a string is not a valid JID (RFC 7622).
///
/// All of them map to the `jid-malformed` stanza error (RFC 6120 §8.3.3.8) when the JID
/// comes from a stanza's `to` or `from`, or to `improper-addressing` / `invalid-from` /
/// `host-unknown` stream errors (RFC 6120 §4.9.3) when it comes from a stream header.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// RFC 7622 §3.3.1: a localpart MUST NOT be zero octets (`@example.com`).
    #[error("empty localpart (RFC 7622 §3.3.1)")]
    EmptyLocal,
    /// RFC 7622 §3.2.1: a domainpart MUST NOT be zero octets, also once its trailing dot is
    /// stripped (`juliet@`, `/foobar`, `juliet@.`).
    #[error("empty domainpart (RFC 7622 §3.2.1)")]
    EmptyDomain,
    /// RFC 7622 §3.4.1: a resourcepart MUST NOT be zero octets (`juliet@example.com/`).
    #[error("empty resourcepart (RFC 7622 §3.4.1)")]
    EmptyResource,
    /// RFC 7622 §3.3.1: a localpart MUST NOT be more than 1023 octets once enforced.
    #[error("localpart longer than 1023 octets (RFC 7622 §3.3.1)")]
    LocalTooLong,
    /// RFC 7622 §3.2.1: a domainpart MUST NOT be more than 1023 octets once enforced.
    #[error("domainpart longer than 1023 octets (RFC 7622 §3.2.1)")]
    DomainTooLong,
    /// RFC 7622 §3.4.1: a resourcepart MUST NOT be more than 1023 octets once enforced.
    #[error("resourcepart longer than 1023 octets (RFC 7622 §3.4.1)")]
    ResourceTooLong,
    /// RFC 7622 §3.3.1 and §3.3.2: the localpart fails the PRECIS `UsernameCaseMapped`
    /// profile (space, symbol such as `♚`, compatibility character such as U+2163 `Ⅳ`,
    /// bidi rule) or contains one of `" & ' / : < > @`, which §3.3.1 excludes.
    #[error("localpart is not a valid UsernameCaseMapped string (RFC 7622 §3.3)")]
    InvalidLocal,
    /// RFC 7622 §3.2: the domainpart is neither an IPv4 address, nor a bracketed IPv6
    /// address (RFC 3986 `IP-literal`), nor an internationalised domain name made of
    /// NR-LDH labels and IDNA2008 U-labels (an invalid A-label, an empty label, `_`, a
    /// symbol such as `♥`, a label starting or ending with `-`).
    #[error("domainpart is not an IP address or IDNA2008 domain name (RFC 7622 §3.2)")]
    InvalidDomain,
    /// RFC 7622 §3.4.1 and §3.4.2: the resourcepart fails the PRECIS `OpaqueString` profile
    /// (a control character, an unassigned code point).
    #[error("resourcepart is not a valid OpaqueString (RFC 7622 §3.4)")]
    InvalidResource,
    /// RFC 7622 §3.1: a bare JID was required (`localpart@domainpart` or `domainpart`) and
    /// the string has a resourcepart.
    #[error("a bare JID was expected but a resourcepart is present (RFC 7622 §3.1)")]
    UnexpectedResource,
    /// RFC 7622 §3.1: a full JID was required (`[localpart@]domainpart/resourcepart`) and the
    /// string has no resourcepart.
    #[error("a full JID was expected but there is no resourcepart (RFC 7622 §3.1)")]
    MissingResource,
}

/// The domainpart of an unnormalised JID string, without allocating or validating: the text
/// after the first `@` that comes before the first `/`, up to that `/`, with one trailing
/// `.` removed (RFC 7622 §3.1 and §3.2).
///
/// Shapes: `juliet@example.com/foo@bar` → `example.com`; `example.com/a@b` → `example.com`;
/// `EXAMPLE.com.` → `EXAMPLE.com`; `a@b@c` → `b@c`; `""` → `""`.
///
/// Caveat: the result is *not* normalised and *not* checked. It may differ in ASCII case
/// (`EXAMPLE.com`), be an A-label (`xn--bcher-kva.example` rather than `bücher.example`),
/// use full-width characters, or be empty or invalid. Use it to pick a shard or to look up
/// a hosted domain only after comparing ASCII case-insensitively, and fall back to
/// [`Jid::new`] when the string is not plain ASCII or the look-up misses.
pub fn domain_of(raw: &str) -> &str {
    let head = match memchr::memchr(b'/', raw.as_bytes()) {
        Some(slash) => &raw[..slash],
        None => raw,
    };
    let domain = match memchr::memchr(b'@', head.as_bytes()) {
        Some(at) => &head[at + 1..],
        None => head,
    };
    domain.strip_suffix('.').unwrap_or(domain)
}

// ---------------------------------------------------------------------------------------
// Part enforcement (RFC 7622 §3.2, §3.3, §3.4)
// ---------------------------------------------------------------------------------------

/// RFC 7622 §3.3.1: code points that `IdentifierClass` allows but a localpart must not hold.
fn is_excluded_from_localpart(c: char) -> bool {
    matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@')
}

/// Enforces a localpart (RFC 7622 §3.3.2): `UsernameCaseMapped`, then the §3.3.1 exclusions
/// (checked after width mapping, so full-width `＂` and `＠` are caught too).
fn enforce_local(raw: &str) -> Result<Cow<'_, str>, JidError> {
    if raw.is_empty() {
        return Err(JidError::EmptyLocal);
    }
    if raw.len() > MAX_RAW_PART_LEN {
        return Err(JidError::LocalTooLong);
    }
    let local = UsernameCaseMapped::enforce(raw).map_err(|_| JidError::InvalidLocal)?;
    if !stable(&local, |s| UsernameCaseMapped::enforce(s).ok()) {
        return Err(JidError::InvalidLocal);
    }
    if local.contains(is_excluded_from_localpart) {
        return Err(JidError::InvalidLocal);
    }
    if local.len() > MAX_PART_LEN {
        return Err(JidError::LocalTooLong);
    }
    Ok(local)
}

/// Whether an enforced PRECIS string is itself valid and unchanged by enforcing it again
/// (RFC 8264 §7: the result of the rules must conform to the string class). Normalisation
/// can produce a code point the class allows only in context: U+0387 GREEK ANO TELEIA
/// becomes U+00B7 MIDDLE DOT under NFC, which is CONTEXTO (between two `l` only), so such
/// a part is refused rather than stored in a form that would not parse again (found by
/// the `jid` fuzz target). Unchanged (borrowed) results are stable by construction.
#[allow(
    clippy::ptr_arg,
    reason = "whether the string was changed (Owned) is what is asked"
)]
fn stable(enforced: &Cow<'_, str>, enforce: impl Fn(&str) -> Option<Cow<'_, str>>) -> bool {
    match enforced {
        Cow::Borrowed(_) => true,
        Cow::Owned(s) => enforce(s).is_some_and(|again| again == s.as_str()),
    }
}

/// Enforces a resourcepart (RFC 7622 §3.4.2): `OpaqueString` (non-ASCII spaces become
/// U+0020, NFC).
fn enforce_resource(raw: &str) -> Result<Cow<'_, str>, JidError> {
    if raw.is_empty() {
        return Err(JidError::EmptyResource);
    }
    if raw.len() > MAX_RAW_PART_LEN {
        return Err(JidError::ResourceTooLong);
    }
    let resource = OpaqueString::enforce(raw).map_err(|_| JidError::InvalidResource)?;
    if !stable(&resource, |s| OpaqueString::enforce(s).ok()) {
        return Err(JidError::InvalidResource);
    }
    if resource.len() > MAX_PART_LEN {
        return Err(JidError::ResourceTooLong);
    }
    Ok(resource)
}

/// Enforces a domainpart (RFC 7622 §3.2): strip one trailing dot before anything else, then
/// accept an IPv4 address as is, a bracketed IPv6 address in its RFC 5952 text form, or a
/// domain name through UTS #46 ToUnicode (STD3 rules, lowercase, NFC, A-labels decoded).
fn enforce_domain(raw: &str) -> Result<Cow<'_, str>, JidError> {
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    if raw.len() > MAX_RAW_PART_LEN {
        return Err(JidError::DomainTooLong);
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let addr = inner
            .strip_suffix(']')
            .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
            .ok_or(JidError::InvalidDomain)?;
        return Ok(Cow::Owned(format!("[{addr}]")));
    }
    if raw.parse::<Ipv4Addr>().is_ok() {
        // The standard parser accepts only the canonical dotted quad (no leading zeros).
        return Ok(Cow::Borrowed(raw));
    }
    let (domain, result) =
        Uts46::new().to_unicode(raw.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast);
    if result.is_err()
        || domain.split('.').any(|l| l.is_empty() || !is_u_label_ok(l))
        || !is_idna2008(&domain)
    {
        return Err(JidError::InvalidDomain);
    }
    if domain.len() > MAX_PART_LEN {
        return Err(JidError::DomainTooLong);
    }
    Ok(domain)
}

/// A label of ToUnicode's output holding non-ASCII (a U-label) must not hold `--` in its
/// third and fourth positions (RFC 5891 §4.2.3.1). UTS #46 checks this only with
/// `CheckHyphens`, which would also refuse ASCII labels such as `ab--cd` that domains use
/// (so [`Hyphens::CheckFirstLast`] above). Without it an A-label such as `xn--xn--…`
/// decodes to a U-label starting `xn--` that no longer parses: the normalised JID would
/// not be a fixed point (fuzz finding 8, `tests/fuzz/README.md`).
fn is_u_label_ok(label: &str) -> bool {
    label.is_ascii() || label.get(2..4) != Some("--")
}

/// Rejects the non-ASCII code points that UTS #46 keeps for IDNA2003 compatibility but
/// IDNA2008 (RFC 5892) disallows: symbols, punctuation and the like. For code points of
/// Unicode 6.3 and earlier, PRECIS `IdentifierClass` disallows the same categories (both
/// build on RFC 5892's Exceptions and BackwardCompatible lists); later code points are left
/// to UTS #46.
fn is_idna2008(domain: &str) -> bool {
    let class = IdentifierClass::default();
    domain.chars().filter(|c| !c.is_ascii()).all(|c| {
        !matches!(
            class.get_value_from_char(c),
            DerivedPropertyValue::SpecClassDis | DerivedPropertyValue::Disallowed
        )
    })
}

/// Converts an offset (bounded by three parts of at most [`MAX_PART_LEN`] octets) to `u16`.
fn offset(n: usize) -> u16 {
    u16::try_from(n).expect("JID offsets are bounded by 2 * 1023 + 1")
}

/// Writes `[node@]domain[/resource]` into one exactly-sized allocation.
fn assemble(node: Option<&str>, domain: &str, resource: Option<&str>) -> (Box<str>, u16, u16) {
    let len = node.map_or(0, |n| n.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1);
    let mut s = String::with_capacity(len);
    let mut node_len = 0;
    if let Some(node) = node {
        s.push_str(node);
        s.push('@');
        node_len = offset(node.len());
    }
    s.push_str(domain);
    let mut slash = 0;
    if let Some(resource) = resource {
        slash = offset(s.len());
        s.push('/');
        s.push_str(resource);
    }
    (s.into_boxed_str(), node_len, slash)
}

/// A JID split at RFC 7622 §3.1 boundaries, each part enforced.
struct Enforced<'a> {
    node: Option<Cow<'a, str>>,
    domain: Cow<'a, str>,
    resource: Option<Cow<'a, str>>,
}

impl<'a> Enforced<'a> {
    /// RFC 7622 §3.1: the resourcepart is everything after the first `/`; the localpart is
    /// everything before the first `@` that precedes it; the domainpart is what remains.
    fn parse(raw: &'a str) -> Result<Self, JidError> {
        let (head, resource) = match raw.find('/') {
            Some(slash) => (&raw[..slash], Some(&raw[slash + 1..])),
            None => (raw, None),
        };
        let (node, domain) = match head.find('@') {
            Some(at) => (Some(&head[..at]), &head[at + 1..]),
            None => (None, head),
        };
        Ok(Self {
            node: node.map(enforce_local).transpose()?,
            domain: enforce_domain(domain)?,
            resource: resource.map(enforce_resource).transpose()?,
        })
    }

    fn assemble(&self) -> (Box<str>, u16, u16) {
        assemble(self.node.as_deref(), &self.domain, self.resource.as_deref())
    }
}

// ---------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------

macro_rules! part_type {
    ($(#[$doc:meta])* $name:ident, $enforce:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// Enforces `raw` (see the type's documentation) and keeps the normalised form.
            pub fn new(raw: &str) -> Result<Self, JidError> {
                Ok(Self($enforce(raw)?.into()))
            }

            /// The normalised form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = JidError;

            /// Same as [`Self::new`].
            fn from_str(raw: &str) -> Result<Self, JidError> {
                Self::new(raw)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&&*self.0).finish()
            }
        }
    };
}

part_type!(
    /// A localpart (RFC 7622 §3.3), the `juliet` of `juliet@example.com`: enforced with the
    /// PRECIS `UsernameCaseMapped` profile (width-mapped, lowercased, NFC), without any of
    /// `" & ' / : < > @`, 1 to 1023 octets. `Σ` becomes `σ`, `ß` stays `ß`.
    ///
    /// Errors: [`JidError::EmptyLocal`], [`JidError::LocalTooLong`], [`JidError::InvalidLocal`].
    NodePart,
    enforce_local
);

part_type!(
    /// A domainpart (RFC 7622 §3.2), the `example.com` of `juliet@example.com`: one trailing
    /// `.` stripped, then an IPv4 address (`192.0.2.1`), a bracketed IPv6 address in RFC
    /// 5952 form (`[2001:db8::1]`), or an IDNA2008 domain name in Unicode form
    /// (`Bücher.EXAMPLE` and `xn--bcher-kva.example` both become `bücher.example`), 1 to 1023
    /// octets.
    ///
    /// Errors: [`JidError::EmptyDomain`], [`JidError::DomainTooLong`],
    /// [`JidError::InvalidDomain`].
    DomainPart,
    enforce_domain
);

part_type!(
    /// A resourcepart (RFC 7622 §3.4), the `foo bar` of `juliet@example.com/foo bar`:
    /// enforced with the PRECIS `OpaqueString` profile (non-ASCII spaces become U+0020, NFC;
    /// case, `@` and `/` are kept), 1 to 1023 octets.
    ///
    /// Errors: [`JidError::EmptyResource`], [`JidError::ResourceTooLong`],
    /// [`JidError::InvalidResource`].
    ResourcePart,
    enforce_resource
);

// ---------------------------------------------------------------------------------------
// JIDs
// ---------------------------------------------------------------------------------------

/// A bare JID (RFC 7622 §1.4, §3.1): `localpart@domainpart` or `domainpart`, normalised.
///
/// Held as one string plus the length of the localpart (0 when there is none: a localpart
/// is never empty), so accessors do not allocate. `Eq`, `Hash` and `Ord` use the normalised
/// string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BareJid {
    s: Box<str>,
    node_len: u16,
}

/// A full JID (RFC 7622 §1.4, §3.1): `[localpart@]domainpart/resourcepart`, normalised.
///
/// Held as one string plus the length of the localpart (0 when there is none) and the
/// offset of the `/` that starts the resourcepart. `Eq`, `Hash` and `Ord` use the
/// normalised string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid {
    s: Box<str>,
    node_len: u16,
    slash: u16,
}

/// Any JID (RFC 7622 §3.1): bare or full, as parsed.
///
/// `Eq` and `Hash` use the normalised string (a bare JID never equals a full one); `Ord`
/// orders by the normalised string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Jid {
    /// No resourcepart: `localpart@domainpart` or `domainpart`.
    Bare(BareJid),
    /// With a resourcepart: `[localpart@]domainpart/resourcepart`.
    Full(FullJid),
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<BareJid>() == 24);
    assert!(std::mem::size_of::<FullJid>() == 24);
    assert!(std::mem::size_of::<Jid>() == 32);
};

/// The localpart of `s`, given the localpart length (0 for none).
fn node_of(s: &str, node_len: u16) -> Option<&str> {
    (node_len != 0).then(|| &s[..usize::from(node_len)])
}

/// The offset of the domainpart in `s`, given the localpart length (0 for none).
fn domain_start(node_len: u16) -> usize {
    if node_len == 0 {
        0
    } else {
        usize::from(node_len) + 1
    }
}

impl BareJid {
    /// Parses and normalises a bare JID, `localpart@domainpart` or `domainpart`
    /// (RFC 7622 §3.1 to §3.3).
    ///
    /// Errors: any part error of [`JidError`], and [`JidError::UnexpectedResource`] when the
    /// string has a `/`.
    pub fn new(raw: &str) -> Result<Self, JidError> {
        let parts = Enforced::parse(raw)?;
        if parts.resource.is_some() {
            return Err(JidError::UnexpectedResource);
        }
        let (s, node_len, _) = parts.assemble();
        Ok(Self { s, node_len })
    }

    /// Builds `node@domain` or `domain` from enforced parts (RFC 7622 §3.1); cannot fail.
    pub fn from_parts(node: Option<&NodePart>, domain: &DomainPart) -> Self {
        let (s, node_len, _) = assemble(node.map(NodePart::as_str), domain.as_str(), None);
        Self { s, node_len }
    }

    /// The normalised string, e.g. `juliet@example.com`.
    pub fn as_str(&self) -> &str {
        &self.s
    }

    /// The localpart (RFC 7622 §3.3), if any: `juliet` for `juliet@example.com`.
    pub fn node(&self) -> Option<&str> {
        node_of(&self.s, self.node_len)
    }

    /// The domainpart (RFC 7622 §3.2): `example.com` for `juliet@example.com`.
    pub fn domain(&self) -> &str {
        &self.s[domain_start(self.node_len)..]
    }

    /// `juliet@example.com` + `balcony` → `juliet@example.com/balcony` (RFC 7622 §3.4).
    pub fn with_resource(&self, resource: &ResourcePart) -> FullJid {
        let (s, node_len, slash) = assemble(self.node(), self.domain(), Some(resource.as_str()));
        FullJid { s, node_len, slash }
    }

    /// [`Self::with_resource`] from a raw resourcepart, enforced with `OpaqueString`.
    ///
    /// Errors: [`JidError::EmptyResource`], [`JidError::ResourceTooLong`],
    /// [`JidError::InvalidResource`].
    pub fn with_resource_str(&self, resource: &str) -> Result<FullJid, JidError> {
        Ok(self.with_resource(&ResourcePart::new(resource)?))
    }
}

impl FullJid {
    /// Parses and normalises a full JID, `[localpart@]domainpart/resourcepart`
    /// (RFC 7622 §3.1 to §3.4).
    ///
    /// Errors: any part error of [`JidError`], and [`JidError::MissingResource`] when the
    /// string has no `/`.
    pub fn new(raw: &str) -> Result<Self, JidError> {
        let parts = Enforced::parse(raw)?;
        if parts.resource.is_none() {
            return Err(JidError::MissingResource);
        }
        let (s, node_len, slash) = parts.assemble();
        Ok(Self { s, node_len, slash })
    }

    /// Builds `[node@]domain/resource` from enforced parts (RFC 7622 §3.1); cannot fail.
    pub fn from_parts(
        node: Option<&NodePart>,
        domain: &DomainPart,
        resource: &ResourcePart,
    ) -> Self {
        BareJid::from_parts(node, domain).with_resource(resource)
    }

    /// The normalised string, e.g. `juliet@example.com/balcony`.
    pub fn as_str(&self) -> &str {
        &self.s
    }

    /// The localpart (RFC 7622 §3.3), if any: `juliet` for `juliet@example.com/balcony`.
    pub fn node(&self) -> Option<&str> {
        node_of(&self.s, self.node_len)
    }

    /// The domainpart (RFC 7622 §3.2): `example.com` for `juliet@example.com/balcony`.
    pub fn domain(&self) -> &str {
        &self.s[domain_start(self.node_len)..usize::from(self.slash)]
    }

    /// The resourcepart (RFC 7622 §3.4): `balcony` for `juliet@example.com/balcony`.
    pub fn resource(&self) -> &str {
        &self.s[usize::from(self.slash) + 1..]
    }

    /// The bare JID (RFC 7622 §1.4): `juliet@example.com/balcony` → `juliet@example.com`.
    /// Allocates.
    pub fn to_bare(&self) -> BareJid {
        BareJid {
            s: self.s[..usize::from(self.slash)].into(),
            node_len: self.node_len,
        }
    }

    /// The same bare JID with another resourcepart: `juliet@example.com/balcony` +
    /// `garden` → `juliet@example.com/garden`.
    pub fn with_resource(&self, resource: &ResourcePart) -> FullJid {
        let (s, node_len, slash) = assemble(self.node(), self.domain(), Some(resource.as_str()));
        FullJid { s, node_len, slash }
    }

    /// [`Self::with_resource`] from a raw resourcepart, enforced with `OpaqueString`.
    ///
    /// Errors: [`JidError::EmptyResource`], [`JidError::ResourceTooLong`],
    /// [`JidError::InvalidResource`].
    pub fn with_resource_str(&self, resource: &str) -> Result<FullJid, JidError> {
        Ok(self.with_resource(&ResourcePart::new(resource)?))
    }
}

impl Jid {
    /// Parses and normalises any JID, `[localpart@]domainpart[/resourcepart]`
    /// (RFC 7622 §3.1 to §3.4): [`Jid::Full`] when it has a `/`, else [`Jid::Bare`].
    ///
    /// Errors: [`JidError::EmptyLocal`], [`JidError::EmptyDomain`],
    /// [`JidError::EmptyResource`], the `*TooLong` and the `Invalid*` variants.
    pub fn new(raw: &str) -> Result<Self, JidError> {
        let parts = Enforced::parse(raw)?;
        let (s, node_len, slash) = parts.assemble();
        Ok(if parts.resource.is_some() {
            Jid::Full(FullJid { s, node_len, slash })
        } else {
            Jid::Bare(BareJid { s, node_len })
        })
    }

    /// The normalised string, e.g. `juliet@example.com` or `example.com/foobar`.
    pub fn as_str(&self) -> &str {
        match self {
            Jid::Bare(bare) => bare.as_str(),
            Jid::Full(full) => full.as_str(),
        }
    }

    /// The localpart (RFC 7622 §3.3), if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Jid::Bare(bare) => bare.node(),
            Jid::Full(full) => full.node(),
        }
    }

    /// The domainpart (RFC 7622 §3.2).
    pub fn domain(&self) -> &str {
        match self {
            Jid::Bare(bare) => bare.domain(),
            Jid::Full(full) => full.domain(),
        }
    }

    /// The resourcepart (RFC 7622 §3.4), if any.
    pub fn resource(&self) -> Option<&str> {
        match self {
            Jid::Bare(_) => None,
            Jid::Full(full) => Some(full.resource()),
        }
    }

    /// True for [`Jid::Bare`] (no resourcepart).
    pub fn is_bare(&self) -> bool {
        matches!(self, Jid::Bare(_))
    }

    /// True for [`Jid::Full`] (with a resourcepart).
    pub fn is_full(&self) -> bool {
        matches!(self, Jid::Full(_))
    }

    /// The bare JID (RFC 7622 §1.4): drops the resourcepart. Allocates.
    pub fn to_bare(&self) -> BareJid {
        match self {
            Jid::Bare(bare) => bare.clone(),
            Jid::Full(full) => full.to_bare(),
        }
    }

    /// The bare JID, reusing the allocation when there is no resourcepart.
    pub fn into_bare(self) -> BareJid {
        match self {
            Jid::Bare(bare) => bare,
            Jid::Full(full) => full.to_bare(),
        }
    }

    /// The bare JID with `resource` as its resourcepart (replacing any).
    pub fn with_resource(&self, resource: &ResourcePart) -> FullJid {
        match self {
            Jid::Bare(bare) => bare.with_resource(resource),
            Jid::Full(full) => full.with_resource(resource),
        }
    }

    /// The full JID, or the bare one back in `Err`.
    pub fn try_into_full(self) -> Result<FullJid, BareJid> {
        match self {
            Jid::Full(full) => Ok(full),
            Jid::Bare(bare) => Err(bare),
        }
    }
}

impl PartialOrd for Jid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Jid {
    /// By normalised string; consistent with `Eq` because only a full JID contains `/`.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl From<BareJid> for Jid {
    fn from(bare: BareJid) -> Self {
        Jid::Bare(bare)
    }
}

impl From<FullJid> for Jid {
    fn from(full: FullJid) -> Self {
        Jid::Full(full)
    }
}

impl PartialEq<BareJid> for Jid {
    fn eq(&self, other: &BareJid) -> bool {
        matches!(self, Jid::Bare(bare) if bare == other)
    }
}

impl PartialEq<FullJid> for Jid {
    fn eq(&self, other: &FullJid) -> bool {
        matches!(self, Jid::Full(full) if full == other)
    }
}

macro_rules! jid_traits {
    ($name:ident) => {
        impl FromStr for $name {
            type Err = JidError;

            /// Same as `new`.
            fn from_str(raw: &str) -> Result<Self, JidError> {
                Self::new(raw)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            /// The normalised form, e.g. `juliet@example.com/balcony`.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name))
                    .field(&self.as_str())
                    .finish()
            }
        }
    };
}

jid_traits!(BareJid);
jid_traits!(FullJid);
jid_traits!(Jid);

#[cfg(test)]
mod tests;
