//! In-band registration of new accounts (XEP-0077 §3.1), before authentication, when
//! [`C2sConfig::registration`] allows it (off by default: accounts are made with
//! `fedrouter user add`, imported, or come from the directory).
//!
//! - The pre-authentication features carry `<register
//!   xmlns='http://jabber.org/features/iq-register'/>` (§4) wherever SASL mechanisms are
//!   offered (so over TLS when TLS is required).
//! - `<iq type='get'><query xmlns='jabber:iq:register'/></iq>` is answered with the
//!   fields: instructions, `<username/>`, `<password/>` (§3.1).
//! - `<iq type='set'>` with a username and a password: the username is checked as a
//!   localpart (RFC 7622 §3.3; else `jid-malformed`), then
//!   [`Event::RegistrationRequested`]; the runtime creates the account and answers with
//!   [`C2sConnection::handle_registration`]: an empty result, or `conflict` (the
//!   username is taken, §3.1 example 8), `not-acceptable` (missing fields) or
//!   `internal-server-error`. One account per stream; the client then authenticates as
//!   usual (§3.1: "the client MUST then authenticate").
//! - Any other stanza before authentication still closes the stream with
//!   `not-authorized`.
//!
//! [`C2sConfig::registration`]: super::C2sConfig::registration

use std::time::Instant;

use super::{C2sConnection, C2sError, Event, State};
use crate::condition::{StanzaCondition, StreamCondition};
use crate::jid::BareJid;
use crate::register::NS_REGISTER;
use crate::stanza::write_error_reply;
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, Element};

/// The pre-authentication stream feature (XEP-0077 §4).
pub const FEATURE_REGISTER: &str = "http://jabber.org/features/iq-register";

/// Why the runtime did not create an account ([`C2sConnection::handle_registration`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationError {
    /// The username is taken (`conflict`, XEP-0077 §3.1).
    Conflict,
    /// The password is not acceptable (e.g. SASLprep refuses it, RFC 4013): `not-acceptable`.
    NotAcceptable,
    /// The store failed (`internal-server-error`).
    Internal,
}

impl C2sConnection {
    /// Whether registration is offered on this stream now.
    pub(super) fn offers_registration(&self) -> bool {
        self.cfg.registration && self.jid.is_none() && (self.tls || !self.cfg.tls_required)
    }

    /// The `<register/>` feature, when offered.
    pub(super) fn write_register_feature(&mut self) {
        if self.offers_registration() {
            self.io.out.extend_from_slice(b"<register xmlns='");
            self.io.out.extend_from_slice(FEATURE_REGISTER.as_bytes());
            self.io.out.extend_from_slice(b"'/>");
        }
    }

    /// A stanza before authentication: a registration request when offered, else the
    /// stream error of RFC 6120 §4.9.3.12. Returns whether it was handled here.
    pub(super) fn on_register_iq(&mut self, el: &Element, now: Instant) -> bool {
        if !self.offers_registration() || el.name() != "iq" || self.state != State::ExpectAuth {
            return false;
        }
        let node = Node::parse(el).unwrap_or_default();
        let Some(query) = node.child("query", NS_REGISTER) else {
            return false;
        };
        match el.type_() {
            Some("get") => {
                write_result_start(el, &mut self.io.out);
                self.io.out.extend_from_slice(b"><query xmlns='jabber:iq:register'>\
                    <instructions>Choose a username and password for use with this service.</instructions>\
                    <username/><password/></query></iq>");
            }
            Some("set") if self.registered => {
                write_error_reply(
                    el,
                    StanzaCondition::NotAllowed,
                    Some("one account per stream"),
                    None,
                    &mut self.io.out,
                );
            }
            Some("set") => {
                let text = |name: &str| {
                    query
                        .children
                        .iter()
                        .find(|c| c.name == name)
                        .map(|c| c.text.clone())
                        .filter(|t| !t.is_empty())
                };
                let (Some(user), Some(password)) = (text("username"), text("password")) else {
                    write_error_reply(
                        el,
                        StanzaCondition::NotAcceptable,
                        Some("a username and a password are required"),
                        None,
                        &mut self.io.out,
                    );
                    return true;
                };
                let jid = match BareJid::new(&format!("{user}@{}", self.domain)) {
                    Ok(j) if j.node().is_some() => j,
                    _ => {
                        write_error_reply(
                            el,
                            StanzaCondition::JidMalformed,
                            Some("the username is not a valid localpart"),
                            None,
                            &mut self.io.out,
                        );
                        return true;
                    }
                };
                self.io.push_event(Event::RegistrationRequested {
                    jid: jid.as_str().to_owned(),
                    password: super::Password::new(&password),
                });
                self.registration_request = Some(el.clone());
                self.state = State::AwaitRegistration;
                self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
            }
            _ => {
                write_error_reply(
                    el,
                    StanzaCondition::BadRequest,
                    None,
                    None,
                    &mut self.io.out,
                );
            }
        }
        true
    }

    /// The answer to [`Event::RegistrationRequested`]: `Ok` answers the client's `iq` with
    /// an empty result (the account exists; the client authenticates next), `Err` with
    /// the error's condition.
    ///
    /// Errors: [`C2sError::InvalidState`] when no registration is pending.
    pub fn handle_registration(
        &mut self,
        result: Result<(), RegistrationError>,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitRegistration {
            return Err(C2sError::InvalidState("no registration is pending"));
        }
        let Some(request) = self.registration_request.take() else {
            return Err(C2sError::InvalidState("no registration is pending"));
        };
        match result {
            Ok(()) => {
                self.registered = true;
                write_result_start(&request, &mut self.io.out);
                self.io.out.extend_from_slice(b"/>");
            }
            Err(e) => {
                let (condition, text) = match e {
                    RegistrationError::Conflict => {
                        (StanzaCondition::Conflict, "the username is taken")
                    }
                    RegistrationError::NotAcceptable => (
                        StanzaCondition::NotAcceptable,
                        "the password is not acceptable",
                    ),
                    RegistrationError::Internal => (
                        StanzaCondition::InternalServerError,
                        "the account could not be stored",
                    ),
                };
                write_error_reply(&request, condition, Some(text), None, &mut self.io.out);
            }
        }
        self.state = State::ExpectAuth;
        self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
        self.process(now);
        Ok(())
    }

    /// A stanza before authentication that is not a registration request.
    pub(super) fn stanza_before_auth(&mut self) {
        self.fail(
            StreamCondition::NotAuthorized,
            "stanza before authentication",
        )
    }
}

/// `<iq type='result' id='…'` (open start tag) answering `req`, from the server.
fn write_result_start(req: &Element, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='result'");
    if let Some(id) = req.id() {
        out.extend_from_slice(b" id='");
        escape_attr_into(id, out);
        out.push(b'\'');
    }
}
