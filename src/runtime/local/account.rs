//! A logged-in user's own account (XEP-0077) ([`Account`]): the registration query
//! answers "registered" (§3.1) and a password change (§3.3) replaces the user's SCRAM
//! credentials (RFC 5802, RFC 7677: SHA-256 and SHA-1, fresh salts,
//! [`crate::store::SCRAM_ITERATIONS`]) in the store before it is answered. Sessions
//! already open stay open; the next login needs the new password. Registering new
//! accounts and removing one are refused (`not-allowed`,
//! [`crate::register::read_request`]).
//!
//! The credentials are derived on the shard: PBKDF2 with 4096 iterations, twice, a few
//! milliseconds for a request that is rare.

use tracing::{info, warn};

use super::link::{send_to, Link};
use crate::condition::StanzaCondition;
use crate::register::{registered_result, Request};
use crate::runtime::shard::Shard;
use crate::stanza::error_reply;
use crate::store::{Op, Outcome, ScramCredentials, ScramHash, SCRAM_ITERATIONS};
use crate::xml::writer::write_raw_attr;
use crate::xml::Element;

/// The account behaviour.
pub(super) struct Account;

impl Account {
    /// A registration request `req` (read from `el`) from session `conn` of `bare`.
    pub(super) fn request(
        &self,
        shard: &Shard,
        conn: &Link,
        bare: &str,
        el: Element,
        req: Request,
    ) {
        let password = match req {
            Request::Info => {
                let localpart = bare.split('@').next().unwrap_or_default();
                let r = registered_result(&el, localpart);
                send_to(conn, &[r.bytes()]);
                return;
            }
            Request::ChangePassword { password } => password,
        };
        let creds: Result<Vec<ScramCredentials>, _> = ScramHash::ALL
            .iter()
            .map(|&h| {
                ScramCredentials::with_random_salt(&password, h, SCRAM_ITERATIONS, &mut rand::rng())
            })
            .collect();
        let creds = match creds {
            Ok(c) => c,
            Err(e) => {
                // A password SASLprep refuses (RFC 4013 prohibited characters).
                let r = error_reply(
                    &el,
                    StanzaCondition::NotAcceptable,
                    Some(&format!("password: {e}")),
                    None,
                );
                send_to(conn, &[r.bytes()]);
                return;
            }
        };
        let user = bare.to_owned();
        let conn = conn.clone();
        shard.local.store.submit(
            shard,
            Op::SetCredentials {
                jid: user.clone(),
                creds,
            },
            Box::new(move |_shard, result| {
                let condition = match result {
                    Ok(Outcome::Existed(true)) => None,
                    Ok(_) => Some(StanzaCondition::ItemNotFound),
                    Err(e) => {
                        warn!(%user, error = %e, "storing new credentials failed");
                        Some(e.stanza_condition())
                    }
                };
                if let Some(c) = condition {
                    let r = error_reply(&el, c, None, None);
                    send_to(&conn, &[r.bytes()]);
                    return;
                }
                info!(%user, "password changed (XEP-0077)");
                let mut out = Vec::with_capacity(96);
                out.extend_from_slice(b"<iq type='result'");
                write_raw_attr("to", el.from(), &mut out);
                write_raw_attr("id", el.id(), &mut out);
                out.extend_from_slice(b"/>");
                send_to(&conn, &[&out]);
            }),
        );
    }

    /// XEP-0077 §3.1 in-band registration on an unauthenticated stream (only when
    /// `c2s.allow_registration` is on): the account `jid` is created with SCRAM
    /// credentials derived from `password`, durably, before the client gets its result;
    /// a taken username gets `conflict`.
    pub(super) fn register(
        &self,
        shard: &Shard,
        conn_id: crate::runtime::conn::ConnId,
        jid: String,
        password: &str,
    ) {
        use crate::stream::c2s::RegistrationError;
        let answer = move |shard: &Shard, result: Result<(), RegistrationError>| {
            let Some(conn) = shard.local.conns.borrow().get(&conn_id).cloned() else {
                return;
            };
            {
                let mut st = conn.st.borrow_mut();
                let _ = st
                    .proto
                    .handle_registration(result, std::time::Instant::now());
                st.collect_events();
                st.pump();
            }
            shard.local.sessions.after_answer(shard, &conn);
        };
        let creds: Result<Vec<ScramCredentials>, _> = ScramHash::ALL
            .iter()
            .map(|&h| {
                ScramCredentials::with_random_salt(password, h, SCRAM_ITERATIONS, &mut rand::rng())
            })
            .collect();
        let Ok(creds) = creds else {
            // A password SASLprep refuses (RFC 4013 prohibited characters).
            return answer(shard, Err(RegistrationError::NotAcceptable));
        };
        shard.local.store.submit(
            shard,
            Op::AddUser {
                jid: jid.clone(),
                creds,
            },
            Box::new(move |shard, result| {
                let r = match result {
                    Ok(_) => {
                        info!(user = %jid, "account registered in-band (XEP-0077)");
                        crate::runtime::metrics(|m| m.count("c2s_registrations", &[], 1));
                        Ok(())
                    }
                    Err(crate::store::StoreError::Exists(_)) => Err(RegistrationError::Conflict),
                    Err(e) => {
                        warn!(user = %jid, error = %e, "storing a registered account failed");
                        Err(RegistrationError::Internal)
                    }
                };
                answer(shard, r);
            }),
        );
    }
}
