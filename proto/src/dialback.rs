//! Server Dialback (XEP-0220): dialback keys generated and checked per XEP-0185, and the
//! data types of a dialback outcome.
//!
//! This module is pure: no I/O, no clock. The S2S stream state machine ([`crate::stream`])
//! sends and answers `<db:result/>` and `<db:verify/>` elements; it asks this module for the
//! key to put in them ([`DialbackSecret::key`]), whether a key it is asked about is ours
//! ([`DialbackSecret::verify`]), and how to describe an outcome ([`DialbackResult`]).
//!
//! # Roles (XEP-0220 §1.3)
//!
//! - *Initiating Server* (older texts: *Originating Server*): opens the stream and claims the
//!   *Sender Domain*; it sends `<db:result>KEY</db:result>`.
//! - *Receiving Server*: hosts the *Target Domain*; it asks the Authoritative Server about
//!   the key with `<db:verify id='STREAM-ID'>KEY</db:verify>`.
//! - *Authoritative Server*: found by DNS for the Sender Domain; it recomputes the key from
//!   the shared secret and answers `valid` or `invalid`.
//!
//! fedrouter plays the Initiating and the Authoritative role for its local domains with the
//! same [`DialbackSecret`], so it never has to remember the keys it sent.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::condition::StanzaCondition;

/// The dialback namespace, `jabber:server:dialback` (XEP-0220 §2.4.1), declared on S2S
/// stream headers (conventionally with the `db` prefix).
pub const NS_DIALBACK: &str = "jabber:server:dialback";

/// The dialback stream feature namespace, `urn:xmpp:features:dialback` (XEP-0220 §2.4.2):
/// `<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>` advertises support
/// for dialback errors.
pub const NS_DIALBACK_FEATURES: &str = "urn:xmpp:features:dialback";

type HmacSha256 = Hmac<Sha256>;

/// The secret from which dialback keys are derived (XEP-0185 §2).
///
/// Holds only what the key computation needs: an HMAC-SHA256 state keyed with the lowercase
/// hexadecimal SHA-256 of the secret (XEP-0185 §2, notes 2 and 4). The secret itself is not
/// kept, and [`Debug`](fmt::Debug) prints nothing derived from it.
///
/// XEP-0185 §2 note 3: the secret is either configured (it must then be the same on every
/// fedrouter instance that serves the same domains, since any of them may be asked to verify
/// a key another one sent) or generated at start-up with [`DialbackSecret::generate`], which
/// is enough for a single instance.
#[derive(Clone)]
pub struct DialbackSecret {
    mac: HmacSha256,
}

impl DialbackSecret {
    /// A secret from configured bytes (any length; XEP-0185 hashes it first).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let hashed = hex::encode(Sha256::digest(secret.as_ref()));
        let mac =
            HmacSha256::new_from_slice(hashed.as_bytes()).expect("HMAC accepts keys of any length");
        DialbackSecret { mac }
    }

    /// A fresh random secret of 32 bytes from the thread-local CSPRNG (XEP-0185 §2 note 3:
    /// "generated as a random string when starting the XMPP server").
    ///
    /// The randomness is injected (the core has none of its own): pass the runtime's
    /// CSPRNG, e.g. `&mut rand::rng()`.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::new(bytes)
    }

    /// The dialback key for a stream, XEP-0185 §2:
    ///
    /// ```text
    /// key = HEX( HMAC-SHA256( HEX(SHA256(Secret)), "{Receiving} {Originating} {Stream ID}" ) )
    /// ```
    ///
    /// - `receiving`: the Receiving Server's domain, i.e. the Target Domain (the `to` of
    ///   `<db:result/>`, the `from` of `<db:verify/>`);
    /// - `originating`: the Originating (Initiating) Server's domain, i.e. the Sender Domain
    ///   (the `from` of `<db:result/>`, the `to` of `<db:verify/>`);
    /// - `stream_id`: the `id` the Receiving Server put on its response stream header.
    ///
    /// Returns 64 lowercase hexadecimal characters. The inputs are used byte for byte, so
    /// both sides must pass the domains exactly as they appear on the wire (normalised per
    /// RFC 7622 by the caller).
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        hex::encode(
            self.mac_for(receiving, originating, stream_id)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `key` is the dialback key for this stream (the Authoritative Server's check,
    /// XEP-0220 §2.2.2). The arguments are as for [`DialbackSecret::key`].
    ///
    /// The comparison is constant-time (`hmac::Mac::verify_slice`). Surrounding ASCII
    /// whitespace is ignored (the key is XML character data and may be pretty-printed);
    /// hexadecimal digits are accepted in either case. A key that is not 64 hexadecimal
    /// digits is simply not valid: this returns `false`, it never panics.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let Ok(presented) = hex::decode(key.trim_ascii()) else {
            return false;
        };
        self.mac_for(receiving, originating, stream_id)
            .verify_slice(&presented)
            .is_ok()
    }

    fn mac_for(&self, receiving: &str, originating: &str, stream_id: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        mac
    }
}

