//! A C2S session once authenticated: resource binding (RFC 6120 §7), the bound client's
//! stanzas (`from` checks, §8.1.2.1), stanzas for it, and the stamping of its stanzas
//! for routing.

use std::ops::Range;
use std::time::Instant;

use super::{BindError, C2sConnection, C2sError, Event, State, NS_BIND, NS_SESSION};
use crate::condition::{StanzaCondition, StreamCondition};
use crate::jid::{FullJid, Jid, ResourcePart};
use crate::service::request_payload;
use crate::stanza::{write_error_reply, StanzaKind};
use crate::xml::tree::Node;
use crate::xml::writer::{write_raw_attr, write_readdressed};
use crate::xml::{escape_text_into, ns, unescape, Element, Namespace};

impl C2sConnection {
    /// The answer to [`Event::BindRequested`] (RFC 6120 §7.6): `Ok(full JID)` of the
    /// authenticated user (normalised or not) binds it and answers the client's `iq` with
    /// it (§7.6.1); `Err` answers the `iq` with the [`BindError::condition`] stanza error,
    /// and the client may try again.
    ///
    /// Errors: [`C2sError::InvalidState`] when no bind request is pending;
    /// [`C2sError::InvalidJid`] when `Ok` holds something else than a full JID whose bare
    /// JID is the authenticated one (the client then gets `internal-server-error`).
    pub fn handle_bind(
        &mut self,
        result: Result<&str, BindError>,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitBind {
            return Err(C2sError::InvalidState("no bind request is pending"));
        }
        let Some(request) = self.bind_request.take() else {
            return Err(C2sError::InvalidState("no bind request is pending"));
        };
        let mut outcome = Ok(());
        let full = match result {
            Ok(jid) => match FullJid::new(jid) {
                Ok(f) if Some(&f.to_bare()) == self.jid.as_ref() => Ok(f),
                _ => {
                    outcome = Err(C2sError::InvalidJid(jid.to_owned()));
                    Err(BindError::Internal)
                }
            },
            Err(e) => Err(e),
        };
        match full {
            Ok(full) => {
                write_iq_result_start(&request, &mut self.io.out);
                self.io.out.extend_from_slice(b"><bind xmlns='");
                self.io.out.extend_from_slice(NS_BIND.as_bytes());
                self.io.out.extend_from_slice(b"'><jid>");
                escape_text_into(full.as_str(), &mut self.io.out);
                self.io.out.extend_from_slice(b"</jid></bind></iq>");
                self.io.push_event(Event::Bound {
                    jid: full.as_str().to_owned(),
                });
                self.full = Some(full);
                self.state = State::Open;
                self.io.deadline = None;
                self.io.last_tx = now;
            }
            Err(e) => {
                write_error_reply(&request, e.condition(), None, None, &mut self.io.out);
                self.state = State::ExpectBind;
                self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
            }
        }
        self.process(now);
        outcome
    }

    /// Sends a stanza (its bytes, already addressed) to the client. An explicit
    /// `xmlns='jabber:server'` on its top element is removed (see the module docs); any
    /// other bytes are sent as they are.
    ///
    /// Errors: [`C2sError::NotBound`] before a resource is bound or once closing.
    pub fn send_stanza(&mut self, stanza: &[u8], now: Instant) -> Result<(), C2sError> {
        self.send_stanza_parts(&[stanza], now)
    }

    /// [`C2sConnection::send_stanza`] for a stanza given in pieces sent one after the
    /// other (a shared presence broadcast and the recipient's `to`,
    /// `fedrouter::router::fanout::SharedStanza::parts`).
    ///
    /// Errors: [`C2sError::NotBound`] before a resource is bound or once closing.
    pub fn send_stanza_parts(&mut self, parts: &[&[u8]], now: Instant) -> Result<(), C2sError> {
        if self.state != State::Open {
            return Err(C2sError::NotBound);
        }
        let start = self.io.out.len();
        for p in parts {
            self.io.out.extend_from_slice(p);
        }
        remove_top_xmlns(&mut self.io.out, start, ns::SERVER);
        self.io.last_tx = now;
        self.sm_sent_from(start, now);
        Ok(())
    }

