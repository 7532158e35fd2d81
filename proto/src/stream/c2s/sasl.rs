//! SASL on a C2S stream (RFC 6120 §6): `SCRAM-SHA-256` (RFC 7677), `SCRAM-SHA-1` (RFC
//! 5802) and `PLAIN` (RFC 4616, over TLS only), with the credentials the runtime looks up
//! ([`Event::CredentialsNeeded`]) or the runtime's own check of a `PLAIN` password
//! ([`Event::PasswordCheckNeeded`]), made-up credentials for unknown users, and counted,
//! delayed failures (see the module docs of [`super`]).

use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{
    C2sConnection, C2sError, Event, Mechanism, Password, PasswordCheck, PasswordVerdict, State,
};
use crate::condition::StreamCondition;
use crate::jid::{BareJid, NodePart};
use crate::scram::{
    parse_client_first, parse_plain, ScramCredentials, ScramError, ScramHash, ScramServer,
    DEFAULT_ITERATIONS, SALT_LEN,
};
use crate::stream::plumbing::keyed_mac;
use crate::xml::tree::Node;
use crate::xml::{Element, Namespace};

/// One SASL exchange in progress.
#[derive(Debug)]
pub(super) struct Sasl {
    mechanism: Mechanism,
    /// Set once the client's first message was read.
    jid: Option<BareJid>,
    username: Option<String>,
    /// The client's first message (SCRAM client-first or the PLAIN message), until the
    /// credentials arrive.
    first: Vec<u8>,
    scram: Option<ScramServer>,
    /// The credentials are made up (unknown user): never succeed.
    dummy: bool,
}

