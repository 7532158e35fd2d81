//! SASL credentials: SCRAM stored keys and the server side of a SCRAM exchange (RFC 5802,
//! RFC 7677), and the PLAIN message (RFC 4616).
//!
//! # What is stored
//!
//! Never the password: for each hash, [`ScramCredentials`] keeps the salt, the iteration
//! count, `StoredKey` and `ServerKey` (RFC 5802 §3, §5):
//!
//! ```text
//! SaltedPassword := Hi(Normalize(password), salt, i)      (PBKDF2 with HMAC-H)
//! ClientKey      := HMAC(SaltedPassword, "Client Key")
//! StoredKey      := H(ClientKey)
//! ServerKey      := HMAC(SaltedPassword, "Server Key")
//! ```
//!
//! `Normalize` is RFC 5802's SASLprep (RFC 4013). RFC 4013 is obsoleted by RFC 7613 / RFC
//! 8265, whose §4.2 defines the PRECIS `OpaqueString` profile for passwords "in place of
//! SASLprep" (RFC 8265 §4.2, §6; RFC 7677 §3 points SCRAM-SHA-256 at it too), so passwords
//! are enforced with `OpaqueString` from `precis-profiles`: non-ASCII spaces become U+0020,
//! NFC, everything else (case, punctuation) is kept, control characters and the empty
//! string are refused ([`ScramError::InvalidPassword`]). For ASCII passwords — every test
//! vector of RFC 5802 and RFC 7677 — both profiles are the identity. A client that still
//! applies RFC 4013 SASLprep maps a few characters differently (e.g. U+00AD SOFT HYPHEN is
//! removed by SASLprep and refused by `OpaqueString`); such a password cannot be set here.
//!
//! PBKDF2 and HMAC come from the RustCrypto crates (`pbkdf2`, `hmac`, `sha1`, `sha2`);
//! proofs are compared in constant time with `subtle`.
//!
//! # The exchange
//!
//! [`ScramServer`] is a pure state machine: it is fed the client's messages and returns the
//! server's, with no I/O and no clock. The server nonce is an argument, so the RFC
//! examples are reproduced byte for byte. The client's username arrives in its first
//! message, but the server needs that user's credentials to answer it: the caller reads the
//! username with [`parse_client_first`], looks the credentials up, then builds the
//! [`ScramServer`] and feeds it the same message. For an unknown user, RFC 5802 §9 suggests
//! carrying on with made-up credentials (e.g. [`ScramCredentials::with_random_salt`] of a
//! random password) so that the exchange fails only at the proof, like a wrong password.
//!
//! Channel binding (`-PLUS` mechanisms, gs2 flag `p=`) is not supported: the server never
//! offers a `-PLUS` mechanism, so a client that sends `y` ("I support channel binding but
//! think you don't") is right and is accepted (RFC 5802 §6); `p=` is refused with
//! [`ScramError::ChannelBindingNotSupported`].

use std::str;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The iteration count given to new credentials by the tools: RFC 7677 §4 says the count
/// SHOULD be at least 4096 for SCRAM-SHA-256; it is also what Prosody and ejabberd use.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of the random salt drawn by [`ScramCredentials::with_random_salt`], in octets
/// (RFC 5802 does not fix it; 16 is common and more than enough to be unique).
pub const SALT_LEN: usize = 16;

/// Longest PLAIN field (authzid, authcid, passwd) accepted by [`parse_plain`], in octets.
/// RFC 4616 §2 requires accepting at least 255.
pub const MAX_PLAIN_FIELD: usize = 1024;

/// The hash function of a SCRAM mechanism (RFC 5802 §4 names mechanisms by the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramHash {
    /// SHA-1: `SCRAM-SHA-1` (RFC 5802; mandatory to implement in RFC 6120 §6.3.3's time).
    Sha1,
    /// SHA-256: `SCRAM-SHA-256` (RFC 7677).
    Sha256,
}

