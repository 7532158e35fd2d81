//! Shared test helpers: capture parsing and a framer driver.
#![allow(dead_code)]

pub mod pair;

use fedrouter::xml::{Frame, Framer, Limits, XmlError};

/// Every frame a framer yields for `input` split into `chunks` (sizes cycled), up to and
/// including the first error or the stream close.
pub fn frames_chunked(
    input: &[u8],
    chunks: &[usize],
    limits: Limits,
) -> Vec<Result<Frame, XmlError>> {
    let mut f = Framer::new(limits);
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = chunks[i % chunks.len()].max(1).min(input.len() - at);
        i += 1;
        f.feed(&input[at..at + n]);
        at += n;
        if drain(&mut f, &mut out) {
            return out;
        }
    }
    out
}

/// Drains frames into `out`; true when the stream ended (error or close).
pub fn drain(f: &mut Framer, out: &mut Vec<Result<Frame, XmlError>>) -> bool {
    loop {
        match f.next_frame() {
            Ok(Some(Frame::Close)) => {
                out.push(Ok(Frame::Close));
                return true;
            }
            Ok(Some(fr)) => out.push(Ok(fr)),
            Ok(None) => return false,
            Err(e) => {
                out.push(Err(e));
                return true;
            }
        }
    }
}

/// All frames for `input` fed at once.
pub fn frames(input: &[u8]) -> Vec<Result<Frame, XmlError>> {
    frames_chunked(input, &[usize::MAX], Limits::default())
}

/// Splits one direction of a captured connection into stream documents: every
/// `<?xml ` starts a new one (a stream restart after STARTTLS or SASL).
fn split_documents(stream: &[u8], out: &mut Vec<Vec<u8>>) {
    let mut starts: Vec<usize> = memchr::memmem::find_iter(stream, b"<?xml ").collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    starts.push(stream.len());
    for w in starts.windows(2) {
        if w[1] > w[0] {
            out.push(stream[w[0]..w[1]].to_vec());
        }
    }
}

/// The stream documents in the captures under `tests/data/` (real Prosody and ejabberd
/// S2S traffic), one per connection, direction and stream restart.
pub fn capture_documents() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut docs = Vec::new();
    // The plain transcript, per connection and direction.
    let mut streams: std::collections::BTreeMap<(usize, bool), Vec<u8>> = Default::default();
    for chunk in transcript() {
        streams
            .entry((chunk.conn, chunk.c2s))
            .or_default()
            .extend_from_slice(&chunk.bytes);
    }
    for s in streams.values() {
        split_documents(s, &mut docs);
    }
    // Prosody raw log: blocks "ts session type local remote IN|OUT\n<payload>" split by
    // blank lines; bytes after TLS decryption.
    for name in ["plain-prosody-s2s-raw.txt", "tls-prosody-s2s-raw.txt"] {
        let raw = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        let mut by_session: std::collections::BTreeMap<(String, String), Vec<u8>> =
            Default::default();
        for block in raw.split("\n\n") {
            let mut lines = block.splitn(2, '\n');
            let head = lines.next().unwrap_or("");
            let cols: Vec<&str> = head.split(' ').collect();
            if head.starts_with('#') || cols.len() != 6 {
                continue;
            }
            let payload = lines.next().unwrap_or("");
            by_session
                .entry((cols[1].to_string(), cols[5].to_string()))
                .or_default()
                .extend_from_slice(payload.as_bytes());
        }
        for s in by_session.values() {
            split_documents(s, &mut docs);
        }
    }
    docs
}

/// One payload of `plain-s2s-transcript.txt`, exactly as it crossed the wire.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub conn: usize,
    /// From the connecting (initiating) server.
    pub c2s: bool,
    pub bytes: Vec<u8>,
}

/// Every payload of the plain transcript, in order. Format: `connection #N: ...` lines,
/// then per payload `[  t] C>S domain (N bytes):\n` + N bytes + `\n`.
pub fn transcript() -> Vec<Chunk> {
    let t = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/plain-s2s-transcript.txt"
    ))
    .unwrap();
    let mut out = Vec::new();
    let mut conn = usize::MAX;
    let mut at = 0;
    while at < t.len() {
        let eol = memchr::memchr(b'\n', &t[at..]).map_or(t.len(), |i| at + i);
        let line = std::str::from_utf8(&t[at..eol]).unwrap();
        at = eol + 1;
        if let Some(rest) = line.strip_prefix("connection #") {
            conn = rest.split(':').next().unwrap().parse().unwrap();
        } else if let Some(open) = line.find(" bytes):") {
            let n: usize = line[line[..open].rfind('(').unwrap() + 1..open]
                .parse()
                .unwrap();
            out.push(Chunk {
                conn,
                c2s: line.contains(" C>S "),
                bytes: t[at..at + n].to_vec(),
            });
            assert_eq!(t.get(at + n), Some(&b'\n'), "payload length off: {line}");
            at += n + 1;
        }
    }
    out
}

/// A stream header as Prosody sends it.
pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    to='gmail.test' from='cupdomain.test' version='1.0'>";

/// `HEADER` followed by `body`.
pub fn stream(body: &str) -> Vec<u8> {
    let mut v = HEADER.as_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

/// Generated stanzas exercising escapes, non-ASCII, CDATA, nesting, prefixes,
/// keepalives and namespaces declared on the header and on elements.
pub fn generated_body(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        match i % 7 {
            0 => s.push_str(&format!(
                "<presence from='u{i}@gmail.test/r' to='c{i}@cupdomain.test'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://pidgin.im/' ver='AcN1/PEN8nq7AHD+9jpxMV4U6YM='/><status>at lunch &amp; back at 2 &lt;3 é日本</status><priority>{}</priority></presence>",
                i % 128
            )),
            1 => s.push_str(&format!(
                "<message type='chat' id='m{i}' from='a@gmail.test/x' to='b@cupdomain.test'><body>line one\nline &apos;two&apos; &#x263A; &#65;</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>\n"
            )),
            2 => s.push_str(&format!(
                "<iq type='get' id='q{i}' from='gmail.test' to='cupdomain.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq> "
            )),
            3 => s.push_str(&format!(
                "<db:result from='gmail.test' to='cupdomain.test'>{:064x}</db:result>",
                i
            )),
            4 => s.push_str(
                "<message to='b@cupdomain.test' from='a@gmail.test'><body><![CDATA[<not> &markup; ]] >]]></body><x:data xmlns:x='urn:example:x' x:attr=\"v&quot;\"><x:deep><x:deeper>t</x:deeper></x:deep></x:data></message>",
            ),
            5 => s.push_str(&format!(
                "<presence type='subscribe' from=\"u{i}@gmail.test\" to=\"c@cupdomain.test\" xml:lang='en'/>"
            )),
            _ => s.push_str("<r xmlns='urn:xmpp:sm:3'/>\r\n\t"),
        }
    }
    s
}