    /// Appends `el` (a stanza from [`Event::Stanza`]) to `out` for routing: `from`
    /// stamped with the session's full JID, or its bare JID on subscription-related
    /// presence (`subscribe`, `subscribed`, `unsubscribe`, `unsubscribed`; RFC 6121
    /// §3.1.2), as RFC 6120 §8.1.2.1 requires; an explicit `xmlns='jabber:client'` on the
    /// top element removed, so the bytes fit a `jabber:server` stream. Everything else is
    /// copied byte for byte ([`write_readdressed`]). Payload elements using prefixes
    /// declared on the client's stream header are not rewritten (clients do not do that).
    ///
    /// Errors: [`C2sError::NotBound`] before a resource is bound (nothing is written).
    pub fn stamp(&self, el: &Element, out: &mut Vec<u8>) -> Result<(), C2sError> {
        let full = self.full.as_ref().ok_or(C2sError::NotBound)?;
        let subscription = el.name() == "presence"
            && matches!(
                el.type_(),
                Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
            );
        let from = if subscription {
            &full.as_str()[..full.as_str().len() - full.resource().len() - 1]
        } else {
            full.as_str()
        };
        let start = out.len();
        write_readdressed(el, None, Some(from), out);
        remove_top_xmlns(out, start, ns::CLIENT);
        Ok(())
    }

    /// After SASL, before a resource is bound: only the bind request (RFC 6120 §7.5).
    pub(super) fn on_before_bind(&mut self, el: Element, now: Instant) {
        let Some(kind) = StanzaKind::of(&el) else {
            return self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected element before resource binding",
            );
        };
        if kind == StanzaKind::Iq && contains(el.inner(), NS_BIND.as_bytes()) {
            let node = Node::parse(&el).unwrap_or_default();
            if let Some(bind) = node.child("bind", NS_BIND) {
                if el.type_() != Some("set") {
                    return write_error_reply(
                        &el,
                        StanzaCondition::BadRequest,
                        Some("bind is an iq of type set"),
                        None,
                        &mut self.io.out,
                    );
                }
                if request_payload(&node).is_none() {
                    return write_error_reply(
                        &el,
                        StanzaCondition::BadRequest,
                        Some(ONE_PAYLOAD),
                        None,
                        &mut self.io.out,
                    );
                }
                let raw = bind
                    .children
                    .iter()
                    .find(|c| c.name == "resource")
                    .map(|r| r.text.as_str())
                    .filter(|r| !r.trim().is_empty());
                let requested = match raw.map(ResourcePart::new) {
                    None => None,
                    Some(Ok(r)) => Some(r.as_str().to_owned()),
                    // §7.7.2.1: a resourcepart that cannot be processed.
                    Some(Err(e)) => {
                        return write_error_reply(
                            &el,
                            StanzaCondition::BadRequest,
                            Some(&e.to_string()),
                            None,
                            &mut self.io.out,
                        );
                    }
                };
                if self.state == State::ExpectClose {
                    // A request that crossed our `</stream:stream>`: it cannot be answered
                    // (nothing follows our close, RFC 6120 §4.4), and the stream must not
                    // leave its closing state for it.
                    return;
                }
                self.io.push_event(Event::BindRequested {
                    jid: self
                        .jid
                        .as_ref()
                        .map(|j| j.as_str().to_owned())
                        .unwrap_or_default(),
                    requested,
                });
                self.bind_request = Some(el);
                self.state = State::AwaitBind;
                self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
                return;
            }
        }
        self.fail(
            StreamCondition::NotAuthorized,
            "stanza before resource binding",
        )
    }

    /// A stanza on the bound stream (RFC 6120 §8.1.2.1).
    pub(super) fn on_stanza(&mut self, el: Element, now: Instant) {
        let Some(kind) = StanzaKind::of(&el) else {
            // XEP-0352 client state indication, advertised once bound.
            if let Some(state) = crate::csi::read_nonza(&el) {
                return self.io.push_event(Event::ClientState(state));
            }
            return self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unknown top-level element",
            );
        };
        if el.namespace() != &Namespace::Client {
            return self.fail(
                StreamCondition::InvalidNamespace,
                "stanzas on a C2S stream are in jabber:client",
            );
        }
        if let Some(from) = el.from() {
            if !self.is_own_jid(from) {
                return self.fail(
                    StreamCondition::InvalidFrom,
                    "from is not the JID bound to this stream",
                );
            }
        }
        // XEP-0198: handled from here on (answered here or passed to the runtime).
        self.sm_handled();
        let start = self.io.out.len();
        // After our `</stream:stream>` (RFC 6120 §4.4) nothing more is written: a stanza
        // the client sent before it saw our close still goes to the runtime, but the
        // answers this core writes itself (session, bind, bad-request) are not sent.
        let closing = self.state == State::ExpectClose;
        if kind == StanzaKind::Iq && el.type_() == Some("set") && !closing {
            let inner = el.inner();
            if contains(inner, NS_SESSION.as_bytes()) || contains(inner, NS_BIND.as_bytes()) {
                let node = Node::parse(&el).unwrap_or_default();
                let ours = node.child("session", NS_SESSION).is_some()
                    || node.child("bind", NS_BIND).is_some();
                if ours && request_payload(&node).is_none() {
                    write_error_reply(
                        &el,
                        StanzaCondition::BadRequest,
                        Some(ONE_PAYLOAD),
                        None,
                        &mut self.io.out,
                    );
                    self.io.last_tx = now;
                    self.sm_sent_from(start, now);
                    return;
                }
                if node.child("session", NS_SESSION).is_some() {
                    // RFC 3921 §3: the session is established (a no-op today).
                    write_iq_result_start(&el, &mut self.io.out);
                    self.io.out.extend_from_slice(b"/>");
                    self.io.last_tx = now;
                    self.sm_sent_from(start, now);
                    return;
                }
                if node.child("bind", NS_BIND).is_some() {
                    // One resource per stream (RFC 6120 §7.1).
                    write_error_reply(
                        &el,
                        StanzaCondition::NotAllowed,
                        Some("a resource is already bound"),
                        None,
                        &mut self.io.out,
                    );
                    self.io.last_tx = now;
                    self.sm_sent_from(start, now);
                    return;
                }
            }
        }
        self.io.push_event(Event::Stanza { kind, element: el });
    }

    /// Whether a raw `from` names the session's full or bare JID.
    fn is_own_jid(&self, raw: &str) -> bool {
        let (Some(full), Some(bare)) = (&self.full, &self.jid) else {
            return false;
        };
        if raw == full.as_str() || raw == bare.as_str() {
            return true;
        }
        let Ok(value) = unescape(raw) else {
            return false;
        };
        match Jid::new(&value) {
            Ok(Jid::Full(f)) => &f == full,
            Ok(Jid::Bare(b)) => &b == bare,
            Err(_) => false,
        }
    }
}

