//! A deterministic synthetic corpus of server-to-server (S2S) XMPP traffic, for the
//! tokenizer benchmark (`benches/tokenizer.rs`) and for tests.
//!
//! [`s2s_stream`] models one direction of one dialback-authenticated S2S stream as the
//! receiving server reads it off the socket (after TLS): the XML declaration and stream
//! header exactly as Prosody sends them (see `tests/data/plain-prosody-s2s-raw.txt` and
//! `tests/data/plain-s2s-transcript.txt`), then an endless run of top-level elements, never
//! `</stream:stream>`. The sending server is Prosody at `gmail.test`, the receiver
//! `cupdomain.test` (ejabberd), as in the captures. The mix follows what federation
//! carries in practice: mostly presence (RFC 6121 §4) with entity capabilities
//! (XEP-0115), vCard avatar hashes (XEP-0153) and delayed-delivery stamps (XEP-0203);
//! subscription requests and approvals (RFC 6121 §3); one-to-one and groupchat messages
//! with bodies of 20 to 2000 bytes, threads, chat states (XEP-0085), receipts (XEP-0184),
//! markers (XEP-0333) and origin ids (XEP-0359); PEP notifications (XEP-0163); IQs (disco#info
//! XEP-0030, ping XEP-0199, roster RFC 6121 §2, stanza errors RFC 6120 §8.3); the odd
//! `db:result`/`db:verify` (XEP-0220); and single-byte whitespace keepalives between
//! elements (RFC 6120 §4.6.1). Attribute order is shuffled per element, as Prosody's
//! hash-ordered serialiser does, and text is escaped as Prosody escapes it (all five
//! predefined entities). Text mixes ASCII with accented Latin, CJK, Cyrillic, Arabic and
//! emoji.
//!
//! Determinism: the same `(target_bytes, seed)` gives the same bytes on every platform
//! (a xorshift64* generator seeded through splitmix64, no floating point, no hashing, no
//! clock). A shorter target with the same seed gives a prefix of a longer one, so a 1 MB
//! corpus is the first megabyte (whole elements) of the 10 MB one.
//!
//! Only `std` is used, so tests can include this file with
//! `#[path = "../benches/corpus.rs"] mod corpus;`. Cargo's target auto-discovery also
//! builds this file as a bench target of its own, `corpus`, an empty libtest harness.

// Each includer (the benchmark, tests) uses a different subset of this module.
#![allow(dead_code)]

use std::fmt::Write as _;

/// Prosody's S2S stream header as the initiating server sends it (RFC 6120 §4.7;
/// XEP-0220 §2.1 `xmlns:db`), byte for byte from the test-bed capture, XML declaration
/// included.
pub const PROSODY_HEADER: &str = "<?xml version='1.0'?><stream:stream to='cupdomain.test' \
xmlns='jabber:server' xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' id='' \
from='gmail.test' xmlns:db='jabber:server:dialback' version='1.0'>";

/// The sending (Prosody) domain.
pub const LOCAL_DOMAIN: &str = "gmail.test";
/// The receiving domain.
pub const REMOTE_DOMAIN: &str = "cupdomain.test";

/// A generated stream and what a correct tokenizer must find in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    /// The raw stream bytes: declaration, header, elements and keepalives.
    pub bytes: Vec<u8>,
    /// Top-level elements after the header: stanzas plus the few dialback elements. This
    /// is the number of `Frame::Element`s a framer must yield.
    pub stanzas: usize,
    /// Every start or empty-element tag, the stream header and nested children included:
    /// the number of start events a full XML parser reports.
    pub elements: usize,
}

/// Generates an S2S stream of at least `target_bytes` bytes (it stops after the first
/// whole element that reaches the target) from `seed`. See the module docs for what it
/// contains.
pub fn s2s_stream(target_bytes: usize, seed: u64) -> Corpus {
    let mut g = Gen::new(seed, target_bytes);
    g.out.extend_from_slice(PROSODY_HEADER.as_bytes());
    while g.out.len() < target_bytes {
        g.element();
        g.stanzas += 1;
        // Whitespace keepalives: Prosody sends a single space, others a newline.
        if g.rng.chance(2) {
            g.out.push(if g.rng.chance(50) { b' ' } else { b'\n' });
        }
    }
    let elements = count_start_tags(&g.out);
    Corpus {
        bytes: g.out,
        stanzas: g.stanzas,
        elements,
    }
}