impl C2sConnection {
    /// The answer to [`Event::CredentialsNeeded`]: the user's stored credentials, or
    /// `None` for an unknown user (or one without credentials for the hash). Credentials
    /// for another hash than a SCRAM mechanism needs count as `None`.
    ///
    /// SCRAM: sends the server-first challenge, with a server nonce of
    /// `base64(HMAC-SHA256(stream_id_key, label ‖ id_nonce ‖ n)[..18])` — pure, unique
    /// per connection and exchange, and unpredictable without the per-process key. PLAIN:
    /// checks the password (one PBKDF2 run, also for made-up credentials, so an unknown
    /// user takes as long as a wrong password) and answers `<success/>` or
    /// `<failure><not-authorized/></failure>`.
    ///
    /// Errors: [`C2sError::InvalidState`] when no credentials were asked for.
    pub fn handle_credentials(
        &mut self,
        creds: Option<ScramCredentials>,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitCredentials {
            return Err(C2sError::InvalidState("no credentials were asked for"));
        }
        let Some(mut sasl) = self.sasl.take() else {
            return Err(C2sError::InvalidState("no SASL exchange"));
        };
        let Some(jid) = sasl.jid.clone() else {
            return Err(C2sError::InvalidState("no SASL username"));
        };
        let hash = sasl.mechanism.hash();
        let creds = creds.filter(|c| hash.is_none_or(|h| c.mechanism == h));
        let (creds, dummy) = match creds {
            Some(c) => (c, false),
            None => (
                self.dummy_credentials(&jid, hash.unwrap_or(ScramHash::Sha256)),
                true,
            ),
        };
        let username = sasl.username.clone();
        match sasl.mechanism {
            Mechanism::Plain => {
                let ok = match parse_plain(&sasl.first) {
                    Ok(p) => creds.verify_password(p.password),
                    Err(_) => false,
                };
                sasl.first.fill(0);
                if ok && !dummy {
                    self.sasl = Some(sasl);
                    self.sasl_success(None, now);
                } else {
                    self.sasl_failure("not-authorized", username, now);
                }
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha1 => {
                let nonce = self.next_scram_nonce();
                let mut server = match ScramServer::new(creds, nonce.as_bytes()) {
                    Ok(s) => s,
                    // Stored credentials that do not fit their hash: a store problem.
                    Err(_) => {
                        self.sasl_failure("temporary-auth-failure", username, now);
                        self.process(now);
                        return Ok(());
                    }
                };
                match server.client_first(&sasl.first) {
                    Ok(server_first) => {
                        self.write_sasl("challenge", Some(&server_first));
                        sasl.first = Vec::new();
                        sasl.scram = Some(server);
                        sasl.dummy = dummy;
                        self.sasl = Some(sasl);
                        self.state = State::ExpectResponse;
                        self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
                    }
                    Err(_) => self.sasl_failure("malformed-request", username, now),
                }
            }
        }
        self.process(now);
        Ok(())
    }

    /// The answer to [`Event::PasswordCheckNeeded`] (RFC 6120 §6.4.5, §6.4.6):
    /// [`PasswordVerdict::Accepted`] sends `<success/>` and restarts the stream;
    /// [`PasswordVerdict::Rejected`] sends `not-authorized`, counted and delayed like every
    /// failure; [`PasswordVerdict::TemporaryFailure`] sends `temporary-auth-failure`
    /// (§6.5.12), neither counted nor delayed.
    ///
    /// Errors: [`C2sError::InvalidState`] when no password check was asked for.
    pub fn handle_password_verdict(
        &mut self,
        verdict: PasswordVerdict,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitVerdict {
            return Err(C2sError::InvalidState("no password check was asked for"));
        }
        let Some(sasl) = self.sasl.take() else {
            return Err(C2sError::InvalidState("no SASL exchange"));
        };
        let username = sasl.username.clone();
        match verdict {
            PasswordVerdict::Accepted => {
                self.sasl = Some(sasl);
                self.sasl_success(None, now);
            }
            PasswordVerdict::Rejected => self.sasl_failure("not-authorized", username, now),
            PasswordVerdict::TemporaryFailure => self.write_failure("temporary-auth-failure", now),
        }
        self.process(now);
        Ok(())
    }

    /// STARTTLS and SASL elements before authentication.
    pub(super) fn on_negotiation(&mut self, el: Element, now: Instant) {
        match (el.namespace(), el.name()) {
            (Namespace::Tls, "starttls") if self.state == State::ExpectAuth => {
                self.on_starttls(now)
            }
            (Namespace::Sasl, "auth") => {
                if self.state == State::ExpectAuth {
                    self.on_auth(&el, now)
                } else {
                    // A second <auth/> while an exchange is in progress is a protocol
                    // error (the client must <abort/> first, RFC 6120 §6.4.4): it ends
                    // the exchange as a counted failure.
                    let username = self.sasl.take().and_then(|s| s.username);
                    self.sasl_failure("malformed-request", username, now)
                }
            }
            (Namespace::Sasl, "response") => self.on_response(&el, now),
            (Namespace::Sasl, "abort") => {
                self.sasl = None;
                // §6.4.4: answered <aborted/>, which is not counted as a failure.
                self.sasl_failure("aborted", None, now)
            }
            (Namespace::Client | Namespace::Server, "message" | "presence" | "iq") => {
                // XEP-0077 in-band registration, when offered (`register.rs`).
                if !self.on_register_iq(&el, now) {
                    self.stanza_before_auth();
                }
            }
            _ => self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected element during negotiation",
            ),
        }
    }

    /// `<auth mechanism='...'>` (RFC 6120 §6.4.2).
    pub(super) fn on_auth(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let Some(mechanism) = node
            .attr("mechanism")
            .and_then(Mechanism::from_name)
            .filter(|m| {
                self.cfg.mechanisms.contains(m)
                    && (*m == Mechanism::Plain || self.cfg.offers(*m, true))
            })
        else {
            return self.sasl_failure("invalid-mechanism", None, now);
        };
        if !self.tls && (self.cfg.tls_required || mechanism == Mechanism::Plain) {
            return self.sasl_failure("encryption-required", None, now);
        }
        let text = node.text.trim();
        if text.is_empty() {
            // No initial response: an empty challenge asks for it (§6.4.2, §6.4.3).
            self.write_sasl("challenge", None);
            self.sasl = Some(Sasl {
                mechanism,
                jid: None,
                username: None,
                first: Vec::new(),
                scram: None,
                dummy: false,
            });
            self.state = State::ExpectInitialResponse;
            self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
            return;
        }
        match decode_sasl(text) {
            Some(data) => self.start_exchange(mechanism, data, now),
            None => self.sasl_failure("incorrect-encoding", None, now),
        }
    }