/// The text of the `bad-request` for an `iq` the machine answers itself (bind, session)
/// that does not hold exactly one payload (RFC 6120 §8.2.3).
const ONE_PAYLOAD: &str = "an iq get or set holds exactly one child element";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// `<iq type='result' id='..' from='..'` answering `req` (no `to`: the client's own
/// stream; `from` is the request's `to`, if any). The caller closes the tag.
fn write_iq_result_start(req: &Element, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='result'");
    write_raw_attr("id", req.id(), out);
    write_raw_attr("from", req.to(), out);
}

/// Removes the top element's default namespace declaration from `buf[start..]` when it is
/// exactly `value` (`xmlns='jabber:server'` or `xmlns="jabber:server"`).
pub(crate) fn remove_top_xmlns(buf: &mut Vec<u8>, start: usize, value: &str) {
    if let Some(r) = find_top_xmlns(&buf[start..], value.as_bytes()) {
        buf.drain(start + r.start..start + r.end);
    }
}

/// The range of ` xmlns='value'` (with its leading whitespace) in the start tag of the
/// element `b` begins with, if the tag declares exactly that default namespace. Assumes a
/// well-formed start tag; gives `None` on anything else.
fn find_top_xmlns(b: &[u8], value: &[u8]) -> Option<Range<usize>> {
    let is_ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    if b.first() != Some(&b'<') {
        return None;
    }
    let mut i = 1;
    while i < b.len() && !is_ws(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    loop {
        let attr_start = i;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] == b'/' || b[i] == b'>' {
            return None;
        }
        let name_start = i;
        while i < b.len() && !is_ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let name = &b[name_start..i];
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        let quote = *b.get(i)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value_start = i + 1;
        let len = memchr::memchr(quote, &b[value_start..])?;
        i = value_start + len + 1;
        if name == b"xmlns" {
            return (&b[value_start..value_start + len] == value).then_some(attr_start..i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_xmlns_is_found_only_on_the_top_element() {
        let b = b"<message to='a@b' xmlns='jabber:server' id=\"x\"><body xmlns='jabber:server'/></message>";
        let r = find_top_xmlns(b, b"jabber:server").unwrap();
        assert_eq!(&b[r], b" xmlns='jabber:server'");
        assert_eq!(find_top_xmlns(b, b"jabber:client"), None);
        assert_eq!(find_top_xmlns(b"<presence/>", b"jabber:server"), None);
        assert_eq!(
            find_top_xmlns(
                b"<presence type='a'><x xmlns='jabber:server'/></presence>",
                b"jabber:server"
            ),
            None
        );
        let mut v = b"xx<iq\n xmlns = \"jabber:server\" id='1'/>".to_vec();
        remove_top_xmlns(&mut v, 2, "jabber:server");
        assert_eq!(v, b"xx<iq id='1'/>");
    }
}