/// A stream header then one `<message/>` whose `id` attribute is `value_len` bytes long
/// (a slowloris-style peer that trickles one huge attribute value). The element must stay
/// within the framer's `max_element_size` (256 KiB by default): keep `value_len` below
/// about 255 KiB.
pub fn big_attribute_element(value_len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::with_capacity(PROSODY_HEADER.len() + value_len + 128);
    out.extend_from_slice(PROSODY_HEADER.as_bytes());
    out.extend_from_slice(
        b"<message to='cupuser1@cupdomain.test' from='jdoe1@gmail.test/tdPWTEsxhw-I' id='",
    );
    out.extend((0..value_len).map(|i| ALPHABET[i % ALPHABET.len()]));
    out.extend_from_slice(b"'/>");
    out
}

/// Counts start and empty-element tags: every `<` not followed by `/`, `?` or `!`. Exact
/// for this corpus, whose text is always escaped and which has no comments or CDATA.
fn count_start_tags(bytes: &[u8]) -> usize {
    bytes
        .windows(2)
        .filter(|w| w[0] == b'<' && !matches!(w[1], b'/' | b'?' | b'!'))
        .count()
}

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators",
/// 2016), seeded through one splitmix64 step so that nearby seeds diverge at once. Not
/// for cryptography; only for reproducible test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n` > 0, below 2^32; the bias is below 2^-32 · n).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Localparts of users on both sides; a few are not ASCII (RFC 7622 allows it).
const NAMES: &[&str] = &[
    "jdoe",
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "marie.dupont",
    "j.smith",
    "cupuser",
    "ops-team",
    "josé",
    "zoë",
    "andré",
    "田中",
    "müller",
    "søren",
];

/// Entity capabilities of common clients (XEP-0115 §4): node, client name, category type.
const CLIENTS: &[(&str, &str, &str)] = &[
    ("http://conversations.im", "Conversations", "phone"),
    ("https://gajim.org", "Gajim", "pc"),
    ("https://dino.im", "Dino", "pc"),
    ("http://monal.im/", "Monal", "phone"),
    ("https://psi-plus.com", "Psi+", "pc"),
    ("http://pidgin.im/", "Pidgin", "pc"),
    ("https://cheogram.com", "Cheogram", "phone"),
    ("https://movim.eu/", "Movim", "web"),
    ("http://profanity-im.github.io", "Profanity", "console"),
    ("https://siskin.im", "Siskin IM", "phone"),
];

/// disco#info features (XEP-0030 §3.1) as clients and servers advertise them.
const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/muc",
    "http://jabber.org/protocol/nick+notify",
    "http://jabber.org/protocol/ibb",
    "http://jabber.org/protocol/si",
    "http://jabber.org/protocol/si/profile/file-transfer",
    "jabber:iq:version",
    "jabber:iq:last",
    "jabber:x:conference",
    "jabber:x:oob",
    "urn:xmpp:avatar:metadata+notify",
    "urn:xmpp:bookmarks:1+notify",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:receipts",
    "urn:xmpp:ping",
    "urn:xmpp:time",
    "urn:xmpp:idle:1",
    "urn:xmpp:jingle:1",
    "urn:xmpp:jingle:apps:rtp:1",
    "urn:xmpp:jingle:apps:rtp:audio",
    "urn:xmpp:jingle:apps:rtp:video",
    "urn:xmpp:jingle:apps:file-transfer:5",
    "urn:xmpp:jingle:transports:ice-udp:1",
    "urn:xmpp:jingle:transports:s5b:1",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:message-retract:1",
    "urn:xmpp:reactions:0",
    "urn:xmpp:reply:0",
    "urn:xmpp:sid:0",
    "urn:xmpp:omemo:2:devices+notify",
    "eu.siacs.conversations.axolotl.devicelist+notify",
    "vcard-temp",
    "urn:xmpp:mam:2",
    "urn:xmpp:carbons:2",
    "urn:xmpp:sce:1",
];