impl ScramHash {
    /// Both hashes, strongest first (the order in which a server offers them).
    pub const ALL: [ScramHash; 2] = [ScramHash::Sha256, ScramHash::Sha1];

    /// The SASL mechanism name: `SCRAM-SHA-1` or `SCRAM-SHA-256`.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The hash for a SASL mechanism name (exact, upper case as registered), if it is one
    /// of ours. `-PLUS` variants are not (no channel binding).
    pub fn from_mechanism(name: &str) -> Option<ScramHash> {
        match name {
            "SCRAM-SHA-1" => Some(ScramHash::Sha1),
            "SCRAM-SHA-256" => Some(ScramHash::Sha256),
            _ => None,
        }
    }

    /// Output length of the hash, in octets (20 or 32): the length of `StoredKey`,
    /// `ServerKey` and of a proof.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    /// `H(data)`.
    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, part1 || part2 || ...)`.
    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            ScramHash::Sha1 => run::<Hmac<Sha1>>(key, parts),
            ScramHash::Sha256 => run::<Hmac<Sha256>>(key, parts),
        }
    }

    /// `Hi(password, salt, i)`: PBKDF2 with HMAC-H, one block (RFC 5802 §2.2).
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
        }
        out
    }
}

/// What a server keeps for one user and one SCRAM hash (RFC 5802 §3, §5): enough to
/// verify a client's proof and to prove itself, but not the password.
///
/// `stored_key` and `server_key` are [`ScramHash::output_len`] octets long.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// Which hash (and so which mechanism) these are for.
    pub mechanism: ScramHash,
    /// The salt, sent to the client base64-encoded in `s=`.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count, sent in `i=`; at least 1.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredentials {
    /// Shows the mechanism and iteration count only: keys and salt stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Derives the stored credentials of `password` (RFC 5802 §3) for `hash`, with `salt`
    /// and `iterations` PBKDF2 rounds. The password is first enforced with the PRECIS
    /// `OpaqueString` profile (RFC 8265 §4.2, in place of SASLprep: see the module docs).
    ///
    /// Errors: [`ScramError::InvalidPassword`] if `OpaqueString` refuses the password
    /// (empty, control characters, unassigned code points);
    /// [`ScramError::InvalidIterations`] if `iterations` is 0.
    pub fn derive(
        password: &str,
        hash: ScramHash,
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramCredentials, ScramError> {
        if iterations == 0 {
            return Err(ScramError::InvalidIterations);
        }
        let password = normalize_password(password)?;
        Ok(Self::derive_normalized(
            password.as_bytes(),
            hash,
            salt,
            iterations,
        ))
    }

    /// [`Self::derive`] with a fresh random salt of [`SALT_LEN`] octets from `rng` (the
    /// caller's CSPRNG, e.g. `&mut rand::rng()`: the core has no randomness of its own):
    /// what a "set password" command uses.
    pub fn with_random_salt<R: rand::CryptoRng + ?Sized>(
        password: &str,
        hash: ScramHash,
        iterations: u32,
        rng: &mut R,
    ) -> Result<ScramCredentials, ScramError> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        Self::derive(password, hash, &salt, iterations)
    }

    fn derive_normalized(
        password: &[u8],
        hash: ScramHash,
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredentials {
        let salted = hash.hi(password, salt, iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        ScramCredentials {
            mechanism: hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Whether `password` is the one these credentials were derived from (for SASL PLAIN,
    /// RFC 4616, against SCRAM-only storage): derives with the stored salt and iteration
    /// count and compares `StoredKey` in constant time. A password that `OpaqueString`
    /// refuses is never right.
    pub fn verify_password(&self, password: &str) -> bool {
        let Ok(password) = normalize_password(password) else {
            return false;
        };
        if self.iterations == 0 {
            return false;
        }
        let derived = Self::derive_normalized(
            password.as_bytes(),
            self.mechanism,
            &self.salt,
            self.iterations,
        );
        derived.stored_key.ct_eq(&self.stored_key).into()
    }
}

/// Enforces a password with the PRECIS `OpaqueString` profile (RFC 8265 §4.2).
fn normalize_password(password: &str) -> Result<std::borrow::Cow<'_, str>, ScramError> {
    OpaqueString::enforce(password).map_err(|_| ScramError::InvalidPassword)
}

/// Why a SASL exchange failed or a credential could not be made.
///
/// Each SCRAM failure has the `server-error-value` of RFC 5802 §7 that names it
/// ([`ScramError::server_error`]); in XMPP the exchange then ends with
/// `<failure><not-authorized/></failure>` (RFC 6120 §6.5.10) or, for a malformed message,
/// `<malformed-request/>` (§6.5.6).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the RFC 5802 §7 grammar; the text says where.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client-first message starts with the reserved `m=` attribute (RFC 5802 §5.1:
    /// the server MUST fail).
    #[error("mandatory SCRAM extension not supported")]
    ExtensionsNotSupported,
    /// The client asked for channel binding (`p=`): no `-PLUS` mechanism is offered.
    #[error("channel binding not supported")]
    ChannelBindingNotSupported,
    /// The client-final `c=` is not the base64 of the client-first gs2 header (RFC 5802
    /// §5.1).
    #[error("channel binding data does not match the gs2 header")]
    ChannelBindingsDontMatch,
    /// The client-final nonce is not the one the server sent.
    #[error("nonce does not match")]
    NonceMismatch,
    /// A `saslname` has `=` other than `=2C` / `=3D`, or is not UTF-8, or is empty
    /// (RFC 5802 §5.1).
    #[error("invalid username encoding")]
    InvalidUsernameEncoding,
    /// The client's proof is wrong: wrong password (or wrong user).
    #[error("invalid proof")]
    InvalidProof,
    /// The password is refused by the PRECIS `OpaqueString` profile (RFC 8265 §4.2).
    #[error("password refused by the OpaqueString profile")]
    InvalidPassword,
    /// The iteration count is 0.
    #[error("iteration count must be at least 1")]
    InvalidIterations,
    /// The credentials' key lengths do not fit their hash.
    #[error("credentials do not fit their hash")]
    InvalidCredentials,
    /// The server nonce given to [`ScramServer::new`] is empty or has a character outside
    /// `printable` (RFC 5802 §7: `%x21-2B / %x2D-7E`).
    #[error("server nonce must be non-empty printable ASCII without ','")]
    InvalidServerNonce,
    /// A message came in a state that does not expect it, or after the exchange failed or
    /// finished (a failure is final).
    #[error("SCRAM message out of order")]
    OutOfOrder,
    /// A PLAIN message (RFC 4616 §2) is not `[authzid] NUL authcid NUL passwd` with
    /// UTF-8, non-empty authcid and passwd, each at most [`MAX_PLAIN_FIELD`] octets.
    #[error("malformed PLAIN message: {0}")]
    MalformedPlain(&'static str),
}

impl ScramError {
    /// The RFC 5802 §7 `server-error-value` for this error, as sent in a server-final
    /// `e=` attribute: `invalid-encoding`, `extensions-not-supported`, `invalid-proof`,
    /// `channel-bindings-dont-match`, `channel-binding-not-supported`,
    /// `invalid-username-encoding` or `other-error`.
    pub fn server_error(&self) -> &'static str {
        match self {
            ScramError::Malformed(_) | ScramError::MalformedPlain(_) => "invalid-encoding",
            ScramError::ExtensionsNotSupported => "extensions-not-supported",
            ScramError::ChannelBindingNotSupported => "channel-binding-not-supported",
            ScramError::ChannelBindingsDontMatch => "channel-bindings-dont-match",
            ScramError::InvalidUsernameEncoding => "invalid-username-encoding",
            ScramError::InvalidProof => "invalid-proof",
            _ => "other-error",
        }
    }
}

/// The parts of a client-first message (RFC 5802 §7 `client-first-message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst<'a> {
    /// The gs2 header, `n,,`, `y,,` or `n,a=authzid,` as sent (echoed in client-final
    /// `c=`).
    pub gs2_header: &'a str,
    /// The authorization identity (`a=`), `saslname`-decoded; `None` when absent.
    pub authzid: Option<String>,
    /// The authentication identity (`n=`), `saslname`-decoded (`=2C` → `,`, `=3D` →
    /// `=`), not otherwise normalised: the caller enforces it as a localpart (RFC 7622
    /// §3.3, `UsernameCaseMapped`) to find the account.
    pub username: String,
    /// The client nonce (`r=`).
    pub client_nonce: &'a str,
    /// `client-first-message-bare`: everything after the gs2 header (part of
    /// `AuthMessage`).
    pub bare: &'a str,
}