    /// `<response/>` (RFC 6120 §6.4.3).
    pub(super) fn on_response(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let data = decode_sasl(node.text.trim());
        let sasl = self.sasl.take();
        let username = sasl.as_ref().and_then(|s| s.username.clone());
        let (Some(mut sasl), Some(data)) = (sasl, data) else {
            let condition = if self.state == State::ExpectAuth {
                "malformed-request"
            } else {
                "incorrect-encoding"
            };
            return self.sasl_failure(condition, username, now);
        };
        match self.state {
            State::ExpectInitialResponse => self.start_exchange(sasl.mechanism, data, now),
            State::ExpectResponse => {
                let result = match sasl.scram.as_mut() {
                    Some(s) => s.client_final(&data),
                    None => Err(ScramError::OutOfOrder),
                };
                match result {
                    Ok(server_final) if !sasl.dummy => {
                        self.sasl = Some(sasl);
                        self.sasl_success(Some(&server_final), now);
                    }
                    Ok(_)
                    | Err(
                        ScramError::InvalidProof
                        | ScramError::NonceMismatch
                        | ScramError::ChannelBindingsDontMatch,
                    ) => self.sasl_failure("not-authorized", username, now),
                    Err(_) => self.sasl_failure("malformed-request", username, now),
                }
            }
            _ => self.sasl_failure("malformed-request", username, now),
        }
    }

