//! XEP-0077 In-Band Registration (`jabber:iq:register`), the part a logged-in user needs:
//! changing its own password (§3.3). Registering new accounts (§3.1) and cancelling one
//! (§3.2) are refused with `not-allowed`: accounts are made with `fedrouter user add`.
//!
//! Pure: the runtime reads a request from one of the user's sessions with
//! [`read_request`], derives new SCRAM credentials for a [`Request::ChangePassword`]
//! (with [`crate::scram`]), stores them, then answers with an empty `iq` result.

use crate::condition::StanzaCondition;
use crate::xml::tree::Node;
use crate::xml::{escape_text_into, Element, ElementBuilder};

/// `jabber:iq:register` (XEP-0077 §2).
pub const NS_REGISTER: &str = "jabber:iq:register";

/// What a logged-in user's registration request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `iq get` (§3.1 for a registered entity): the answer is [`registered_result`].
    Info,
    /// `iq set` with `<username/>` (the user's own localpart) and a new `<password/>`
    /// (§3.3).
    ChangePassword {
        /// The new password as sent (unescaped; SASLprep is the SCRAM module's).
        password: String,
    },
}

/// Reads the payload of an `iq` of type `get` (`is_get`) or `set` from a session of the
/// user whose localpart is `localpart` (normalised); `None` when it is not a
/// `<query xmlns='jabber:iq:register'/>`.
///
/// Errors (the condition to answer with): `<remove/>` (§3.2) or a set without a
/// `<password/>` (a registration form, §3.1) is `not-allowed`; a `<username/>` other
/// than `localpart` (compared case-insensitively) is `not-authorized` (a user changes
/// only its own password); a missing `<username/>` or an empty `<password/>` is a
/// `bad-request` (§3.3: both are required).
pub fn read_request(
    is_get: bool,
    payload: &Node,
    localpart: &str,
) -> Option<Result<Request, StanzaCondition>> {
    if payload.name != "query" || payload.ns != NS_REGISTER {
        return None;
    }
    if is_get {
        return Some(Ok(Request::Info));
    }
    let child = |name: &str| payload.child(name, NS_REGISTER);
    if child("remove").is_some() {
        return Some(Err(StanzaCondition::NotAllowed));
    }
    let Some(password) = child("password") else {
        return Some(Err(StanzaCondition::NotAllowed));
    };
    let Some(username) = child("username") else {
        return Some(Err(StanzaCondition::BadRequest));
    };
    if !username.text.trim().eq_ignore_ascii_case(localpart) {
        return Some(Err(StanzaCondition::NotAuthorized));
    }
    if password.text.is_empty() {
        return Some(Err(StanzaCondition::BadRequest));
    }
    Some(Ok(Request::ChangePassword {
        password: password.text.clone(),
    }))
}

/// The answer to a registration `get` from a registered user (§3.1, Example 3):
/// `<iq type='result' to='(el's from)' id='(el's id)'><query
/// xmlns='jabber:iq:register'><registered/><username>localpart</username><password/>
/// </query></iq>`.
pub fn registered_result(el: &Element, localpart: &str) -> Element {
    ElementBuilder::with_capacity("iq", 200 + localpart.len())
        .attr("type", "result")
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
        .child_with(|out| {
            out.extend_from_slice(b"<query xmlns='jabber:iq:register'><registered/><username>");
            escape_text_into(localpart, out);
            out.extend_from_slice(b"</username><password/></query>");
        })
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    /// What [`read_request`] makes of a request.
    type Read = Option<Result<Request, StanzaCondition>>;

    fn read(type_: &str, payload: &str) -> Read {
        let iq =
            parse_stanza(format!("<iq type='{type_}' id='r'>{payload}</iq>").as_bytes()).unwrap();
        let node = Node::parse(&iq).unwrap();
        read_request(type_ == "get", &node.children[0], "alice")
    }

    #[test]
    fn request_table() {
        use StanzaCondition::*;
        let change = |p: &str| Some(Ok(Request::ChangePassword { password: p.into() }));
        let table: &[(&str, &str, Read)] = &[
            ("get", "<query xmlns='jabber:iq:register'/>", Some(Ok(Request::Info))),
            (
                "set",
                "<query xmlns='jabber:iq:register'><username>alice</username><password>n3w &amp; long</password></query>",
                change("n3w & long"),
            ),
            (
                "set",
                "<query xmlns='jabber:iq:register'><username>Alice</username><password>x</password></query>",
                change("x"),
            ),
            (
                "set",
                "<query xmlns='jabber:iq:register'><username>bob</username><password>x</password></query>",
                Some(Err(NotAuthorized)),
            ),
            (
                "set",
                "<query xmlns='jabber:iq:register'><password>x</password></query>",
                Some(Err(BadRequest)),
            ),
            (
                "set",
                "<query xmlns='jabber:iq:register'><username>alice</username><password/></query>",
                Some(Err(BadRequest)),
            ),
            (
                "set",
                "<query xmlns='jabber:iq:register'><username>alice</username></query>",
                Some(Err(NotAllowed)),
            ),
            ("set", "<query xmlns='jabber:iq:register'><remove/></query>", Some(Err(NotAllowed))),
            ("set", "<query xmlns='jabber:iq:roster'/>", None),
            ("get", "<register xmlns='jabber:iq:register'/>", None),
        ];
        for (type_, payload, want) in table {
            assert_eq!(&read(type_, payload), want, "{type_} {payload}");
        }
    }

    #[test]
    fn registered_answer() {
        let iq = parse_stanza(
            b"<iq type='get' from='alice@x/r' id='g'><query xmlns='jabber:iq:register'/></iq>",
        )
        .unwrap();
        let r = registered_result(&iq, "alice");
        assert_eq!(
            r.as_str(),
            "<iq type='result' to='alice@x/r' id='g'><query xmlns='jabber:iq:register'>\
             <registered/><username>alice</username><password/></query></iq>"
        );
    }
}
