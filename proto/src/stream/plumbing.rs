//! The plumbing of an RFC 6120 stream, the same for the S2S and the C2S machine: the
//! framer that cuts the peer's bytes into its stream header, elements and close (§4.2,
//! §4.4, §4.7), our header and the transmit buffer, the event queue, the deadlines (the
//! peer's first stream header, each negotiation step, the whitespace keepalive of §4.6.1,
//! the closing handshake of §4.4) and the close sequence (a stream error, §4.9, then
//! `</stream:stream>`). Each machine owns one [`Plumbing`] and keeps what is its own: the
//! negotiation state, what the headers must say, and what it does when the stream ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::common::CloseReason;
use crate::condition::StreamCondition;
use crate::xml::tree::Node;
use crate::xml::writer::{write_stream_error, STREAM_CLOSE};
use crate::xml::{ns, Element, Frame, Framer, Limits};

/// The stream error text (`connection-timeout`) when the peer's first stream header did
/// not arrive within the header timeout.
pub(super) const NO_HEADER_IN_TIME: &str = "no stream header in time";

/// The stream error text (`connection-timeout`) when a negotiation step did not complete
/// within the negotiation timeout.
pub(super) const STEP_TIMED_OUT: &str = "negotiation step timed out";

/// Which of the [`Plumbing`]'s own deadlines passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// The peer's first stream header did not arrive in time: close with
    /// `connection-timeout` ([`NO_HEADER_IN_TIME`]), without a closing handshake.
    Header,
    /// The step deadline: a negotiation step, or the closing handshake when closing.
    Step,
}

/// The shared state of one stream (see the module docs). The machines reach into its
/// fields where a step is theirs alone (their header attributes, their `last_tx` updates).
#[derive(Debug)]
pub(super) struct Plumbing<E> {
    /// Cuts the peer's bytes into frames.
    pub(super) framer: Framer,
    /// Bytes to transmit.
    pub(super) out: Vec<u8>,
    /// Events for the runtime.
    events: VecDeque<E>,
    /// Our header for the current stream (initial or restarted) is in `out` already.
    pub(super) header_sent: bool,
    /// The current step's deadline: a negotiation step, or the closing handshake.
    pub(super) deadline: Option<Instant>,
    /// The peer's first stream header must arrive before this.
    header_deadline: Option<Instant>,
    /// When we last transmitted something the peer sees as traffic (keepalive base).
    pub(super) last_tx: Instant,
    /// Why we closed, while waiting for the peer's close.
    close_reason: Option<CloseReason>,
    /// The current stream id (ours on the receiving end, the peer's on the initiating).
    pub(super) stream_id: String,
    /// Makes this connection's stream ids (and nonces) distinct from other connections'.
    pub(super) id_nonce: u64,
    /// Stream restarts so far (RFC 6120 §5.4.3.3, §6.4.6).
    pub(super) restarts: u32,
}

impl<E> Plumbing<E> {
    /// Fresh plumbing for a new connection.
    pub(super) fn new(limits: Limits, id_nonce: u64, now: Instant) -> Self {
        Plumbing {
            framer: Framer::new(limits),
            out: Vec::new(),
            events: VecDeque::new(),
            header_sent: false,
            deadline: None,
            header_deadline: None,
            last_tx: now,
            close_reason: None,
            stream_id: String::new(),
            id_nonce,
            restarts: 0,
        }
    }

    // ----- the peer's first header -----

    /// Arms the deadline for the peer's first stream header: `within` from `now` (`None`:
    /// only the step deadline applies). A peer that sends nothing holds a socket and a
    /// slot of the unauthenticated-connection limit; this frees them.
    pub(super) fn expect_first_header(&mut self, now: Instant, within: Option<Duration>) {
        self.header_deadline = within.map(|d| now + d);
    }

    /// A stream header arrived from the peer: the first-header deadline is met.
    pub(super) fn header_arrived(&mut self) {
        self.header_deadline = None;
    }

    // ----- outputs -----

    /// See `S2sConnection::poll_transmit`. When `into` is empty the two buffers are
    /// swapped instead of copied: `into` takes the transmit buffer, and the transmit
    /// buffer continues in `into`'s (emptied) memory.
    pub(super) fn poll_transmit(&mut self, into: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        if into.is_empty() {
            std::mem::swap(into, &mut self.out);
        } else {
            into.extend_from_slice(&self.out);
            self.out.clear();
        }
        n
    }

