//! The XMPP stream tokenizer: a push-style, zero-copy framer for a never-ending
//! `<stream:stream>` document (RFC 6120 §4, restricted XML per §11).
//!
//! [`Framer`] is fed arbitrary byte chunks and yields [`Frame`]s: the [`StreamHeader`],
//! each complete top-level [`Element`] as a refcounted [`bytes::Bytes`] view of the read
//! buffer plus its routing view, and the stream close. It owns framing, depth, limits and
//! chunk-boundary handling in one resumable byte scanner (each input byte is scanned once,
//! however the input is split), then checks each completed element with quick-xml's
//! borrowed reader plus our own name, namespace, reference and character checks, so a
//! router never forwards what it could not parse.
//!
//! The [`writer`] emits stanzas with new `to`/`from` around untouched body bytes;
//! [`ElementBuilder`] writes the stanzas the server generates itself straight into an
//! [`Element`], recording the routing view while writing (no second framing), on the
//! hot path into a [`StanzaArena`] (no allocation per stanza).

mod arena;
mod builder;
mod check;
mod element;
mod error;
mod escape;
mod find;
mod framer;
mod names;
pub mod tree;
pub mod writer;

pub use arena::StanzaArena;
pub use builder::ElementBuilder;
pub use element::{Element, Frame, Namespace, Span, StreamHeader};
pub use error::{Limit, Restricted, XmlError};
pub use escape::{
    check_references, escape_attr, escape_attr_into, escape_text, escape_text_into, unescape,
};
pub use find::Needle;
pub use framer::{Framer, Limits};

/// Namespace names used by the framer and the stream layer.
pub mod ns {
    /// `jabber:server` (RFC 6120 §4.8.3).
    pub const SERVER: &str = "jabber:server";
    /// `jabber:client`.
    pub const CLIENT: &str = "jabber:client";
    /// `jabber:server:dialback` (XEP-0220).
    pub const DIALBACK: &str = "jabber:server:dialback";
    /// `urn:xmpp:features:dialback`, the dialback stream feature (XEP-0220 §2.1).
    pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
    /// `http://etherx.jabber.org/streams` (RFC 6120 §4.8.1).
    pub const STREAMS: &str = "http://etherx.jabber.org/streams";
    /// `urn:ietf:params:xml:ns:xmpp-streams`, stream error conditions (§4.9.3).
    pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    /// `urn:ietf:params:xml:ns:xmpp-stanzas`, stanza error conditions (§8.3.3).
    pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    /// `urn:ietf:params:xml:ns:xmpp-tls` (§5).
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    /// `urn:ietf:params:xml:ns:xmpp-sasl` (§6).
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    /// `urn:xmpp:sm:3` (XEP-0198).
    pub const SM: &str = "urn:xmpp:sm:3";
    /// `urn:xmpp:bidi` (XEP-0288).
    pub const BIDI: &str = "urn:xmpp:bidi";
    /// `urn:xmpp:features:bidi` (XEP-0288 stream feature).
    pub const BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
    /// The `xml` prefix's namespace (Namespaces in XML 1.0 §3).
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
    /// The namespace name the `xmlns` prefix is bound to by definition (Namespaces in XML
    /// 1.0 §3); never declared.
    pub const XMLNS: &str = "http://www.w3.org/2000/xmlns/";

    pub(crate) const SERVER_B: &[u8] = SERVER.as_bytes();
    pub(crate) const CLIENT_B: &[u8] = CLIENT.as_bytes();
    pub(crate) const DIALBACK_B: &[u8] = DIALBACK.as_bytes();
    pub(crate) const STREAMS_B: &[u8] = STREAMS.as_bytes();
    pub(crate) const TLS_B: &[u8] = TLS.as_bytes();
    pub(crate) const SASL_B: &[u8] = SASL.as_bytes();
    pub(crate) const SM_B: &[u8] = SM.as_bytes();
}

/// Frames one stanza we generated ourselves (a bounce, a server reply) into an
/// [`Element`], as if it had arrived on a `jabber:server` stream: the router then handles
/// it like any received stanza. One copy of `bytes`; a thread-local framer is reused.
/// Stanzas written from scratch are better built with [`ElementBuilder`], which yields the
/// same [`Element`] without framing the bytes again.
///
/// Errors: the [`XmlError`] the framer reports when `bytes` is not exactly one
/// well-formed element (a bug in the code that generated it).
pub fn parse_stanza(bytes: &[u8]) -> Result<Element, XmlError> {
    use std::cell::RefCell;
    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    thread_local! {
        static FRAMER: RefCell<Option<Framer>> = const { RefCell::new(None) };
    }
    FRAMER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            // The synthetic header is framed once per thread; afterwards the framer sits
            // inside the stream, ready for the next element.
            let mut f = Framer::new(Limits::default());
            f.feed(HEADER);
            match f.next_frame()? {
                Some(Frame::Header(_)) => *slot = Some(f),
                _ => return Err(XmlError::NotWellFormed("synthetic header")),
            }
        }
        let framer = slot.as_mut().expect("set above");
        framer.feed(bytes);
        let out = match framer.next_frame() {
            Ok(Some(Frame::Element(el))) if framer.buffered() == 0 => Ok(el),
            Ok(_) => Err(XmlError::NotWellFormed("expected exactly one element")),
            Err(e) => Err(e),
        };
        if out.is_err() {
            // Start from a clean stream next time.
            *slot = None;
        }
        out
    })
}
