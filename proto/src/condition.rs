//! Error conditions defined by RFC 6120: stream errors (§4.9.3) and stanza errors (§8.3.3).
//!
//! Every layer's error type maps to one of these, so a fatal error in the tokenizer or the
//! stream state machine closes the stream with exactly one `<stream:error/>` condition.

use std::fmt;

/// A stream error condition, RFC 6120 §4.9.3 (namespace
/// `urn:ietf:params:xml:ns:xmpp-streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamCondition {
    /// §4.9.3.1: XML that cannot be processed.
    BadFormat,
    /// §4.9.3.2: a namespace prefix that is not supported or not declared.
    BadNamespacePrefix,
    /// §4.9.3.3: a new stream conflicts with an existing one.
    Conflict,
    /// §4.9.3.4: the peer has not generated traffic for too long.
    ConnectionTimeout,
    /// §4.9.3.5: the `to` domain is no longer hosted.
    HostGone,
    /// §4.9.3.6: the `to` domain is not hosted by this server.
    HostUnknown,
    /// §4.9.3.7: a stanza lacks a `to` or `from` where one is required.
    ImproperAddressing,
    /// §4.9.3.8: a misconfiguration or internal error.
    InternalServerError,
    /// §4.9.3.9: `from` names a domain the stream has not authenticated.
    InvalidFrom,
    /// §4.9.3.10: wrong stream or content namespace.
    InvalidNamespace,
    /// §4.9.3.11: invalid XML (beyond well-formedness) was sent.
    InvalidXml,
    /// §4.9.3.12: data was sent before the stream was authenticated.
    NotAuthorized,
    /// §4.9.3.13: the data is not well-formed XML.
    NotWellFormed,
    /// §4.9.3.14: a local service policy was violated (size, depth, rate limits).
    PolicyViolation,
    /// §4.9.3.15: the server cannot connect to a remote entity needed for authentication.
    RemoteConnectionFailed,
    /// §4.9.3.16: the server is closing the stream for a reason of its own.
    Reset,
    /// §4.9.3.17: the server lacks resources to serve the stream.
    ResourceConstraint,
    /// §4.9.3.18: the data contains restricted XML (comment, PI, DTD, entity reference).
    RestrictedXml,
    /// §4.9.3.19: the client is being redirected (not used by fedrouter).
    SeeOtherHost,
    /// §4.9.3.20: the server is being shut down.
    SystemShutdown,
    /// §4.9.3.21: an error that no other condition describes.
    UndefinedCondition,
    /// §4.9.3.22: an encoding other than UTF-8.
    UnsupportedEncoding,
    /// §4.9.3.23: a feature the receiver requires is not supported by the initiator.
    UnsupportedFeature,
    /// §4.9.3.24: a top-level element the receiver does not understand.
    UnsupportedStanzaType,
    /// §4.9.3.25: the stream header's `version` is not supported.
    UnsupportedVersion,
}

impl StreamCondition {
    /// The condition's element name, e.g. `"not-well-formed"`.
    pub fn as_str(self) -> &'static str {
        use StreamCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }

    /// Parses a condition element name; `None` for names RFC 6120 does not define.
    pub fn from_name(name: &str) -> Option<Self> {
        use StreamCondition::*;
        const ALL: [StreamCondition; 25] = [
            BadFormat,
            BadNamespacePrefix,
            Conflict,
            ConnectionTimeout,
            HostGone,
            HostUnknown,
            ImproperAddressing,
            InternalServerError,
            InvalidFrom,
            InvalidNamespace,
            InvalidXml,
            NotAuthorized,
            NotWellFormed,
            PolicyViolation,
            RemoteConnectionFailed,
            Reset,
            ResourceConstraint,
            RestrictedXml,
            SeeOtherHost,
            SystemShutdown,
            UndefinedCondition,
            UnsupportedEncoding,
            UnsupportedFeature,
            UnsupportedStanzaType,
            UnsupportedVersion,
        ];
        ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for StreamCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stanza error condition, RFC 6120 §8.3.3 (namespace
/// `urn:ietf:params:xml:ns:xmpp-stanzas`), with its default error type (§8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StanzaCondition {
    /// §8.3.3.1 (`modify`).
    BadRequest,
    /// §8.3.3.2 (`cancel`).
    Conflict,
    /// §8.3.3.3 (`cancel`).
    FeatureNotImplemented,
    /// §8.3.3.4 (`auth`).
    Forbidden,
    /// §8.3.3.6 (`cancel`).
    InternalServerError,
    /// §8.3.3.7 (`cancel`).
    ItemNotFound,
    /// §8.3.3.8 (`modify`).
    JidMalformed,
    /// §8.3.3.9 (`modify`).
    NotAcceptable,
    /// §8.3.3.10 (`cancel`).
    NotAllowed,
    /// §8.3.3.11 (`auth`).
    NotAuthorized,
    /// §8.3.3.12 (`modify`).
    PolicyViolation,
    /// §8.3.3.13 (`wait`).
    RecipientUnavailable,
    /// §8.3.3.16 (`cancel`): the remote server does not exist or cannot be resolved.
    RemoteServerNotFound,
    /// §8.3.3.17 (`wait`): the remote server could not be reached in time.
    RemoteServerTimeout,
    /// §8.3.3.18 (`wait`).
    ResourceConstraint,
    /// §8.3.3.19 (`cancel`).
    ServiceUnavailable,
    /// §8.3.3.20 (`auth`).
    SubscriptionRequired,
    /// §8.3.3.21 (`cancel`).
    UndefinedCondition,
    /// §8.3.3.22 (`wait`).
    UnexpectedRequest,
}

impl StanzaCondition {
    /// The condition's element name, e.g. `"remote-server-not-found"`.
    pub fn as_str(self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// Every condition RFC 6120 §8.3.3 defines (except the deprecated `gone` and
    /// `redirect`, which carry a URI and are never generated here).
    pub const ALL: [StanzaCondition; 19] = {
        use StanzaCondition::*;
        [
            BadRequest,
            Conflict,
            FeatureNotImplemented,
            Forbidden,
            InternalServerError,
            ItemNotFound,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            NotAuthorized,
            PolicyViolation,
            RecipientUnavailable,
            RemoteServerNotFound,
            RemoteServerTimeout,
            ResourceConstraint,
            ServiceUnavailable,
            SubscriptionRequired,
            UndefinedCondition,
            UnexpectedRequest,
        ]
    };

    /// Parses a condition element name; `None` for names not in [`Self::ALL`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The error `type` RFC 6120 §8.3.3 recommends for this condition: `auth`, `cancel`,
    /// `modify` or `wait`.
    pub fn default_type(self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation => "modify",
            Forbidden | NotAuthorized | SubscriptionRequired => "auth",
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                "wait"
            }
            _ => "cancel",
        }
    }
}

impl fmt::Display for StanzaCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_condition_names_round_trip() {
        for name in [
            "not-well-formed",
            "restricted-xml",
            "invalid-from",
            "host-unknown",
        ] {
            assert_eq!(StreamCondition::from_name(name).unwrap().as_str(), name);
        }
        assert_eq!(StreamCondition::from_name("no-such-thing"), None);
    }

    #[test]
    fn stanza_condition_types_follow_rfc6120() {
        assert_eq!(
            StanzaCondition::RemoteServerNotFound.default_type(),
            "cancel"
        );
        assert_eq!(StanzaCondition::RemoteServerTimeout.default_type(), "wait");
        assert_eq!(StanzaCondition::NotAuthorized.default_type(), "auth");
    }
}