/// Nicknames and roster names (before escaping).
const NICKS: &[&str] = &[
    "Jane O'Brien",
    "José",
    "田中さん",
    "Bob & Co",
    "Ops",
    "Zoë \"Z\"",
];

/// Plain words for text.
const WORDS: &[&str] = &[
    "hello",
    "hi",
    "the",
    "a",
    "and",
    "to",
    "of",
    "is",
    "it",
    "ok",
    "yes",
    "no",
    "thanks",
    "meeting",
    "tomorrow",
    "at",
    "noon",
    "server",
    "federation",
    "works",
    "again",
    "after",
    "the",
    "upgrade",
    "did",
    "you",
    "see",
    "my",
    "last",
    "message",
    "about",
    "certificate",
    "renewal",
    "lol",
    "sure",
    "see",
    "you",
    "later",
    "coffee",
    "?",
    "!",
    "release",
    "notes",
    "are",
    "up",
    "on",
    "the",
    "wiki",
    "ping",
    "me",
    "when",
    "done",
    "please",
    "review",
    "patch",
    "https://example.org/some/page?id=42",
    "100%",
    "v0.12.4",
    "2026-11-21",
];

/// Words that need escaping (`&`, `<`, `>`, `'`, `"`).
const SPECIAL: &[&str] = &[
    "R&D",
    "<3",
    "it's",
    "don't",
    "I'm",
    "\"quoted\"",
    "a<b",
    "x > y",
    "Tom & Jerry",
    "->",
    "AT&T",
    "<html>",
    "O'Brien",
];

/// Words outside ASCII: accented Latin, CJK, Cyrillic, Arabic, emoji.
const UNICODE: &[&str] = &[
    "café",
    "naïve",
    "Grüße",
    "élève",
    "déjà vu",
    "señor",
    "日本",
    "日本語のテキスト",
    "東京で会いましょう",
    "привет",
    "спасибо",
    "مرحبا",
    "😀",
    "🎉",
    "👍🏽",
    "❤️",
    "🇫🇷",
    "€",
    "—",
    "…",
];

/// Away/presence status texts (before escaping).
const STATUSES: &[&str] = &[
    "In a meeting",
    "I'm away, back at 3 <maybe>",
    "Working from home & on call",
    "En réunion — de retour bientôt",
    "日本出張中",
    "На связи",
    "🏖️ vacation until Monday",
    "Busy",
    "\"Do not disturb\"",
    "Available",
];

/// The stream generator: the PRNG, the output and the populations of users.
struct Gen {
    rng: Rng,
    out: Vec<u8>,
    stanzas: usize,
    /// `(bare JID, resources)` of Prosody's users at `gmail.test`.
    local: Vec<(String, Vec<String>)>,
    /// `(bare JID, resources)` of the contacts at `cupdomain.test`.
    remote: Vec<(String, Vec<String>)>,
    /// `(node, ver)` caps pairs in circulation.
    caps: Vec<(usize, String)>,
    /// Seconds since 2026-11-21T00:00:00Z, for delay stamps; advances slowly.
    clock: u64,
    /// Scratch for escaped text.
    text: String,
}