impl fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DialbackSecret(..)")
    }
}

/// The outcome of a dialback negotiation: the `type` of a `<db:result/>` or `<db:verify/>`
/// answer (XEP-0220 §2.1, §2.2, §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialbackResult {
    /// `type='valid'`: the key was verified; stanzas may flow for the domain pair.
    Valid,
    /// `type='invalid'`: the key was not ours; the Sender Domain is being spoofed. The
    /// Receiving Server closes the stream (XEP-0220 §2.2.1).
    Invalid,
    /// `type='error'`: the key could not be checked; not fatal to the stream (§2.5).
    Error(DialbackErrorCondition),
}

impl DialbackResult {
    /// The `type` attribute value: `"valid"`, `"invalid"` or `"error"`.
    pub fn type_str(self) -> &'static str {
        match self {
            DialbackResult::Valid => "valid",
            DialbackResult::Invalid => "invalid",
            DialbackResult::Error(_) => "error",
        }
    }

    /// Parses an answer from its `type` attribute and, for `type='error'`, the element name
    /// of the stanza error condition inside `<error/>` (`None` if there was none).
    ///
    /// Returns `None` for a missing or unknown `type` (the element is then a request, or
    /// malformed). An error with an unknown or missing condition is
    /// `Other(StanzaCondition::UndefinedCondition)`.
    pub fn from_type(type_attr: Option<&str>, condition: Option<&str>) -> Option<Self> {
        match type_attr? {
            "valid" => Some(DialbackResult::Valid),
            "invalid" => Some(DialbackResult::Invalid),
            "error" => Some(DialbackResult::Error(
                condition
                    .and_then(DialbackErrorCondition::from_name)
                    .unwrap_or(DialbackErrorCondition::Other(
                        StanzaCondition::UndefinedCondition,
                    )),
            )),
            _ => None,
        }
    }

    /// The stanza error with which the Initiating Server returns the stanzas it queued for
    /// the domain pair, or `None` when they can be sent. fedrouter reports a failed
    /// federation with the two RFC 6120 §8.3.3 conditions meant for it, by whether
    /// trying again later can help:
    ///
    /// - `remote-server-not-found` (§8.3.3.15, `cancel`) when the remote server refused
    ///   us: `invalid`, or a dialback error other than the ones below (`item-not-found`:
    ///   it does not host the domain; `policy-violation`, `not-authorized`, `forbidden`,
    ///   `not-acceptable`, ...);
    /// - `remote-server-timeout` (§8.3.3.16, `wait`) when it could not verify our key for
    ///   a passing reason: `remote-server-timeout`, `remote-connection-failed` (it could
    ///   not reach our authoritative server), `resource-constraint`.
    ///
    /// XEP-0220 §2.1.1 and §2.5 ask for `internal-server-error` after `invalid` and
    /// `remote-server-timeout` after any dialback error; the first does not tell the
    /// sender the remote server refused us, the second tells it to retry a refusal, so
    /// fedrouter uses the two conditions above instead (DESIGN.md "Failure semantics").
    pub fn bounce_condition(self) -> Option<StanzaCondition> {
        use DialbackErrorCondition as E;
        match self {
            DialbackResult::Valid => None,
            DialbackResult::Error(
                E::RemoteServerTimeout | E::RemoteConnectionFailed | E::ResourceConstraint,
            ) => Some(StanzaCondition::RemoteServerTimeout),
            DialbackResult::Invalid | DialbackResult::Error(_) => {
                Some(StanzaCondition::RemoteServerNotFound)
            }
        }
    }
}

