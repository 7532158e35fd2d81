//! Fuzz target for the SCRAM server (`fedrouter_proto::scram`, RFC 5802, RFC 7677) and the
//! SASL PLAIN parser (RFC 4616).
//!
//! Input: `[flags, client-first bytes..., 0xff, rest...]` (no `0xff`: everything after
//! the flags is client-first and `rest` is empty). `0xff` never occurs in UTF-8, so the
//! separator costs no valid message. The stored credentials are those of the password
//! `pencil` (salt `fuzz-salt`, 2 PBKDF2 rounds).
//!
//! - `flags & 1`: SCRAM-SHA-1 instead of SCRAM-SHA-256.
//! - `flags & 2` clear ("raw"): `rest` is the client-final message as sent.
//! - `flags & 2` set ("computed"): a reference client (the `hmac`, `pbkdf2`, `sha1`,
//!   `sha2` crates) answers the server-first message properly, with `rest` as the
//!   password, and then spoils its message when `flags & 4` (one proof bit flipped),
//!   `flags & 8` (another channel-binding header in `c=`) or `flags & 16` (the nonce
//!   truncated by one character).
//!
//! Invariants (the target panics when one fails):
//!
//! - `client_first` accepts exactly what `parse_client_first` accepts (same error), and
//!   answers `r=<client nonce><server nonce>,s=<salt>,i=2`; `username()` is the parsed one;
//! - any error is final: the next message gets `OutOfOrder` and nothing authenticates;
//! - raw: a client-final is accepted only if its proof is the one the reference client
//!   computes for `pencil` (a malformed or guessed message is an error, not acceptance);
//! - computed: the exchange succeeds exactly when the password is `pencil` (as an HMAC
//!   key: `pencil` followed by NULs is the same key, RFC 2104 §2) and the message is not
//!   spoiled (a proof for another password never succeeds; the right one
//!   always does), and server-final carries the right `ServerSignature`;
//! - after success, or after any error, further messages get `OutOfOrder`;
//! - `parse_plain`: when it accepts, the fields are non-empty where required, within
//!   `MAX_PLAIN_FIELD` octets, and join back (with NULs) to the message.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use fedrouter_proto::scram::{
    parse_client_first, parse_plain, ScramCredentials, ScramError, ScramHash, ScramServer,
    MAX_PLAIN_FIELD,
};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Digest;

const PASSWORD: &[u8] = b"pencil";
const SALT: &[u8] = b"fuzz-salt";
const ITERATIONS: u32 = 2;
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";

fn creds(hash: ScramHash) -> ScramCredentials {
    static SHA1: OnceLock<ScramCredentials> = OnceLock::new();
    static SHA256: OnceLock<ScramCredentials> = OnceLock::new();
    let cell = match hash {
        ScramHash::Sha1 => &SHA1,
        _ => &SHA256,
    };
    cell.get_or_init(|| {
        ScramCredentials::derive("pencil", hash, SALT, ITERATIONS).expect("pencil derives")
    })
    .clone()
}

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn h(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        _ => sha2::Sha256::digest(data).to_vec(),
    }
}

/// The reference client's proof and the server signature it expects (RFC 5802 §3).
fn reference(hash: ScramHash, password: &[u8], auth_message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut salted = vec![0u8; hash.output_len()];
    match hash {
        ScramHash::Sha1 => {
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, SALT, ITERATIONS, &mut salted)
        }
        _ => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, SALT, ITERATIONS, &mut salted),
    }
    let client_key = hmac(hash, &salted, b"Client Key");
    let stored_key = h(hash, &client_key);
    let signature = hmac(hash, &stored_key, auth_message);
    let proof = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_key = hmac(hash, &salted, b"Server Key");
    (proof, hmac(hash, &server_key, auth_message))
}

/// Whether `password` is `pencil` as an HMAC key: RFC 2104 §2 pads a key shorter than the
/// hash's block (64 octets for SHA-1 and SHA-256) with zeros, so `pencil` followed by NULs
/// is the same key and the same SCRAM password. (Real clients never send NUL: the PRECIS
/// `OpaqueString` profile, RFC 8265 §4.2, refuses control characters.)
fn same_hmac_key(password: &[u8]) -> bool {
    password.len() <= 64
        && password.starts_with(PASSWORD)
        && password[PASSWORD.len()..].iter().all(|&b| b == 0)
}

