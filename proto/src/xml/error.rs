//! Tokenizer errors, each mapped to its RFC 6120 §4.9.3 stream error condition.

use crate::condition::StreamCondition;

/// A construct RFC 6120 §11.1 forbids in an XMPP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Restricted {
    /// `<!-- ... -->`.
    Comment,
    /// `<?target ...?>` (the XML declaration before the stream header is allowed).
    ProcessingInstruction,
    /// `<!DOCTYPE ...>` or any other markup declaration.
    Dtd,
    /// `&name;` other than the five predefined entities.
    EntityReference,
}

/// A configured limit (see [`Limits`](super::Limits)) that input exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// A top-level element longer than `max_element_size` bytes.
    ElementSize,
    /// The XML declaration plus stream header longer than `max_header_size` bytes.
    HeaderSize,
    /// Elements nested deeper than `max_depth` (the top-level element is depth 1).
    Depth,
    /// More than `max_attributes` attributes on one element.
    Attributes,
}

/// Why the tokenizer rejected a stream. Fatal and sticky: once returned, every further
/// call returns it again. [`XmlError::condition`] gives the stream error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// Not well-formed XML (RFC 6120 §4.9.3.13): bad name, bad quoting, mismatched end tag,
    /// character not allowed in XML, bad character reference, and so on.
    #[error("not well-formed XML: {0}")]
    NotWellFormed(&'static str),
    /// A construct RFC 6120 §11.1 forbids (§4.9.3.18 `restricted-xml`).
    #[error("restricted XML: {0:?}")]
    RestrictedXml(Restricted),
    /// The stream element or the content namespace is wrong (§4.9.3.10).
    #[error("invalid namespace: {0}")]
    InvalidNamespace(&'static str),
    /// An undeclared or misused namespace prefix (§4.9.3.2).
    #[error("bad namespace prefix: {0}")]
    BadNamespacePrefix(&'static str),
    /// A configured limit was exceeded (§4.9.3.14 `policy-violation`).
    #[error("limit exceeded: {0:?}")]
    PolicyViolation(Limit),
    /// Bytes that are not UTF-8, or an XML declaration naming another encoding
    /// (§4.9.3.22, §11.6).
    #[error("not UTF-8")]
    UnsupportedEncoding,
    /// Well-formed XML that is not an XMPP stream: character data or CDATA at stream
    /// level, a self-closed stream header (§4.9.3.1 `bad-format`).
    #[error("bad format: {0}")]
    BadFormat(&'static str),
}

impl XmlError {
    /// The RFC 6120 §4.9.3 condition to close the stream with.
    pub fn condition(&self) -> StreamCondition {
        match self {
            XmlError::NotWellFormed(_) => StreamCondition::NotWellFormed,
            XmlError::RestrictedXml(_) => StreamCondition::RestrictedXml,
            XmlError::InvalidNamespace(_) => StreamCondition::InvalidNamespace,
            XmlError::BadNamespacePrefix(_) => StreamCondition::BadNamespacePrefix,
            XmlError::PolicyViolation(_) => StreamCondition::PolicyViolation,
            XmlError::UnsupportedEncoding => StreamCondition::UnsupportedEncoding,
            XmlError::BadFormat(_) => StreamCondition::BadFormat,
        }
    }
}