/// A dialback error condition: the stanza error condition (namespace
/// `urn:ietf:params:xml:ns:xmpp-stanzas`) inside the `<error/>` of a `type='error'`
/// dialback answer, XEP-0220 §2.5 (table "Dialback error conditions", version 1.1).
///
/// The named variants are the table's. The table is not exhaustive: any RFC 6120 §8.3.3
/// stanza condition may be used, and is carried by [`Other`](Self::Other). The constructors
/// never put a condition that has a named variant into `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DialbackErrorCondition {
    /// `<item-not-found/>`: the `to` domain of the request is not hosted by the server
    /// answering (steps 3 and 4).
    ItemNotFound,
    /// `<remote-connection-failed/>`: the Receiving Server could not connect to the
    /// Authoritative Server (step 4). RFC 6120 defines it only as a stream error
    /// (§4.9.3.15); XEP-0220 uses it here as a stanza condition.
    RemoteConnectionFailed,
    /// `<remote-server-not-found/>`: the Authoritative Server answered `item-not-found` or a
    /// `host-unknown` stream error (step 4). Also what a Receiving Server must send for any
    /// error in step 3.
    RemoteServerNotFound,
    /// `<remote-server-timeout/>`: the connection to the Authoritative Server failed, e.g. it
    /// closed the stream without verifying the key (step 4).
    RemoteServerTimeout,
    /// `<policy-violation/>`: the Receiving Server requires TLS before dialback and the
    /// request was sent without it (steps 3 and 4).
    PolicyViolation,
    /// `<not-authorized/>`: the Receiving Server requires a valid certificate (or other proof)
    /// for the Sender Domain and none was given (step 3).
    NotAuthorized,
    /// `<forbidden/>`: the Authoritative Server answered `invalid`; sent instead of relaying
    /// `invalid`, so as to keep the stream (step 4, §2.1.2).
    Forbidden,
    /// `<not-acceptable/>`: the Receiving Server could not establish the asserted identity
    /// (step 4).
    NotAcceptable,
    /// `<resource-constraint/>`: the Receiving Server cannot add another domain pair to this
    /// stream; the Initiating Server should try once on a new connection (step 4).
    ResourceConstraint,
    /// Any other RFC 6120 §8.3.3 stanza condition, e.g. `internal-server-error`; an unknown
    /// or missing condition is `Other(StanzaCondition::UndefinedCondition)`.
    Other(StanzaCondition),
}

/// The stanza conditions that are not named variants of [`DialbackErrorCondition`], for
/// parsing [`DialbackErrorCondition::Other`] (RFC 6120 §8.3.3).
const OTHER_STANZA_CONDITIONS: [StanzaCondition; 11] = [
    StanzaCondition::BadRequest,
    StanzaCondition::Conflict,
    StanzaCondition::FeatureNotImplemented,
    StanzaCondition::InternalServerError,
    StanzaCondition::JidMalformed,
    StanzaCondition::NotAllowed,
    StanzaCondition::RecipientUnavailable,
    StanzaCondition::ServiceUnavailable,
    StanzaCondition::SubscriptionRequired,
    StanzaCondition::UndefinedCondition,
    StanzaCondition::UnexpectedRequest,
];