impl Gen {
    fn new(seed: u64, target_bytes: usize) -> Gen {
        let mut rng = Rng::new(seed);
        let users = |rng: &mut Rng, domain: &str, prosody: bool| -> Vec<(String, Vec<String>)> {
            (0..64)
                .map(|i| {
                    let bare = format!("{}{}@{}", NAMES[i % NAMES.len()], i / 3, domain);
                    let n = rng.range(1, 3);
                    let res = (0..n)
                        .map(|_| {
                            if prosody {
                                // Prosody-style random resource, e.g. `tdPWTEsxhw-I`.
                                b64url(rng, 12)
                            } else {
                                // ejabberd-style numeric resource.
                                (0..rng.range(19, 23))
                                    .map(|_| (b'0' + rng.below(10) as u8) as char)
                                    .collect()
                            }
                        })
                        .collect();
                    (bare, res)
                })
                .collect()
        };
        let local = users(&mut rng, LOCAL_DOMAIN, true);
        let remote = users(&mut rng, REMOTE_DOMAIN, false);
        let caps = (0..24)
            .map(|_| {
                let client = rng.below(CLIENTS.len());
                (client, b64(&mut rng, 20))
            })
            .collect();
        Gen {
            rng,
            out: Vec::with_capacity(target_bytes + 4096),
            stanzas: 0,
            local,
            remote,
            caps,
            clock: 12 * 3600 + 22 * 60 + 14,
            text: String::new(),
        }
    }

    /// Writes one top-level element, chosen by weight (per mille).
    fn element(&mut self) {
        self.clock += self.rng.below(3) as u64;
        match self.rng.below(1000) {
            0..=289 => self.presence_available(),
            290..=349 => self.presence_unavailable(),
            350..=419 => self.presence_subscription(),
            420..=674 => self.message_chat(),
            675..=714 => self.message_groupchat(),
            715..=784 => self.message_chat_state(),
            785..=834 => self.message_receipt(),
            835..=874 => self.message_pep(),
            875..=904 => self.iq_disco_get(),
            905..=934 => self.iq_disco_result(),
            935..=964 => self.iq_ping(),
            965..=984 => self.iq_roster(),
            985..=994 => self.iq_error(),
            _ => self.dialback(),
        }
    }

    // ---- small pieces -------------------------------------------------------------

    fn local_bare(&mut self) -> String {
        self.rng.pick(&self.local).0.clone()
    }

    fn local_full(&mut self) -> String {
        let (bare, res) = &self.local[self.rng.below(self.local.len())];
        format!("{bare}/{}", res[self.rng.below(res.len())])
    }

    fn remote_bare(&mut self) -> String {
        self.rng.pick(&self.remote).0.clone()
    }

    fn remote_full(&mut self) -> String {
        let (bare, res) = &self.remote[self.rng.below(self.remote.len())];
        format!("{bare}/{}", res[self.rng.below(res.len())])
    }

    /// A stanza id in one of the shapes seen in the wild: 32 hex digits (ejabberd, the
    /// captures), a dashed UUID (Prosody), or a short random string (Conversations).
    fn id(&mut self) -> String {
        match self.rng.below(3) {
            0 => hex(&mut self.rng, 32),
            1 => uuid(&mut self.rng),
            _ => b64url(&mut self.rng, 12),
        }
    }

    /// An XEP-0082 timestamp, sometimes with microseconds as ejabberd writes them.
    fn stamp(&mut self) -> String {
        let t = self.clock.saturating_sub(self.rng.below(7200) as u64) % 86_400;
        let (h, m, s) = (t / 3600, t / 60 % 60, t % 60);
        if self.rng.chance(30) {
            let us = self.rng.below(1_000_000);
            format!("2026-11-21T{h:02}:{m:02}:{s:02}.{us:06}Z")
        } else {
            format!("2026-11-21T{h:02}:{m:02}:{s:02}Z")
        }
    }

    /// Raw text of at least `len` bytes once escaped, as words; returns it escaped.
    fn prose(&mut self, len: usize) -> String {
        let mut t = std::mem::take(&mut self.text);
        t.clear();
        while t.len() < len {
            if !t.is_empty() {
                t.push(if self.rng.chance(3) { '\n' } else { ' ' });
            }
            let word = match self.rng.below(100) {
                0..=79 => *self.rng.pick(WORDS),
                80..=89 => *self.rng.pick(SPECIAL),
                _ => *self.rng.pick(UNICODE),
            };
            escape_into(&mut t, word);
        }
        let s = t.clone();
        self.text = t;
        s
    }

    /// A body length: mostly short chat lines, some paragraphs, a few pastes.
    fn body_len(&mut self) -> usize {
        match self.rng.below(100) {
            0..=64 => self.rng.range(20, 120),
            65..=91 => self.rng.range(121, 600),
            _ => self.rng.range(601, 2000),
        }
    }