fn assert_dead(server: &mut ScramServer) {
    assert!(!server.is_authenticated());
    assert_eq!(
        server.client_final(b"c=biws,r=x,p=AAAA"),
        Err(ScramError::OutOfOrder)
    );
    assert_eq!(
        server.client_first(b"n,,n=user,r=abc"),
        Err(ScramError::OutOfOrder)
    );
    assert!(!server.is_authenticated());
}

fn check_plain(msg: &[u8]) {
    let Ok(p) = parse_plain(msg) else { return };
    assert!(!p.authcid.is_empty() && !p.password.is_empty());
    assert!(p.authzid.is_none_or(|a| !a.is_empty()));
    for f in [p.authzid.unwrap_or(""), p.authcid, p.password] {
        assert!(f.len() <= MAX_PLAIN_FIELD && !f.contains('\0'));
    }
    let joined = format!("{}\0{}\0{}", p.authzid.unwrap_or(""), p.authcid, p.password);
    assert_eq!(joined.as_bytes(), msg, "PLAIN fields do not join back");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let (first, rest) = match body.iter().position(|&b| b == 0xff) {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[][..]),
    };
    check_plain(first);
    check_plain(rest);
    let hash = if flags & 1 == 1 {
        ScramHash::Sha1
    } else {
        ScramHash::Sha256
    };
    let mut server = ScramServer::new(creds(hash), SERVER_NONCE.as_bytes()).expect("server");

    let parsed = parse_client_first(first);
    let server_first = server.client_first(first);
    let parsed = match (parsed, server_first) {
        (Err(e), Err(f)) => {
            assert_eq!(e, f, "client_first and parse_client_first disagree");
            return assert_dead(&mut server);
        }
        (Ok(p), Ok(sf)) => {
            let expected = format!(
                "r={}{SERVER_NONCE},s={},i={ITERATIONS}",
                p.client_nonce,
                B64.encode(SALT)
            );
            assert_eq!(sf, expected.as_bytes(), "server-first");
            assert_eq!(server.username(), Some(p.username.as_str()));
            assert_eq!(server.authzid(), p.authzid.as_deref());
            assert_eq!(format!("{}{}", p.gs2_header, p.bare).as_bytes(), first);
            assert!(!server.is_authenticated());
            (p, expected)
        }
        (p, s) => panic!("parse_client_first {p:?} but client_first {s:?}"),
    };
    let (p, server_first) = parsed;
    let nonce = format!("{}{SERVER_NONCE}", p.client_nonce);

    if flags & 2 == 0 {
        // Raw client-final: accepted only with the right proof.
        let result = server.client_final(rest);
        if let Ok(server_final) = result {
            let s = std::str::from_utf8(rest).expect("accepted UTF-8");
            let (without_proof, proof) = s.rsplit_once(",p=").expect("accepted has p=");
            let auth = format!("{},{server_first},{without_proof}", p.bare);
            let (right, sig) = reference(hash, PASSWORD, auth.as_bytes());
            assert_eq!(
                B64.decode(proof).ok(),
                Some(right),
                "accepted a wrong proof"
            );
            assert_eq!(server_final, format!("v={}", B64.encode(sig)).into_bytes());
            assert!(server.is_authenticated());
        } else {
            return assert_dead(&mut server);
        }
    } else {
        // A proper client with `rest` as its password, possibly spoiled.
        let gs2 = if flags & 8 != 0 {
            "y,,".to_owned() + p.gs2_header
        } else {
            p.gs2_header.to_owned()
        };
        let r = if flags & 16 != 0 {
            &nonce[..nonce.len() - 1]
        } else {
            &nonce[..]
        };
        let without_proof = format!("c={},r={r}", B64.encode(gs2.as_bytes()));
        let auth = format!("{},{server_first},{without_proof}", p.bare);
        let (mut proof, sig) = reference(hash, rest, auth.as_bytes());
        if flags & 4 != 0 {
            let at = usize::from(flags >> 5) % proof.len();
            proof[at] ^= 1;
        }
        let msg = format!("{without_proof},p={}", B64.encode(&proof));
        let result = server.client_final(msg.as_bytes());
        let spoiled = flags & (4 | 8 | 16) != 0;
        if same_hmac_key(rest) && !spoiled {
            assert_eq!(result, Ok(format!("v={}", B64.encode(sig)).into_bytes()));
            assert!(server.is_authenticated());
        } else {
            assert!(
                result.is_err(),
                "wrong password or spoiled message accepted"
            );
            return assert_dead(&mut server);
        }
    }
    // After success every further message is out of order, and it stays authenticated.
    assert_eq!(server.client_final(rest), Err(ScramError::OutOfOrder));
});