/// Parses a client-first message (RFC 5802 §7) without any state: for reading the
/// username before the credentials are looked up. [`ScramServer::client_first`] parses
/// the same way.
///
/// Errors: [`ScramError::Malformed`] (not UTF-8, missing or misplaced attribute, bad
/// nonce characters), [`ScramError::ChannelBindingNotSupported`] (`p=`),
/// [`ScramError::ExtensionsNotSupported`] (`m=`),
/// [`ScramError::InvalidUsernameEncoding`].
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let s = str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = s
        .split_once(',')
        .ok_or(ScramError::Malformed("no gs2 header"))?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
        _ => return Err(ScramError::Malformed("gs2 flag is not n, y or p=")),
    }
    let (authz, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("gs2 header has no second ','"))?;
    let authzid = match authz {
        "" => None,
        _ => match authz.strip_prefix("a=") {
            Some(name) => Some(decode_saslname(name)?),
            None => return Err(ScramError::Malformed("gs2 authzid is not a=")),
        },
    };
    let gs2_header = &s[..flag.len() + 1 + authz.len() + 1];

    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or("");
    if first.starts_with("m=") {
        return Err(ScramError::ExtensionsNotSupported);
    }
    let username = first
        .strip_prefix("n=")
        .ok_or(ScramError::Malformed("client-first does not start with n="))?;
    let username = decode_saslname(username)?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("client-first has no r= after n="))?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
        return Err(ScramError::Malformed(
            "client nonce is empty or not printable",
        ));
    }
    for ext in attrs {
        check_attr_val(ext)?;
    }
    Ok(ClientFirst {
        gs2_header,
        authzid,
        username,
        client_nonce,
        bare,
    })
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802 §7): visible ASCII except `,`.
fn is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x2b | 0x2d..=0x7e)
}