    /// Reads the client's first message, checks the username and authzid, and asks the
    /// runtime for the credentials.
    fn start_exchange(&mut self, mechanism: Mechanism, mut data: Vec<u8>, now: Instant) {
        let parsed = match mechanism {
            Mechanism::Plain => parse_plain(&data)
                .map(|p| (p.authcid.to_owned(), p.authzid.map(str::to_owned)))
                .ok(),
            Mechanism::ScramSha256 | Mechanism::ScramSha1 => parse_client_first(&data)
                .map(|f| (f.username, f.authzid))
                .ok(),
        };
        let Some((username, authzid)) = parsed else {
            return self.sasl_failure("malformed-request", None, now);
        };
        // RFC 6120 §6.3.8: the simple user name is the localpart.
        let jid = NodePart::new(&username)
            .ok()
            .and_then(|n| BareJid::new(&format!("{}@{}", n, self.domain)).ok());
        let Some(jid) = jid else {
            return self.sasl_failure("not-authorized", Some(username), now);
        };
        let username = jid.node().unwrap_or_default().to_owned();
        if let Some(a) = authzid {
            // §6.4.6, §6.5.6: we authorise no one but the authenticated user.
            if BareJid::new(&a).ok().as_ref() != Some(&jid) {
                return self.sasl_failure("invalid-authzid", Some(username), now);
            }
        }
        if mechanism == Mechanism::Plain && self.cfg.password_check == PasswordCheck::External {
            // Parsed above: the password is there and non-empty (RFC 4616 §2).
            let password = parse_plain(&data).map(|p| Password::new(p.password));
            data.fill(0);
            let Ok(password) = password else {
                return self.sasl_failure("malformed-request", Some(username), now);
            };
            self.io.push_event(Event::PasswordCheckNeeded {
                jid: jid.as_str().to_owned(),
                username: username.clone(),
                password,
            });
            self.sasl = Some(Sasl {
                mechanism,
                jid: Some(jid),
                username: Some(username),
                first: Vec::new(),
                scram: None,
                dummy: false,
            });
            self.state = State::AwaitVerdict;
            self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
            return;
        }
        self.io.push_event(Event::CredentialsNeeded {
            jid: jid.as_str().to_owned(),
            mechanism,
        });
        self.sasl = Some(Sasl {
            mechanism,
            jid: Some(jid),
            username: Some(username),
            first: data,
            scram: None,
            dummy: false,
        });
        self.state = State::AwaitCredentials;
        self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// `<challenge/>`, `<success/>`: the element with optional base64 data.
    fn write_sasl(&mut self, name: &str, data: Option<&[u8]>) {
        self.io.out.push(b'<');
        self.io.out.extend_from_slice(name.as_bytes());
        self.io
            .out
            .extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-sasl'");
        match data {
            Some(d) => {
                self.io.out.push(b'>');
                self.io.out.extend_from_slice(B64.encode(d).as_bytes());
                self.io.out.extend_from_slice(b"</");
                self.io.out.extend_from_slice(name.as_bytes());
                self.io.out.push(b'>');
            }
            None => self.io.out.extend_from_slice(b"/>"),
        }
    }

    /// `<success/>` (RFC 6120 §6.4.6) and the stream restart.
    fn sasl_success(&mut self, additional: Option<&[u8]>, now: Instant) {
        let Some(Sasl {
            mechanism,
            jid: Some(jid),
            ..
        }) = self.sasl.take()
        else {
            return self.fail(StreamCondition::InternalServerError, "SASL state lost");
        };
        self.write_sasl("success", additional);
        self.io.push_event(Event::Authenticated {
            jid: jid.as_str().to_owned(),
            mechanism,
        });
        self.jid = Some(jid);
        self.mechanism = Some(mechanism);
        self.restart(now);
    }

    /// `<failure><condition/></failure>` (RFC 6120 §6.4.5, §6.5), counted and held (see
    /// the module docs), except `aborted`.
    pub(super) fn sasl_failure(&mut self, condition: &str, username: Option<String>, now: Instant) {
        self.write_failure(condition, now);
        if condition == "aborted" {
            return;
        }
        self.failures += 1;
        if self.failures >= self.cfg.max_auth_failures.max(1) {
            self.io.push_event(Event::AuthFailed {
                username,
                failures: self.failures,
                retry_after: None,
            });
            return self.fail(
                StreamCondition::PolicyViolation,
                "too many authentication failures",
            );
        }
        let factor = 1u32 << (self.failures - 1).min(16);
        let delay = self.cfg.auth_failure_delay.saturating_mul(factor);
        let retry_after = now + delay;
        if !delay.is_zero() {
            self.hold_until = Some(retry_after);
            self.io.deadline = Some(retry_after + self.cfg.timeouts.negotiation);
        }
        self.io.push_event(Event::AuthFailed {
            username,
            failures: self.failures,
            retry_after: Some(retry_after),
        });
    }

    /// `<failure><condition/></failure>`, back to waiting for `<auth/>`; not counted.
    fn write_failure(&mut self, condition: &str, now: Instant) {
        self.sasl = None;
        self.io
            .out
            .extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
        self.io.out.extend_from_slice(condition.as_bytes());
        self.io.out.extend_from_slice(b"/></failure>");
        self.state = State::ExpectAuth;
        self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// `HMAC-SHA256(stream_id_key, label ‖ parts…)`.
    fn hmac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        keyed_mac(&self.cfg.stream_id_key, label, parts)
    }

    fn next_scram_nonce(&mut self) -> String {
        self.scram_exchanges += 1;
        let h = self.hmac(
            b"fedrouter c2s scram nonce",
            &[
                &self.io.id_nonce.to_be_bytes(),
                &self.scram_exchanges.to_be_bytes(),
            ],
        );
        ScramServer::fresh_nonce(&h[..18])
    }

    /// Made-up credentials for an unknown user (RFC 5802 §9): stable per JID and hash
    /// within the process (so the salt does not give the user's absence away), with keys
    /// no password derives to in practice.
    fn dummy_credentials(&self, jid: &BareJid, hash: ScramHash) -> ScramCredentials {
        let tag = [hash as u8];
        let part = |label: &[u8]| self.hmac(label, &[&tag, jid.as_str().as_bytes()]);
        let len = hash.output_len();
        ScramCredentials {
            mechanism: hash,
            salt: part(b"fedrouter c2s dummy salt")[..SALT_LEN].to_vec(),
            iterations: DEFAULT_ITERATIONS,
            stored_key: part(b"fedrouter c2s dummy stored key")[..len].to_vec(),
            server_key: part(b"fedrouter c2s dummy server key")[..len].to_vec(),
        }
    }
}

/// SASL data (RFC 6120 §6.4.2): base64, or `=` for an empty response.
fn decode_sasl(text: &str) -> Option<Vec<u8>> {
    if text == "=" {
        return Some(Vec::new());
    }
    B64.decode(text).ok()
}