    /// Writes a start tag with shuffled attributes (values already escaped).
    fn start(&mut self, name: &str, attrs: &mut [(&str, String)], empty: bool) {
        self.rng.shuffle(attrs);
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        for (k, v) in attrs.iter() {
            self.out.push(b' ');
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"='");
            self.out.extend_from_slice(v.as_bytes());
            self.out.push(b'\'');
        }
        self.out.extend_from_slice(if empty { b"/>" } else { b">" });
    }

    fn push(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Writes `<name>text</name>` (text already escaped).
    fn leaf(&mut self, name: &str, text: &str) {
        let _ = write!(Sink(&mut self.out), "<{name}>{text}</{name}>");
    }

    // ---- presence (RFC 6121 §4) ---------------------------------------------------

    fn presence_available(&mut self) {
        let mut attrs = vec![("from", self.local_full()), ("to", self.remote_bare())];
        if self.rng.chance(80) {
            attrs.push(("id", self.id()));
        }
        if self.rng.chance(60) {
            attrs.push(("xml:lang", "en".into()));
        }
        let children = self.rng.chance(95);
        self.start("presence", &mut attrs, !children);
        if !children {
            return;
        }
        if self.rng.chance(40) {
            let show = *self.rng.pick(&["away", "chat", "dnd", "xa"]);
            self.leaf("show", show);
        }
        if self.rng.chance(35) {
            let mut status = String::new();
            let raw = *self.rng.pick(STATUSES);
            escape_into(&mut status, raw);
            self.leaf("status", &status);
        }
        if self.rng.chance(60) {
            let p = *self
                .rng
                .pick(&["0", "1", "5", "10", "24", "50", "-1", "127"]);
            self.leaf("priority", p);
        }
        if self.rng.chance(90) {
            let (client, ver) = self.caps[self.rng.below(self.caps.len())].clone();
            let mut c = vec![
                ("xmlns", "http://jabber.org/protocol/caps".to_string()),
                ("hash", "sha-1".into()),
                ("node", CLIENTS[client].0.into()),
                ("ver", ver),
            ];
            self.start("c", &mut c, true);
        }
        if self.rng.chance(50) {
            let photo = hex(&mut self.rng, 40);
            let _ = write!(
                Sink(&mut self.out),
                "<x xmlns='vcard-temp:x:update'><photo>{photo}</photo></x>"
            );
        }
        if self.rng.chance(5) {
            let since = self.stamp();
            let _ = write!(
                Sink(&mut self.out),
                "<idle xmlns='urn:xmpp:idle:1' since='{since}'/>"
            );
        }
        if self.rng.chance(25) {
            let mut d = vec![
                ("xmlns", "urn:xmpp:delay".to_string()),
                ("stamp", self.stamp()),
                (
                    "from",
                    if self.rng.chance(50) {
                        LOCAL_DOMAIN.into()
                    } else {
                        self.local_full()
                    },
                ),
            ];
            self.start("delay", &mut d, true);
        }
        self.push("</presence>");
    }

    fn presence_unavailable(&mut self) {
        let mut attrs = vec![
            ("type", "unavailable".to_string()),
            ("from", self.local_full()),
            (
                "to",
                if self.rng.chance(70) {
                    self.remote_bare()
                } else {
                    self.remote_full()
                },
            ),
        ];
        if self.rng.chance(20) {
            self.start("presence", &mut attrs, false);
            self.push("<status>Logged out</status></presence>");
        } else {
            self.start("presence", &mut attrs, true);
        }
    }

    /// Subscription management (RFC 6121 §3) and probes (§4.3), from bare and full JIDs.
    fn presence_subscription(&mut self) {
        let kind = *self.rng.pick(&[
            "subscribe",
            "subscribed",
            "unsubscribe",
            "unsubscribed",
            "probe",
            "probe",
        ]);
        let from = if kind == "probe" && self.rng.chance(50) {
            self.local_full()
        } else {
            self.local_bare()
        };
        let mut attrs = vec![
            ("type", kind.to_string()),
            ("from", from),
            ("to", self.remote_bare()),
        ];
        if kind != "probe" {
            attrs.push(("id", self.id()));
            attrs.push(("xml:lang", "en".into()));
        }
        if kind == "subscribe" && self.rng.chance(40) {
            self.start("presence", &mut attrs, false);
            let mut nick = String::new();
            let raw = *self.rng.pick(NICKS);
            escape_into(&mut nick, raw);
            let _ = write!(
                Sink(&mut self.out),
                "<nick xmlns='http://jabber.org/protocol/nick'>{nick}</nick></presence>"
            );
        } else {
            self.start("presence", &mut attrs, true);
        }
    }

    // ---- messages (RFC 6121 §5) ---------------------------------------------------

    fn message_chat(&mut self) {
        let mut attrs = vec![
            ("type", "chat".to_string()),
            ("from", self.local_full()),
            (
                "to",
                if self.rng.chance(60) {
                    self.remote_bare()
                } else {
                    self.remote_full()
                },
            ),
            ("id", self.id()),
        ];
        if self.rng.chance(60) {
            attrs.push(("xml:lang", "en".into()));
        }
        self.start("message", &mut attrs, false);
        let len = self.body_len();
        let body = self.prose(len);
        self.leaf("body", &body);
        if self.rng.chance(30) {
            let thread = uuid(&mut self.rng);
            self.leaf("thread", &thread);
        }
        if self.rng.chance(70) {
            self.push("<active xmlns='http://jabber.org/protocol/chatstates'/>");
        }
        if self.rng.chance(60) {
            self.push("<request xmlns='urn:xmpp:receipts'/>");
        }
        if self.rng.chance(50) {
            self.push("<markable xmlns='urn:xmpp:chat-markers:0'/>");
        }
        if self.rng.chance(60) {
            let id = uuid(&mut self.rng);
            let _ = write!(
                Sink(&mut self.out),
                "<origin-id xmlns='urn:xmpp:sid:0' id='{id}'/>"
            );
        }
        self.push("</message>");
    }

    /// A MUC message relayed by a room at `conference.gmail.test` (XEP-0045 §7.4).
    fn message_groupchat(&mut self) {
        let room = format!("room{}@conference.{LOCAL_DOMAIN}", self.rng.below(8));
        let nick = NAMES[self.rng.below(NAMES.len())];
        let mut attrs = vec![
            ("type", "groupchat".to_string()),
            ("from", format!("{room}/{nick}")),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        self.start("message", &mut attrs, false);
        let len = self.body_len();
        let body = self.prose(len);
        self.leaf("body", &body);
        let (sid, oid) = (uuid(&mut self.rng), b64(&mut self.rng, 16));
        let _ = write!(
            Sink(&mut self.out),
            "<stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='{room}'/>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='{oid}'/></message>"
        );
    }

    fn message_chat_state(&mut self) {
        let state = *self.rng.pick(&[
            "composing",
            "composing",
            "paused",
            "active",
            "inactive",
            "gone",
        ]);
        let mut attrs = vec![
            ("type", "chat".to_string()),
            ("from", self.local_full()),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        self.start("message", &mut attrs, false);
        let _ = write!(
            Sink(&mut self.out),
            "<{state} xmlns='http://jabber.org/protocol/chatstates'/>\
             <no-store xmlns='urn:xmpp:hints'/></message>"
        );
    }

    /// A delivery receipt (XEP-0184 §4), sometimes with a displayed marker (XEP-0333).
    fn message_receipt(&mut self) {
        let mut attrs = vec![
            ("from", self.local_full()),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        if self.rng.chance(70) {
            attrs.push(("type", "chat".into()));
        }
        self.start("message", &mut attrs, false);
        let acked = self.id();
        let _ = write!(
            Sink(&mut self.out),
            "<received xmlns='urn:xmpp:receipts' id='{acked}'/>"
        );
        if self.rng.chance(40) {
            let _ = write!(
                Sink(&mut self.out),
                "<displayed xmlns='urn:xmpp:chat-markers:0' id='{acked}'/>"
            );
        }
        self.push("<store xmlns='urn:xmpp:hints'/></message>");
    }

    /// A PEP notification (XEP-0163 §4.3): avatar metadata, nickname or OMEMO devices.
    fn message_pep(&mut self) {
        let mut attrs = vec![
            ("type", "headline".to_string()),
            ("from", self.local_bare()),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        self.start("message", &mut attrs, false);
        self.push("<event xmlns='http://jabber.org/protocol/pubsub#event'>");
        match self.rng.below(3) {
            0 => {
                let sha = hex(&mut self.rng, 40);
                let bytes = self.rng.range(2_000, 60_000);
                let _ = write!(
                    Sink(&mut self.out),
                    "<items node='urn:xmpp:avatar:metadata'><item id='{sha}'>\
                     <metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='{bytes}' \
                     height='96' width='96' id='{sha}' type='image/png'/></metadata></item></items>"
                );
            }
            1 => {
                let mut nick = String::new();
                let raw = *self.rng.pick(NICKS);
                escape_into(&mut nick, raw);
                let _ = write!(
                    Sink(&mut self.out),
                    "<items node='http://jabber.org/protocol/nick'><item id='current'>\
                     <nick xmlns='http://jabber.org/protocol/nick'>{nick}</nick></item></items>"
                );
            }
            _ => {
                self.push(
                    "<items node='urn:xmpp:omemo:2:devices'><item id='current'>\
                     <devices xmlns='urn:xmpp:omemo:2'>",
                );
                for _ in 0..self.rng.range(1, 5) {
                    let id = self.rng.range(1, 2_147_483_647);
                    let _ = write!(Sink(&mut self.out), "<device id='{id}'/>");
                }
                self.push("</devices></item></items>");
            }
        }
        self.push("</event></message>");
    }

    // ---- iq (RFC 6120 §8.2.3) -------------------------------------------------------

    fn iq_disco_get(&mut self) {
        let (client, ver) = self.caps[self.rng.below(self.caps.len())].clone();
        let mut attrs = vec![
            ("type", "get".to_string()),
            ("from", self.local_full()),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        self.start("iq", &mut attrs, false);
        let node = CLIENTS[client].0;
        let _ = write!(
            Sink(&mut self.out),
            "<query xmlns='http://jabber.org/protocol/disco#info' node='{node}#{ver}'/></iq>"
        );
    }

    fn iq_disco_result(&mut self) {
        let server = self.rng.chance(30);
        let (from, to) = if server {
            (LOCAL_DOMAIN.to_string(), REMOTE_DOMAIN.to_string())
        } else {
            (self.local_full(), self.remote_full())
        };
        let mut attrs = vec![
            ("type", "result".to_string()),
            ("from", from),
            ("to", to),
            ("id", self.id()),
        ];
        self.start("iq", &mut attrs, false);
        self.push("<query xmlns='http://jabber.org/protocol/disco#info'");
        let (name, category, kind) = if server {
            ("Prosody", "server", "im")
        } else {
            let (client, ver) = self.caps[self.rng.below(self.caps.len())].clone();
            let _ = write!(Sink(&mut self.out), " node='{}#{ver}'", CLIENTS[client].0);
            (CLIENTS[client].1, "client", CLIENTS[client].2)
        };
        let _ = write!(
            Sink(&mut self.out),
            "><identity category='{category}' type='{kind}' name='{name}'/>"
        );
        let first = self.rng.below(FEATURES.len());
        for i in 0..self.rng.range(10, FEATURES.len()) {
            let var = FEATURES[(first + i) % FEATURES.len()];
            let _ = write!(Sink(&mut self.out), "<feature var='{var}'/>");
        }
        self.push("</query></iq>");
    }

    /// XEP-0199 server-to-server ping and its result.
    fn iq_ping(&mut self) {
        let mut attrs = vec![
            ("from", LOCAL_DOMAIN.to_string()),
            ("to", REMOTE_DOMAIN.to_string()),
            ("id", self.id()),
        ];
        if self.rng.chance(50) {
            attrs.push(("type", "get".into()));
            self.start("iq", &mut attrs, false);
            self.push("<ping xmlns='urn:xmpp:ping'/></iq>");
        } else {
            attrs.push(("type", "result".into()));
            self.start("iq", &mut attrs, true);
        }
    }

    /// A roster-shaped payload (RFC 6121 §2.1.2) in an iq set.
    fn iq_roster(&mut self) {
        let mut attrs = vec![
            ("type", "set".to_string()),
            ("from", self.local_bare()),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        self.start("iq", &mut attrs, false);
        let ver = hex(&mut self.rng, 16);
        let _ = write!(
            Sink(&mut self.out),
            "<query xmlns='jabber:iq:roster' ver='{ver}'>"
        );
        for _ in 0..self.rng.range(1, 5) {
            let jid = self.local_bare();
            let mut name = String::new();
            let raw = *self.rng.pick(NICKS);
            escape_into(&mut name, raw);
            let sub = *self.rng.pick(&["both", "to", "from", "none"]);
            let mut item = vec![
                ("jid", jid),
                ("name", name),
                ("subscription", sub.to_string()),
            ];
            self.start("item", &mut item, false);
            let group = *self
                .rng
                .pick(&["Friends", "Work", "Family", "Équipe", "友達"]);
            self.leaf("group", group);
            self.push("</item>");
        }
        self.push("</query></iq>");
    }

    /// A stanza error reply (RFC 6120 §8.3).
    fn iq_error(&mut self) {
        let mut attrs = vec![
            ("type", "error".to_string()),
            ("from", self.local_full()),
            ("to", self.remote_full()),
            ("id", self.id()),
        ];
        self.start("iq", &mut attrs, false);
        let (kind, cond) = *self.rng.pick(&[
            ("cancel", "service-unavailable"),
            ("cancel", "item-not-found"),
            ("auth", "forbidden"),
            ("wait", "resource-constraint"),
        ]);
        let _ = write!(
            Sink(&mut self.out),
            "<error type='{kind}'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    // ---- dialback (XEP-0220 §2) -----------------------------------------------------

    fn dialback(&mut self) {
        let key = hex(&mut self.rng, 64);
        let mut attrs = vec![
            ("to", REMOTE_DOMAIN.to_string()),
            ("from", LOCAL_DOMAIN.to_string()),
        ];
        match self.rng.below(4) {
            0 => {
                self.start("db:result", &mut attrs, false);
                let _ = write!(Sink(&mut self.out), "{key}</db:result>");
            }
            1 => {
                attrs.push(("id", uuid(&mut self.rng)));
                self.start("db:verify", &mut attrs, false);
                let _ = write!(Sink(&mut self.out), "{key}</db:verify>");
            }
            2 => {
                attrs.push(("type", "valid".into()));
                self.start("db:result", &mut attrs, true);
            }
            _ => {
                attrs.push(("type", "valid".into()));
                attrs.push(("id", uuid(&mut self.rng)));
                self.start("db:verify", &mut attrs, true);
            }
        }
    }
}

/// `fmt::Write` over a byte vector, for `write!` into the output.
struct Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Escapes `raw` as Prosody's serialiser does, all five predefined entities (XML 1.0
/// §4.6), appending to `out`.
fn escape_into(out: &mut String, raw: &str) {
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// `n` lowercase hex digits.
fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.below(16)]))
        .collect()
}

/// A dashed version-4-shaped UUID.
fn uuid(rng: &mut Rng) -> String {
    let h = hex(rng, 32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}

/// `n` characters of the base64url alphabet.
fn b64url(rng: &mut Rng, n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..n).map(|_| char::from(A[rng.below(64)])).collect()
}

/// Standard base64 of `bytes` random bytes, padded, like a caps `ver` (20 bytes → 28
/// characters ending in `=`).
fn b64(rng: &mut Rng, bytes: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data: Vec<u8> = (0..bytes).map(|_| rng.below(256) as u8).collect();
    let mut s = String::with_capacity(bytes.div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                s.push('=');
            }
        }
    }
    s
}