/// `attr-val = ALPHA "=" value` (RFC 5802 §7): an extension, which is ignored.
fn check_attr_val(a: &str) -> Result<(), ScramError> {
    let b = a.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'=' {
        Ok(())
    } else {
        Err(ScramError::Malformed("extension is not attr=value"))
    }
}

/// Decodes a `saslname` (RFC 5802 §5.1, §7): `=2C` is `,`, `=3D` is `=`, any other `=`
/// is an error, and the name is not empty.
fn decode_saslname(name: &str) -> Result<String, ScramError> {
    if name.is_empty() {
        return Err(ScramError::InvalidUsernameEncoding);
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::InvalidUsernameEncoding),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where a [`ScramServer`] is in the exchange.
#[derive(Debug)]
enum State {
    /// Nothing received yet.
    ExpectClientFirst,
    /// Server-first sent; waiting for client-final.
    ExpectClientFinal {
        /// The gs2 header as sent, expected back base64-encoded in `c=`.
        gs2_header: String,
        /// `client-first-message-bare "," server-first-message "," ` (the start of
        /// `AuthMessage`).
        auth_prefix: Vec<u8>,
        /// client nonce + server nonce.
        nonce: String,
    },
    /// The client proved itself and got server-final.
    Authenticated,
    /// The exchange failed; every further message is refused.
    Failed,
}

/// The server side of one SCRAM exchange (RFC 5802 §3, §5; RFC 7677 for SHA-256), as a
/// state machine with no I/O.
///
/// ```text
/// client-first  ──client_first()──►  server-first  (r=cnonce+snonce,s=salt,i=n)
/// client-final  ──client_final()──►  server-final  (v=ServerSignature)
/// ```
///
/// Any error is final: the machine then refuses every message with
/// [`ScramError::OutOfOrder`].
#[derive(Debug)]
pub struct ScramServer {
    creds: ScramCredentials,
    server_nonce: String,
    state: State,
    username: Option<String>,
    authzid: Option<String>,
}

impl ScramServer {
    /// A new exchange for the user whose credentials are `creds`, with `server_nonce` as
    /// the server's part of the nonce (RFC 5802 §5.1 `s-nonce`): printable ASCII
    /// (`%x21-2B / %x2D-7E`), e.g. [`ScramServer::fresh_nonce`] of 18 random octets.
    ///
    /// Errors: [`ScramError::InvalidServerNonce`], [`ScramError::InvalidIterations`],
    /// [`ScramError::InvalidCredentials`] (key lengths do not fit the hash).
    pub fn new(creds: ScramCredentials, server_nonce: &[u8]) -> Result<ScramServer, ScramError> {
        if server_nonce.is_empty() || !server_nonce.iter().all(|&b| is_printable(b)) {
            return Err(ScramError::InvalidServerNonce);
        }
        if creds.iterations == 0 {
            return Err(ScramError::InvalidIterations);
        }
        let len = creds.mechanism.output_len();
        if creds.stored_key.len() != len || creds.server_key.len() != len {
            return Err(ScramError::InvalidCredentials);
        }
        Ok(ScramServer {
            creds,
            server_nonce: str::from_utf8(server_nonce)
                .expect("printable ASCII is UTF-8")
                .to_owned(),
            state: State::ExpectClientFirst,
            username: None,
            authzid: None,
        })
    }

    /// A server nonce made of `random` octets: their standard base64 (24 characters for
    /// 18 octets), which is `printable`.
    pub fn fresh_nonce(random: &[u8]) -> String {
        B64.encode(random)
    }

    /// Takes the client-first message and returns server-first
    /// (`r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>`).
    ///
    /// Errors: those of [`parse_client_first`]; [`ScramError::OutOfOrder`] if not the
    /// first message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::ExpectClientFirst) {
            self.state = State::Failed;
            return Err(ScramError::OutOfOrder);
        }
        let first = match parse_client_first(msg) {
            Ok(first) => first,
            Err(e) => {
                self.state = State::Failed;
                return Err(e);
            }
        };
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.creds.salt),
            self.creds.iterations
        );
        let mut auth_prefix = Vec::with_capacity(first.bare.len() + server_first.len() + 2);
        auth_prefix.extend_from_slice(first.bare.as_bytes());
        auth_prefix.push(b',');
        auth_prefix.extend_from_slice(server_first.as_bytes());
        auth_prefix.push(b',');
        self.username = Some(first.username);
        self.authzid = first.authzid;
        self.state = State::ExpectClientFinal {
            gs2_header: first.gs2_header.to_owned(),
            auth_prefix,
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final message, checks the channel binding echo, the nonce and the
    /// proof (constant time), and returns server-final (`v=<base64 ServerSignature>`).
    /// After `Ok` the client is authenticated as [`Self::username`].
    ///
    /// Errors: [`ScramError::Malformed`], [`ScramError::ChannelBindingsDontMatch`],
    /// [`ScramError::NonceMismatch`], [`ScramError::InvalidProof`] (wrong password),
    /// [`ScramError::OutOfOrder`] if client-first has not been taken.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::ExpectClientFinal {
            gs2_header,
            mut auth_prefix,
            nonce,
        } = state
        else {
            return Err(ScramError::OutOfOrder);
        };
        let s = str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // client-final-message = client-final-message-without-proof "," proof
        let (without_proof, proof) = s
            .rsplit_once(',')
            .ok_or(ScramError::Malformed("client-final has no proof"))?;
        let proof = proof
            .strip_prefix("p=")
            .ok_or(ScramError::Malformed("client-final does not end with p="))?;
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("client-final does not start with c="))?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("c= is not base64"))?;
        if cbind != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingsDontMatch);
        }
        let their_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client-final has no r= after c="))?;
        if their_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        for ext in attrs {
            check_attr_val(ext)?;
        }
        let hash = self.creds.mechanism;
        if proof.len() != hash.output_len() {
            return Err(ScramError::InvalidProof);
        }
        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof
        auth_prefix.extend_from_slice(without_proof.as_bytes());
        let auth_message = auth_prefix;
        let client_signature = hash.hmac(&self.creds.stored_key, &[&auth_message]);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let ok: bool = hash.hash(&client_key).ct_eq(&self.creds.stored_key).into();
        if !ok {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hash.hmac(&self.creds.server_key, &[&auth_message]);
        self.state = State::Authenticated;
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    /// The username the client gave (`n=`, decoded), once client-first was taken. It is
    /// authenticated only when [`Self::is_authenticated`].
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The authorization identity the client gave (`a=`), if any.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// Whether the client's proof was checked and found right.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated)
    }
}

