//! What the stream fuzz targets (`s2s`, `c2s`, `dialback`) share: the script format that
//! turns fuzz bytes into calls on a sans-IO core ([`script`]), a simulated clock
//! ([`Clock`]), and a checker of what a core transmits ([`OutputCheck`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter_proto::dialback::DialbackSecret;
use fedrouter_proto::stream::s2s::{S2sConfig, Timeouts};
use fedrouter_proto::stream::sm::AckPolicy;
use fedrouter_proto::stream::FederationPolicy;
use fedrouter_proto::xml::{Element, Frame, Framer, Limits, Namespace};

/// The dialback secret of [`s2s_config`] (XEP-0185).
pub const DIALBACK_SECRET: &str = "fuzz secret";

/// A valid initial stream header from `p.example` to `a.example` (RFC 6120 §4.7).
pub const INBOUND_HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
to='a.example' from='p.example' version='1.0'>";

/// The S2S configuration of the stream targets: we host `a.example` and `b.example`,
/// hold a certificate for `a.example` (so STARTTLS is offered), have no certificate
/// verifier (so SASL EXTERNAL is never offered), default policy, default limits and
/// deadlines; XEP-0198 with the default ack policy when `sm`.
pub fn s2s_config(sm: bool) -> Arc<S2sConfig> {
    Arc::new(S2sConfig {
        local_domains: vec!["a.example".into(), "b.example".into()],
        certificate_domains: vec!["a.example".into()],
        policy: FederationPolicy::default(),
        dialback_secret: DialbackSecret::new(DIALBACK_SECRET),
        stream_id_key: [7; 32],
        cert_verifier: None,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        stream_management: sm.then(AckPolicy::default),
    })
}

/// Separates input bytes from a command byte in a script. `0xff` never occurs in UTF-8,
/// so no well-formed XML input is lost to it.
pub const COMMAND: u8 = 0xff;

/// One step of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Bytes for `handle_input` (never empty).
    Input(&'a [u8]),
    /// A command byte (its meaning is the target's).
    Command(u8),
}

/// Splits fuzz bytes into steps: runs of bytes without `0xff` are [`Step::Input`]; `0xff`
/// followed by a byte `c` is [`Step::Command`]`(c)` (a trailing lone `0xff` is dropped).
/// At most `max_steps` steps are returned, so every run is bounded.
pub fn script(data: &[u8], max_steps: usize) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && steps.len() < max_steps {
        match memchr(rest) {
            Some(0) => {
                if let Some(&c) = rest.get(1) {
                    steps.push(Step::Command(c));
                }
                rest = rest.get(2..).unwrap_or(&[]);
            }
            Some(i) => {
                steps.push(Step::Input(&rest[..i]));
                rest = &rest[i..];
            }
            None => {
                steps.push(Step::Input(rest));
                rest = &[];
            }
        }
    }
    steps
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == COMMAND)
}

/// A simulated clock: an arbitrary base instant plus the time the script advanced.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    elapsed: Duration,
}

impl Clock {
    /// A clock at its base instant.
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&mut self, d: Duration) {
        self.elapsed += d;
    }

    /// Moves the clock to `t` if it is later than now.
    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now() {
            self.elapsed = t - self.base;
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Checks a core's transmitted bytes, fed in the order they were polled: each stream
/// (from one XML declaration to the next, as a restart after TLS or SASL writes a new
/// header) must frame without error; after a `<stream:error/>` the next frame must be the
/// stream's close; after the close nothing but whitespace may follow (RFC 6120 §4.4,
/// §4.9.1). Panics on a violation, naming it.
pub struct OutputCheck {
    framer: Framer,
    /// A `<stream:error/>` was sent on this stream.
    pub error_sent: bool,
    /// `</stream:stream>` was sent (on any stream: nothing may follow it).
    pub closed: bool,
    /// Stream errors sent in all.
    pub errors: u32,
}

impl OutputCheck {
    /// A checker for a fresh connection.
    pub fn new() -> OutputCheck {
        OutputCheck {
            framer: Framer::new(Limits::default()),
            error_sent: false,
            closed: false,
            errors: 0,
        }
    }

    /// Feeds transmitted bytes; returns the elements framed from them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Element> {
        const DECL: &[u8] = b"<?xml version='1.0'?>";
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            // Split at the next XML declaration after the start: a restarted stream.
            let next = find(&rest[1..], DECL).map(|i| i + 1);
            let (chunk, tail) = match next {
                Some(i) => rest.split_at(i),
                None => (rest, &[][..]),
            };
            if chunk.starts_with(DECL) {
                assert!(!self.closed, "a new stream header after </stream:stream>");
                self.framer.reset();
                self.error_sent = false;
            }
            if self.closed {
                assert!(
                    chunk.iter().all(u8::is_ascii_whitespace),
                    "bytes sent after </stream:stream>: {:?}",
                    String::from_utf8_lossy(chunk)
                );
                rest = tail;
                continue;
            }
            self.framer.feed(chunk);
            loop {
                match self.framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Header(_))) => {}
                    Ok(Some(Frame::Element(el))) => {
                        assert!(
                            !self.error_sent,
                            "an element after <stream:error/>: {}",
                            el.as_str()
                        );
                        if el.name() == "error" && *el.namespace() == Namespace::Streams {
                            self.error_sent = true;
                            self.errors += 1;
                        }
                        out.push(el);
                    }
                    Ok(Some(Frame::Close)) => {
                        self.closed = true;
                    }
                    Err(e) => panic!(
                        "the core sent malformed XML ({e}): {:?}",
                        String::from_utf8_lossy(bytes)
                    ),
                }
            }
            rest = tail;
        }
        out
    }
}

impl Default for OutputCheck {
    fn default() -> Self {
        OutputCheck::new()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