impl DialbackErrorCondition {
    /// The named variants, in the order of the XEP-0220 §2.5 table.
    pub const TABLE: [DialbackErrorCondition; 9] = [
        DialbackErrorCondition::ItemNotFound,
        DialbackErrorCondition::RemoteConnectionFailed,
        DialbackErrorCondition::RemoteServerNotFound,
        DialbackErrorCondition::RemoteServerTimeout,
        DialbackErrorCondition::PolicyViolation,
        DialbackErrorCondition::NotAuthorized,
        DialbackErrorCondition::Forbidden,
        DialbackErrorCondition::NotAcceptable,
        DialbackErrorCondition::ResourceConstraint,
    ];

    /// The condition for a stanza condition: its named variant if it has one, else `Other`.
    pub fn from_stanza_condition(condition: StanzaCondition) -> Self {
        Self::TABLE
            .into_iter()
            .find(|c| c.stanza_condition() == Some(condition))
            .unwrap_or(DialbackErrorCondition::Other(condition))
    }

    /// The condition's element name, e.g. `"item-not-found"`.
    pub fn as_str(self) -> &'static str {
        use DialbackErrorCondition::*;
        match self {
            ItemNotFound => "item-not-found",
            RemoteConnectionFailed => "remote-connection-failed",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            PolicyViolation => "policy-violation",
            NotAuthorized => "not-authorized",
            Forbidden => "forbidden",
            NotAcceptable => "not-acceptable",
            ResourceConstraint => "resource-constraint",
            Other(c) => c.as_str(),
        }
    }

    /// Parses a condition element name; `None` for a name that is neither in the XEP-0220
    /// table nor an RFC 6120 stanza condition.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::TABLE
            .into_iter()
            .find(|c| c.as_str() == name)
            .or_else(|| {
                OTHER_STANZA_CONDITIONS
                    .into_iter()
                    .find(|c| c.as_str() == name)
                    .map(DialbackErrorCondition::Other)
            })
    }

    /// The same condition as an RFC 6120 §8.3.3 [`StanzaCondition`]; `None` for
    /// `remote-connection-failed`, which RFC 6120 defines only as a stream error.
    pub fn stanza_condition(self) -> Option<StanzaCondition> {
        use DialbackErrorCondition::*;
        Some(match self {
            ItemNotFound => StanzaCondition::ItemNotFound,
            RemoteConnectionFailed => return None,
            RemoteServerNotFound => StanzaCondition::RemoteServerNotFound,
            RemoteServerTimeout => StanzaCondition::RemoteServerTimeout,
            PolicyViolation => StanzaCondition::PolicyViolation,
            NotAuthorized => StanzaCondition::NotAuthorized,
            Forbidden => StanzaCondition::Forbidden,
            NotAcceptable => StanzaCondition::NotAcceptable,
            ResourceConstraint => StanzaCondition::ResourceConstraint,
            Other(c) => c,
        })
    }

    /// The `type` attribute of the `<error/>` element: the RFC 6120 §8.3.3 default for the
    /// condition (`cancel` for `item-not-found`, as in the XEP-0220 examples), `cancel` for
    /// `remote-connection-failed`.
    pub fn error_type(self) -> &'static str {
        self.stanza_condition()
            .map_or("cancel", StanzaCondition::default_type)
    }
}