/// A parsed SASL PLAIN message (RFC 4616 §2).
#[derive(Clone, PartialEq, Eq)]
pub struct Plain<'a> {
    /// The authorization identity; `None` when empty (act as the authcid).
    pub authzid: Option<&'a str>,
    /// The authentication identity (the username), as sent.
    pub authcid: &'a str,
    /// The password, as sent (check it with [`ScramCredentials::verify_password`]).
    pub password: &'a str,
}

impl std::fmt::Debug for Plain<'_> {
    /// Leaves the password out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .finish_non_exhaustive()
    }
}

/// Parses a SASL PLAIN message (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`, UTF-8,
/// authcid and passwd non-empty, each field at most [`MAX_PLAIN_FIELD`] octets, exactly
/// two NULs.
///
/// Errors: [`ScramError::MalformedPlain`].
pub fn parse_plain(msg: &[u8]) -> Result<Plain<'_>, ScramError> {
    let s = str::from_utf8(msg).map_err(|_| ScramError::MalformedPlain("not UTF-8"))?;
    let mut parts = s.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ScramError::MalformedPlain("not three NUL-separated fields"));
    };
    if authcid.is_empty() {
        return Err(ScramError::MalformedPlain("empty authcid"));
    }
    if password.is_empty() {
        return Err(ScramError::MalformedPlain("empty password"));
    }
    if [authzid, authcid, password]
        .iter()
        .any(|f| f.len() > MAX_PLAIN_FIELD)
    {
        return Err(ScramError::MalformedPlain("field too long"));
    }
    Ok(Plain {
        authzid: (!authzid.is_empty()).then_some(authzid),
        authcid,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one exchange; returns (server-first, server-final).
    fn exchange(
        hash: ScramHash,
        password: &str,
        salt_b64: &str,
        snonce: &str,
        client_first: &str,
        client_final: &str,
    ) -> (String, Result<String, ScramError>) {
        let salt = B64.decode(salt_b64).unwrap();
        let creds = ScramCredentials::derive(password, hash, &salt, 4096).unwrap();
        let mut server = ScramServer::new(creds, snonce.as_bytes()).unwrap();
        let first = String::from_utf8(server.client_first(client_first.as_bytes()).unwrap());
        let fin = server
            .client_final(client_final.as_bytes())
            .map(|v| String::from_utf8(v).unwrap());
        (first.unwrap(), fin)
    }

    #[test]
    fn rfc5802_section5_sha1_exchange() {
        let (first, fin) = exchange(
            ScramHash::Sha1,
            "pencil",
            "QSXCR+Q6sek8bf92",
            "3rfcNHYJY1ZVvWVs7j",
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(
            first,
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        assert_eq!(fin.unwrap(), "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn rfc7677_section3_sha256_exchange() {
        let (first, fin) = exchange(
            ScramHash::Sha256,
            "pencil",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        assert_eq!(
            fin.unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn wrong_password_is_invalid_proof_and_final() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = ScramCredentials::derive("pencil2", ScramHash::Sha256, &salt, 4096).unwrap();
        let mut server = ScramServer::new(creds, b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").unwrap();
        server
            .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        let err = server
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
        assert_eq!(err.server_error(), "invalid-proof");
        assert!(!server.is_authenticated());
        assert_eq!(
            server.client_final(b"c=biws,r=x,p=AA=="),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn sha1_wrong_password_is_invalid_proof() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let creds = ScramCredentials::derive("Pencil", ScramHash::Sha1, &salt, 4096).unwrap();
        let mut server = ScramServer::new(creds, b"3rfcNHYJY1ZVvWVs7j").unwrap();
        server
            .client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
            .unwrap();
        assert_eq!(
            server.client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
            ),
            Err(ScramError::InvalidProof)
        );
    }

    fn server() -> ScramServer {
        let creds = ScramCredentials::derive("pencil", ScramHash::Sha1, b"salt", 1).unwrap();
        ScramServer::new(creds, b"SNONCE").unwrap()
    }

    #[test]
    fn gs2_header_forms() {
        assert_eq!(
            server().client_first(b"p=tls-unique,,n=user,r=abc"),
            Err(ScramError::ChannelBindingNotSupported)
        );
        assert_eq!(
            server().client_first(b"q,,n=user,r=abc"),
            Err(ScramError::Malformed("gs2 flag is not n, y or p="))
        );
        let mut s = server();
        s.client_first(b"y,,n=user,r=abc").unwrap();
        // 'y' must be echoed as base64("y,,") = "eSws"; "biws" is n,, and does not match.
        assert_eq!(
            s.client_final(b"c=biws,r=abcSNONCE,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::ChannelBindingsDontMatch)
        );
        let mut s = server();
        s.client_first(b"n,a=admin=2Cx,n=user,r=abc").unwrap();
        assert_eq!(s.authzid(), Some("admin,x"));
        assert_eq!(
            server().client_first(b"n,,m=ext,n=user,r=abc"),
            Err(ScramError::ExtensionsNotSupported)
        );
    }

    #[test]
    fn y_flag_full_exchange() {
        let salt = b"0123456789abcdef";
        let creds = ScramCredentials::derive("pencil", ScramHash::Sha256, salt, 16).unwrap();
        let mut s = ScramServer::new(creds.clone(), b"snonce").unwrap();
        let sf = s.client_first(b"y,,n=user,r=cnonce").unwrap();
        assert_eq!(
            sf,
            format!("r=cnoncesnonce,s={},i=16", B64.encode(salt)).into_bytes()
        );
        // Client side by hand (RFC 5802 §3).
        let h = ScramHash::Sha256;
        let salted = h.hi(b"pencil", salt, 16);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        let without = "c=eSws,r=cnoncesnonce";
        let auth = format!(
            "n=user,r=cnonce,{},{without}",
            String::from_utf8(sf).unwrap()
        );
        let sig = h.hmac(&h.hash(&client_key), &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let fin = s
            .client_final(format!("{without},p={}", B64.encode(proof)).as_bytes())
            .unwrap();
        let server_sig = h.hmac(&creds.server_key, &[auth.as_bytes()]);
        assert_eq!(fin, format!("v={}", B64.encode(server_sig)).into_bytes());
        assert!(s.is_authenticated());
        assert_eq!(s.username(), Some("user"));
    }

    #[test]
    fn saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("=3D=2C").unwrap(), "=,");
        assert_eq!(
            decode_saslname("a=2"),
            Err(ScramError::InvalidUsernameEncoding)
        );
        assert_eq!(
            decode_saslname("a=41"),
            Err(ScramError::InvalidUsernameEncoding)
        );
        assert_eq!(
            decode_saslname(""),
            Err(ScramError::InvalidUsernameEncoding)
        );
        let first = parse_client_first(b"n,,n=j=2Cdoe,r=xyz,x=ext").unwrap();
        assert_eq!(first.username, "j,doe");
        assert_eq!(first.gs2_header, "n,,");
        assert_eq!(first.bare, "n=j=2Cdoe,r=xyz,x=ext");
        assert_eq!(first.client_nonce, "xyz");
    }

    #[test]
    fn nonce_and_order_errors() {
        let mut s = server();
        assert_eq!(
            s.client_final(b"c=biws,r=x,p=AA=="),
            Err(ScramError::OutOfOrder)
        );
        let mut s = server();
        s.client_first(b"n,,n=user,r=abc").unwrap();
        assert_eq!(
            s.client_final(b"c=biws,r=abcOTHER,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::NonceMismatch)
        );
        assert!(ScramServer::new(server().creds.clone(), b"a,b").is_err());
        assert!(ScramServer::new(server().creds.clone(), b"").is_err());
        assert_eq!(ScramServer::fresh_nonce(&[0xff; 18]).len(), 24);
    }

    #[test]
    fn password_normalisation_and_verification() {
        let c = ScramCredentials::derive("pencil", ScramHash::Sha256, b"s", 2).unwrap();
        assert!(c.verify_password("pencil"));
        assert!(!c.verify_password("Pencil"));
        assert!(!c.verify_password(""));
        assert_eq!(
            ScramCredentials::derive("", ScramHash::Sha1, b"s", 2),
            Err(ScramError::InvalidPassword)
        );
        assert_eq!(
            ScramCredentials::derive("a\u{7}", ScramHash::Sha1, b"s", 2),
            Err(ScramError::InvalidPassword)
        );
        assert_eq!(
            ScramCredentials::derive("p", ScramHash::Sha1, b"s", 0),
            Err(ScramError::InvalidIterations)
        );
        // OpaqueString maps a non-ASCII space (U+3000) to U+0020.
        let a = ScramCredentials::derive("a\u{3000}b", ScramHash::Sha1, b"s", 2).unwrap();
        let b = ScramCredentials::derive("a b", ScramHash::Sha1, b"s", 2).unwrap();
        assert_eq!(a, b);
        let r = ScramCredentials::with_random_salt(
            "pw",
            ScramHash::Sha1,
            2,
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7),
        )
        .unwrap();
        assert_eq!(r.salt.len(), SALT_LEN);
        assert!(r.verify_password("pw"));
    }

    #[test]
    fn plain_parsing() {
        let p = parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(p.authzid, None);
        assert_eq!(p.authcid, "tim");
        assert_eq!(p.password, "tanstaaftanstaaf");
        let p = parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap();
        assert_eq!(p.authzid, Some("Ursel"));
        assert_eq!(p.authcid, "Kurt");
        assert!(parse_plain(b"\0\0pw").is_err());
        assert!(parse_plain(b"\0u\0").is_err());
        assert!(parse_plain(b"u\0pw").is_err());
        assert!(parse_plain(b"a\0u\0p\0x").is_err());
        assert!(parse_plain(b"\0u\0\xff").is_err());
        let long = format!("\0u\0{}", "x".repeat(MAX_PLAIN_FIELD + 1));
        assert!(parse_plain(long.as_bytes()).is_err());
    }
}