    /// See `S2sConnection::poll_transmit_with`.
    pub(super) fn poll_transmit_with(&mut self, take: impl FnOnce(&[u8])) -> usize {
        let n = self.out.len();
        if n > 0 {
            take(&self.out);
            self.out.clear();
        }
        n
    }

    /// Bytes waiting to be sent.
    pub(super) fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// See `S2sConnection::release_idle_memory`.
    pub(super) fn release_idle_memory(&mut self) {
        self.framer.release_idle_buffer();
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    /// The next event, if any.
    pub(super) fn poll_event(&mut self) -> Option<E> {
        self.events.pop_front()
    }

    /// Queues an event for the runtime.
    pub(super) fn push_event(&mut self, event: E) {
        self.events.push_back(event);
    }

    // ----- deadlines -----

    /// The earliest of the step deadline and the first-header deadline; the machine adds
    /// its own (keepalive, idle, dialback answers, holds).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match (self.deadline, self.header_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Which deadline has passed at `now`, if any, and disarms it. The first-header
    /// deadline is looked at first: when both fall at the same instant, the stream is
    /// closed for its header.
    pub(super) fn expired(&mut self, now: Instant) -> Option<Expired> {
        if self.header_deadline.is_some_and(|d| now >= d) {
            self.header_deadline = None;
            return Some(Expired::Header);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            return Some(Expired::Step);
        }
        None
    }

    /// When the next whitespace keepalive is due (RFC 6120 §4.6.1).
    pub(super) fn keepalive_at(&self, every: Duration) -> Instant {
        self.last_tx + every
    }

    /// Sends a whitespace keepalive (RFC 6120 §4.6.1) if nothing was sent for `every`.
    pub(super) fn keepalive(&mut self, now: Instant, every: Duration) {
        if now >= self.keepalive_at(every) {
            self.out.push(b' ');
            self.last_tx = now;
        }
    }

    // ----- frames -----

    /// Buffers bytes received from the peer: `len` of them, which `fill` appends straight
    /// into the framer's receive buffer ([`Framer::feed_with`]).
    pub(super) fn feed_with(&mut self, len: usize, fill: impl FnOnce(&mut bytes::BytesMut)) {
        self.framer.feed_with(len, fill);
    }

    /// The next frame the peer's bytes hold; a framing error comes with the stream error
    /// condition and text to close with (RFC 6120 §4.9.3).
    pub(super) fn next_frame(&mut self) -> Result<Option<Frame>, (StreamCondition, String)> {
        self.framer
            .next_frame()
            .map_err(|e| (e.condition(), e.to_string()))
    }

    /// Stream restart after TLS or SASL (RFC 6120 §5.4.3.3, §6.4.6): a fresh framer
    /// document, a new header from us to come, and the step deadline for the peer's.
    pub(super) fn restart(&mut self, now: Instant, negotiation: Duration) {
        self.framer.reset();
        self.restarts += 1;
        self.header_sent = false;
        self.deadline = Some(now + negotiation);
    }

    /// The stream id for the current stream: `HMAC-SHA256(key, label ‖ id_nonce ‖
    /// restarts)`, the first 16 bytes in hexadecimal.
    pub(super) fn next_stream_id(&self, key: &[u8; 32], label: &[u8]) -> String {
        let h = keyed_mac(
            key,
            label,
            &[&self.id_nonce.to_be_bytes(), &self.restarts.to_be_bytes()],
        );
        hex::encode(&h[..16])
    }

    // ----- STARTTLS (RFC 6120 §5.4.2) -----

    /// The receiving entity refuses `<starttls/>` it did not offer: `<failure/>` and the
    /// stream is closed (§5.4.2.2). Returns the reason to end the stream with.
    pub(super) fn refuse_starttls(&mut self) -> CloseReason {
        self.out
            .extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.out.extend_from_slice(STREAM_CLOSE);
        CloseReason::SentError(
            StreamCondition::PolicyViolation,
            "STARTTLS not offered".into(),
        )
    }

    /// The receiving entity accepts `<starttls/>`: `<proceed/>` (§5.4.2.3), then the TLS
    /// handshake.
    pub(super) fn proceed_tls(&mut self, now: Instant, negotiation: Duration) {
        self.out
            .extend_from_slice(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.start_tls(now, negotiation);
    }

    /// The TLS handshake starts (§5.4.3.3): the plaintext buffered so far is dropped (the
    /// peer may send nothing more on the plaintext stream), and the handshake is a step.
    pub(super) fn start_tls(&mut self, now: Instant, negotiation: Duration) {
        self.framer.discard_buffered();
        self.deadline = Some(now + negotiation);
    }

    // ----- the close sequence (RFC 6120 §4.4, §4.9) -----

    /// A stream error (fatal, §4.9.1) with an optional application-specific condition
    /// (XML, §4.9.4; empty for none), followed by our `</stream:stream>`.
    pub(super) fn write_error_and_close_with(
        &mut self,
        condition: StreamCondition,
        text: &str,
        app: &[u8],
    ) {
        crate::xml::writer::write_stream_error_with(condition, Some(text), app, &mut self.out);
        self.out.extend_from_slice(STREAM_CLOSE);
    }

    /// Starts our side of the closing handshake (§4.4): the optional stream error, our
    /// `</stream:stream>`, and `close` to wait for the peer's. The machine has written its
    /// header first if it had not.
    pub(super) fn begin_close(
        &mut self,
        error: Option<(StreamCondition, &str)>,
        now: Instant,
        close: Duration,
    ) {
        let reason = match error {
            Some((c, text)) => {
                write_stream_error(c, Some(text), &mut self.out);
                CloseReason::SentError(c, text.to_owned())
            }
            None => CloseReason::Local,
        };
        self.out.extend_from_slice(STREAM_CLOSE);
        self.close_reason = Some(reason);
        self.header_deadline = None;
        self.deadline = Some(now + close);
    }

    /// [`Self::begin_close`] with the `<see-other-host/>` stream error naming `host`
    /// (RFC 6120 §4.9.3.19).
    pub(super) fn begin_redirect(&mut self, host: &str, now: Instant, close: Duration) {
        crate::xml::writer::write_see_other_host(host, &mut self.out);
        self.out.extend_from_slice(STREAM_CLOSE);
        self.close_reason = Some(CloseReason::SentError(
            StreamCondition::SeeOtherHost,
            host.to_owned(),
        ));
        self.header_deadline = None;
        self.deadline = Some(now + close);
    }

    /// Why we started closing, taken (for a stream that ends before the peer's close).
    pub(super) fn take_close_reason(&mut self) -> Option<CloseReason> {
        self.close_reason.take()
    }

    /// The peer's `</stream:stream>`: answered with ours unless we sent it already
    /// (`closing`). Returns the reason the stream ended with.
    pub(super) fn peer_closed(&mut self, closing: bool) -> CloseReason {
        if !closing {
            self.out.extend_from_slice(STREAM_CLOSE);
        }
        self.close_reason.take().unwrap_or(CloseReason::PeerClosed)
    }

    /// The peer's `<stream:error/>` (§4.9): its condition and text; answered with our
    /// `</stream:stream>` unless we sent it already (`closing`). Returns the reason the
    /// stream ended with.
    pub(super) fn peer_error(&mut self, el: &Element, closing: bool) -> CloseReason {
        let node = Node::parse(el).unwrap_or_default();
        let condition = node
            .children
            .iter()
            .filter(|c| c.ns == ns::STREAM_ERRORS && c.name != "text")
            .find_map(|c| StreamCondition::from_name(&c.name))
            .unwrap_or(StreamCondition::UndefinedCondition);
        let text = node
            .child("text", ns::STREAM_ERRORS)
            .map(|t| t.text.clone());
        if !closing {
            self.out.extend_from_slice(STREAM_CLOSE);
        }
        CloseReason::ReceivedError(condition, text)
    }

    /// The stream is over: no deadline is left.
    pub(super) fn end(&mut self) {
        self.deadline = None;
        self.header_deadline = None;
    }
}

/// `HMAC-SHA256(key, label ‖ parts…)`: stream ids, nonces and other values that must be
/// unpredictable without the per-process key, with no hidden randomness in the core.
pub(super) fn keyed_mac(key: &[u8; 32], label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(label);
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A domain from a stream header's `to` or `from` as we compare it: lowercase, without a
/// trailing dot (RFC 7622 §3.2).
pub(super) fn header_domain(raw: &str) -> String {
    let d = raw.to_ascii_lowercase();
    match d.strip_suffix('.') {
        Some(s) => s.to_owned(),
        None => d,
    }
}

/// Whether a stream header's `version` is 1.x (RFC 6120 §4.7.5: a major version we
/// support; the minor version does not matter).
pub(super) fn is_version_1(version: &str) -> bool {
    version.split('.').next() == Some("1")
}

/// The `<starttls/>` stream feature (RFC 6120 §5.4.1), with `<required/>` when TLS must
/// be negotiated before anything else.
pub(super) fn write_starttls_feature(required: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
    if required {
        out.extend_from_slice(b"<required/>");
    }
    out.extend_from_slice(b"</starttls>");
}