impl fmt::Display for DialbackErrorCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    /// Seeds for the injected randomness: the tests are deterministic.
    const SEED: u64 = 0x00DB_5EED;
    use super::*;

    /// XEP-0185 §3: secret 's3cr3tf0rd14lb4ck', Receiving Server xmpp.example.com,
    /// Originating Server example.org, stream ID D60000229F.
    const XEP0185_KEY: &str = "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643";

    #[test]
    fn xep0185_worked_example() {
        // The intermediate value the XEP shows: the HMAC key is the hex SHA-256 of the secret.
        assert_eq!(
            hex::encode(Sha256::digest(b"s3cr3tf0rd14lb4ck")),
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        let secret = DialbackSecret::new("s3cr3tf0rd14lb4ck");
        assert_eq!(
            secret.key("xmpp.example.com", "example.org", "D60000229F"),
            XEP0185_KEY
        );
        assert!(secret.verify("xmpp.example.com", "example.org", "D60000229F", XEP0185_KEY));
    }

    #[test]
    fn xep0220_examples() {
        // XEP-0220 §2.1.1, example 1: capulet.example → montague.example.
        let capulet = DialbackSecret::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            capulet.key("montague.example", "capulet.example", "D60000229F"),
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"
        );
        // XEP-0220 §2.2.2: the Authoritative Server for montague.example checks the key.
        let montague = DialbackSecret::new("d14lb4ck43v3r");
        assert!(montague.verify(
            "capulet.example",
            "montague.example",
            "417GAF25",
            "225cc5aa6a071133249d25fef42ae516fc7a86c523aa1c6980a7f73e784c972d"
        ));
    }

    #[test]
    fn keys_are_deterministic_and_lowercase_hex() {
        let secret = DialbackSecret::generate(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(SEED),
        );
        let a = secret.key("gmail.com", "cupdomain.com", "abc123");
        let b = secret.key("gmail.com", "cupdomain.com", "abc123");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        // A clone keys the same way.
        assert_eq!(
            secret.clone().key("gmail.com", "cupdomain.com", "abc123"),
            a
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let secret = DialbackSecret::new("s");
        let base = secret.key("r.example", "o.example", "id1");
        assert_ne!(secret.key("r.example", "o.example", "id2"), base);
        assert_ne!(secret.key("x.example", "o.example", "id1"), base);
        assert_ne!(secret.key("r.example", "x.example", "id1"), base);
        // Receiving and originating are not interchangeable.
        assert_ne!(secret.key("o.example", "r.example", "id1"), base);
        // A different secret gives a different key.
        assert_ne!(
            DialbackSecret::new("t").key("r.example", "o.example", "id1"),
            base
        );
        // Two generated secrets differ.
        assert_ne!(
            DialbackSecret::generate(
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(SEED)
            )
            .key("r", "o", "i"),
            DialbackSecret::generate(
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(SEED + 1)
            )
            .key("r", "o", "i")
        );
    }

    #[test]
    fn verify_rejects_wrong_and_malformed_keys() {
        let secret = DialbackSecret::new("s3cr3tf0rd14lb4ck");
        let (r, o, id) = ("xmpp.example.com", "example.org", "D60000229F");
        // Wrong stream id, wrong domains, another secret's key.
        assert!(!secret.verify(r, o, "D60000229E", XEP0185_KEY));
        assert!(!secret.verify(o, r, id, XEP0185_KEY));
        let other = DialbackSecret::new("other").key(r, o, id);
        assert!(!secret.verify(r, o, id, &other));
        // One flipped digit.
        let mut flipped = XEP0185_KEY.to_owned();
        flipped.replace_range(0..1, "4");
        assert!(!secret.verify(r, o, id, &flipped));
        // Malformed: not hex, odd length, truncated, too long, empty.
        assert!(!secret.verify(r, o, id, "zz"));
        assert!(!secret.verify(r, o, id, &XEP0185_KEY[..63]));
        assert!(!secret.verify(r, o, id, &XEP0185_KEY[..62]));
        assert!(!secret.verify(r, o, id, &format!("{XEP0185_KEY}00")));
        assert!(!secret.verify(r, o, id, ""));
        assert!(!secret.verify(r, o, id, "not a key at all"));
        // Whitespace around the character data and upper case are accepted.
        assert!(secret.verify(r, o, id, &format!("\n    {XEP0185_KEY}\n")));
        assert!(secret.verify(r, o, id, &XEP0185_KEY.to_ascii_uppercase()));
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let secret = DialbackSecret::new("s3cr3tf0rd14lb4ck");
        let shown = format!("{secret:?}");
        assert_eq!(shown, "DialbackSecret(..)");
        assert!(!shown.contains("s3cr3t"));
        assert!(!shown.contains("a7136eb1"));
    }

    #[test]
    fn results_and_conditions() {
        assert_eq!(
            DialbackResult::from_type(Some("valid"), None),
            Some(DialbackResult::Valid)
        );
        assert_eq!(
            DialbackResult::from_type(Some("invalid"), None),
            Some(DialbackResult::Invalid)
        );
        assert_eq!(
            DialbackResult::from_type(Some("error"), Some("item-not-found")),
            Some(DialbackResult::Error(DialbackErrorCondition::ItemNotFound))
        );
        assert_eq!(
            DialbackResult::from_type(Some("error"), Some("bogus")),
            Some(DialbackResult::Error(DialbackErrorCondition::Other(
                StanzaCondition::UndefinedCondition
            )))
        );
        assert_eq!(DialbackResult::from_type(None, None), None);
        assert_eq!(DialbackResult::from_type(Some("maybe"), None), None);

        assert_eq!(DialbackResult::Valid.bounce_condition(), None);
        assert_eq!(
            DialbackResult::Invalid.bounce_condition(),
            Some(StanzaCondition::RemoteServerNotFound)
        );
        // Refusals: the sender should not retry.
        for c in [
            DialbackErrorCondition::ItemNotFound,
            DialbackErrorCondition::RemoteServerNotFound,
            DialbackErrorCondition::PolicyViolation,
            DialbackErrorCondition::NotAuthorized,
            DialbackErrorCondition::Forbidden,
            DialbackErrorCondition::NotAcceptable,
            DialbackErrorCondition::Other(StanzaCondition::UndefinedCondition),
        ] {
            assert_eq!(
                DialbackResult::Error(c).bounce_condition(),
                Some(StanzaCondition::RemoteServerNotFound),
                "{c}"
            );
        }
        // Passing failures: the sender may retry.
        for c in [
            DialbackErrorCondition::RemoteServerTimeout,
            DialbackErrorCondition::RemoteConnectionFailed,
            DialbackErrorCondition::ResourceConstraint,
        ] {
            assert_eq!(
                DialbackResult::Error(c).bounce_condition(),
                Some(StanzaCondition::RemoteServerTimeout),
                "{c}"
            );
        }

        for c in DialbackErrorCondition::TABLE {
            assert_eq!(DialbackErrorCondition::from_name(c.as_str()), Some(c));
            if let Some(s) = c.stanza_condition() {
                assert_eq!(s.as_str(), c.as_str());
                assert_eq!(DialbackErrorCondition::from_stanza_condition(s), c);
            }
        }
        for s in OTHER_STANZA_CONDITIONS {
            let c = DialbackErrorCondition::Other(s);
            assert_eq!(DialbackErrorCondition::from_name(s.as_str()), Some(c));
            assert_eq!(DialbackErrorCondition::from_stanza_condition(s), c);
            assert_eq!(c.as_str(), s.as_str());
        }
        // A condition with a named variant is never wrapped in `Other`.
        assert_eq!(
            DialbackErrorCondition::from_stanza_condition(StanzaCondition::ItemNotFound),
            DialbackErrorCondition::ItemNotFound
        );
        assert_eq!(DialbackErrorCondition::from_name("no-such-condition"), None);
        assert_eq!(DialbackErrorCondition::ItemNotFound.error_type(), "cancel");
        assert_eq!(
            DialbackErrorCondition::RemoteServerTimeout.error_type(),
            "wait"
        );
        assert_eq!(
            DialbackErrorCondition::RemoteConnectionFailed.error_type(),
            "cancel"
        );
        assert_eq!(DialbackErrorCondition::NotAuthorized.error_type(), "auth");
    }
}
