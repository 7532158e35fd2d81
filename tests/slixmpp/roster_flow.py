#!/usr/bin/env python3
"""Drive fedrouter's C2S side with slixmpp (a client library nobody here wrote).

Two clients, A and B (JIDs on the server's domain), go through the RFC 6121 life cycle:

 1. both log in (STARTTLS verified against CA_CERT with hostname checks on the JID's
    domain, SASL, resource binding), fetch their rosters and send initial presence;
 2. A adds B to its roster (roster set, RFC 6121 §2.3) and subscribes (§3.1);
 3. B's slixmpp auto-authorizes (auto_authorize=True: `subscribed`), then B subscribes
    back and A's slixmpp auto-authorizes: both rosters reach subscription `both`;
 4. each client sees the other's available presence (§4.2, §4.3);
 5. A sends B a chat message, B replies (§5);
 6. A removes B from its roster (slixmpp's del_roster_item: `unsubscribe`, then the
    roster remove, §2.5): A's item goes, B's item drops to `none`, and B sees A go
    unavailable.

Every roster result and push is recorded. The script prints ONE JSON line on stdout:

    {"ok": true|false, "error": null|"why", "clients": {"A": jid, "B": jid},
     "steps": [{"step": name, "t": seconds, ...}],
     "rosters": {step: {"A": {contact: [subscription, ask]}, "B": {...}}},
     "roster_log": {"A": [["result"|"push", {contact: [subscription, ask]}, ver], ...],
                    "B": ...},
     "messages": {"A": [[from, body]], "B": ...},
     "received": {"A": [[presence|message, type, from, id]], "B": ...},
     "sent": {"A": [[presence|message, type, to, id]], "B": ...},
     "order_violations": ["B got presence type=... id=... before ..."],
     "elapsed_s": N}

`rosters` holds each client's item for the other after the steps login, a_added_b,
a_subscribed_to_b, mutual_subscription and a_removed_b ({} when there is no item).

and exits 0 only if every step happened as expected (`order_violations`, stanzas one
client sent the other that arrived out of order, are reported, and fatal only with
--strict-order); 1 when a step failed or timed out
(the "error" says which), 2 on bad arguments. The whole run is bounded by --timeout.
--debug sends slixmpp's debug log (the XML sent and received) to stderr.

Usage: roster_flow.py HOST PORT CA_CERT JID_A PASSWORD_A JID_B PASSWORD_B [--timeout S]
                      [--host-b HOST --port-b PORT --ca-cert-b FILE]

With --host-b, B logs in to another server (JID_B on its domain) and the whole life cycle
runs over server-to-server federation (tests/interop/: fedrouter and Prosody).
"""

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time

import slixmpp

MESSAGE_A = "hello bob, from alice \u00e9\u65e5 <&>"
MESSAGE_B = "hello alice, bob here"


class StepFailed(Exception):
    """A step of the flow did not happen as expected."""


class Observed:
    """What one client saw: roster results and pushes, presences, messages.

    `until(pred, what)` waits (bounded by the caller's deadline) until `pred()` holds,
    re-checked whenever something is recorded.
    """

    def __init__(self, name):
        self.name = name
        # contact bare JID -> {"subscription": ..., "ask": ...} as last pushed/fetched
        self.items = {}
        # every roster result and push, in order:
        # [kind, {jid: [subscription, ask]}, ver (None when the server sent none)]
        self.roster_log = []
        self.available = set()  # bare JIDs available now (last presence seen)
        self.unavailable = set()  # bare JIDs seen going unavailable (last presence)
        # every presence and message received, in order: [kind, type, from, id]
        self.received = []
        # every presence and message sent, in order: [kind, type, to, id]
        self.sent = []
        self.subscribe_from = []  # bare JIDs whose subscription requests arrived
        self.messages = []  # [from bare JID, body]
        self.errors = []  # error stanzas received, as text
        self._waiters = []

    def notify(self):
        for pred, fut in list(self._waiters):
            if not fut.done() and pred():
                fut.set_result(True)

    def sub(self, jid):
        item = self.items.get(jid)
        return None if item is None else item["subscription"]

    def ask(self, jid):
        item = self.items.get(jid)
        return None if item is None else item["ask"]

    async def until(self, pred, what, deadline):
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait_for(fut, left)
        except asyncio.TimeoutError:
            raise StepFailed(f"{self.name}: timed out waiting for {what}; saw {self.summary()}")
        finally:
            self._waiters.remove(entry)

    def summary(self):
        return {
            "items": self.items,
            "roster_log": self.roster_log,
            "received": self.received,
            "subscribe_from": self.subscribe_from,
            "messages": self.messages,
            "errors": self.errors,
        }


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what it sees into an `Observed`."""

    def __init__(self, name, jid, password, ca_cert):
        super().__init__(jid, password)
        self.seen = Observed(name)
        self.session = asyncio.get_running_loop().create_future()
        # STARTTLS only (the C2S port is not direct TLS), never plaintext, and the
        # server's certificate must verify against CA_CERT for the JID's domain
        # (slixmpp passes server_hostname=<domain> to the TLS handshake).
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_cert)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        # The CA file is the server's own self-signed end-entity certificate (CA:FALSE,
        # no keyCertSign): let a certificate in the CA file be a trust anchor by itself.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.ssl_context = ctx
        self.ca_certs = None  # keep our context as is
        # Accept subscription requests (slixmpp's built-in handling), but do not
        # subscribe back on our own: the flow does that explicitly.
        self.auto_authorize = True
        self.auto_subscribe = False
        self.whitespace_keepalive = False

        self.add_filter("out", self._record_out)
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", self._on_fail("SASL authentication failed"))
        self.add_event_handler("ssl_invalid_chain", self._on_fail("certificate did not verify"))
        self.add_event_handler("connection_failed", self._on_connection_failed)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("roster_update", self._on_roster)
        self.add_event_handler("presence", self._on_any("presence"))
        self.add_event_handler("message", self._on_any("message"))
        self.add_event_handler("presence_available", self._on_available)
        self.add_event_handler("presence_unavailable", self._on_unavailable)
        self.add_event_handler("presence_subscribe", self._on_subscribe)
        self.add_event_handler("presence_error", self._on_error)
        self.add_event_handler("message", self._on_message)
        self.add_event_handler("message_error", self._on_error)

    # -- session -----------------------------------------------------------------------

    def _fail_session(self, why):
        if not self.session.done():
            self.session.set_exception(StepFailed(f"{self.seen.name}: {why}"))

    def _on_fail(self, why):
        def handler(*_args):
            self._fail_session(why)

        return handler

    def _on_connection_failed(self, err):
        self._fail_session(f"connection failed: {err}")

    def _on_stream_error(self, err):
        self.seen.errors.append(f"stream error: {err}")
        self._fail_session(f"stream error: {err}")

    def _on_disconnected(self, reason):
        self._fail_session(f"disconnected before the session started: {reason}")

    async def _on_session_start(self, _event):
        try:
            await self.get_roster(timeout=15)
            self.send_presence()
        except Exception as e:  # an IqError or IqTimeout: report it as the failure
            self._fail_session(f"roster get failed: {e!r}")
            return
        if not self.session.done():
            self.session.set_result(True)

    # -- observations --------------------------------------------------------------------

    def _record_out(self, stanza):
        kind = getattr(stanza, "name", None)
        if kind in ("presence", "message"):
            self.seen.sent.append([kind, stanza["type"], str(stanza["to"]), stanza["id"]])
        return stanza

    def _on_any(self, kind):
        def handler(stanza):
            self.seen.received.append([kind, stanza["type"], str(stanza["from"]), stanza["id"]])

        return handler

    def _on_roster(self, iq):
        kind = "push" if iq["type"] == "set" else "result"
        items = {}
        for jid, item in iq["roster"]["items"].items():
            bare = slixmpp.JID(jid).bare
            entry = {"subscription": item["subscription"], "ask": item["ask"] or None}
            items[bare] = [entry["subscription"], entry["ask"]]
            if item["subscription"] == "remove":
                self.seen.items.pop(bare, None)
            else:
                self.seen.items[bare] = entry
        if kind == "result":
            # A full roster replaces what we knew.
            self.seen.items = {j: {"subscription": s, "ask": a} for j, (s, a) in items.items()}
        self.seen.roster_log.append([kind, items, iq["roster"]["ver"] or None])
        self.seen.notify()

    def _on_available(self, pres):
        bare = pres["from"].bare
        if bare != self.boundjid.bare:
            self.seen.available.add(bare)
            self.seen.unavailable.discard(bare)
            self.seen.notify()

    def _on_unavailable(self, pres):
        bare = pres["from"].bare
        if bare != self.boundjid.bare:
            self.seen.unavailable.add(bare)
            self.seen.available.discard(bare)
            self.seen.notify()

    def _on_subscribe(self, pres):
        self.seen.subscribe_from.append(pres["from"].bare)
        self.seen.notify()

    def _on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.seen.messages.append([msg["from"].bare, msg["body"]])
            self.seen.notify()

    def _on_error(self, stanza):
        self.seen.errors.append(str(stanza))
        self.seen.notify()


def order_violations(sender, receiver, sender_jid, receiver_jid):
    """Stanzas `sender` sent to `receiver` that arrived out of order (RFC 6120 §10.1:
    the server delivers a client's stanzas for one recipient in the order it received
    them). Compared by id, first arrival of each id; server-generated stanzas without
    an id are not checked."""
    sent = [s for s in sender.sent if s[3] and slixmpp.JID(s[2]).bare == receiver_jid]
    pos = {}
    for i, s in enumerate(sent):
        pos.setdefault(s[3], (i, s))
    arrived = []
    for r in receiver.received:
        if slixmpp.JID(r[2]).bare == sender_jid and r[3] in pos and r[3] not in arrived:
            arrived.append(r[3])
    out = []
    for earlier, later in zip(arrived, arrived[1:]):
        (i, s1), (j, s2) = pos[earlier], pos[later]
        if j < i:
            out.append(
                f"{receiver.name} got {s1[0]} type={s1[1]} id={s1[3]} before {s2[0]} type={s2[1]} "
                f"id={s2[3]}, which {sender.name} had sent first"
            )
    return out


async def flow(args, result):
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.timeout
    a = Client("A", args.jid_a, args.password_a, args.ca_cert)
    b = Client("B", args.jid_b, args.password_b, args.ca_cert_b or args.ca_cert)
    ja, jb = a.boundjid.bare, b.boundjid.bare
    result["clients"] = {"A": ja, "B": jb}

    def step(name, **details):
        result["steps"].append(dict(step=name, t=round(time.monotonic() - start, 3), **details))

    def snapshot(label):
        result["rosters"][label] = {
            "A": {jb: [a.seen.sub(jb), a.seen.ask(jb)]} if jb in a.seen.items else {},
            "B": {ja: [b.seen.sub(ja), b.seen.ask(ja)]} if ja in b.seen.items else {},
        }

    start = time.monotonic()
    try:
        a.connect(args.host, args.port)
        b.connect(args.host_b or args.host, args.port_b or args.port)
        for c in (a, b):
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(c.session), max(left, 0.001))
            except asyncio.TimeoutError:
                raise StepFailed(f"{c.seen.name}: no session within the timeout")
        step("logged_in", A=str(a.boundjid), B=str(b.boundjid))
        snapshot("login")
        if a.seen.items or b.seen.items:
            raise StepFailed(f"rosters not empty at login: A {a.seen.items}, B {b.seen.items}")

        # 2. A adds B (roster set) and subscribes.
        await a.update_roster(jb, name="Bob", groups=["Friends"], timeout=15)
        await a.seen.until(lambda: a.seen.sub(jb) == "none", "the roster push adding B", deadline)
        step("a_added_b")
        snapshot("a_added_b")

        a.client_roster[jb].subscribe()
        await b.seen.until(lambda: ja in b.seen.subscribe_from, "A's subscription request", deadline)
        # B's slixmpp answers `subscribed` on its own (auto_authorize).
        await a.seen.until(lambda: a.seen.sub(jb) == "to", "subscription 'to' on A's item for B", deadline)
        await b.seen.until(lambda: b.seen.sub(ja) == "from", "subscription 'from' on B's item for A", deadline)
        step("a_subscribed_to_b")
        snapshot("a_subscribed_to_b")

        # 3. B subscribes back; A's slixmpp auto-authorizes.
        b.client_roster[ja].subscribe()
        await a.seen.until(lambda: jb in a.seen.subscribe_from, "B's subscription request", deadline)
        await a.seen.until(lambda: a.seen.sub(jb) == "both", "subscription 'both' on A's item for B", deadline)
        await b.seen.until(lambda: b.seen.sub(ja) == "both", "subscription 'both' on B's item for A", deadline)
        step("mutual_subscription")
        snapshot("mutual_subscription")

        # 4. Presence both ways.
        await a.seen.until(lambda: jb in a.seen.available, "B's available presence at A", deadline)
        await b.seen.until(lambda: ja in b.seen.available, "A's available presence at B", deadline)
        step("presence_both_ways")

        # 5. A message and its reply.
        a.send_message(mto=b.boundjid, mbody=MESSAGE_A, mtype="chat")
        await b.seen.until(lambda: [ja, MESSAGE_A] in b.seen.messages, "A's message at B", deadline)
        b.send_message(mto=a.boundjid, mbody=MESSAGE_B, mtype="chat")
        await a.seen.until(lambda: [jb, MESSAGE_B] in a.seen.messages, "B's reply at A", deadline)
        step("messages_exchanged")

        # 6. A removes B.
        await a.del_roster_item(jb)
        await a.seen.until(lambda: jb not in a.seen.items, "the roster push removing B at A", deadline)
        await b.seen.until(lambda: b.seen.sub(ja) == "none", "subscription 'none' on B's item for A", deadline)
        await b.seen.until(lambda: ja in b.seen.unavailable, "A's unavailable presence at B", deadline)
        step("a_removed_b")
        snapshot("a_removed_b")

        if a.seen.errors or b.seen.errors:
            raise StepFailed(f"error stanzas received: A {a.seen.errors}, B {b.seen.errors}")
        result["ok"] = True
    finally:
        result["messages"] = {"A": a.seen.messages, "B": b.seen.messages}
        result["received"] = {"A": a.seen.received, "B": b.seen.received}
        result["sent"] = {"A": a.seen.sent, "B": b.seen.sent}
        result["order_violations"] = order_violations(a.seen, b.seen, ja, jb) + order_violations(
            b.seen, a.seen, jb, ja
        )
        result["roster_log"] = {"A": a.seen.roster_log, "B": b.seen.roster_log}
        # Clean disconnect (</stream:stream>), bounded separately from the flow.
        for c in (a, b):
            if c.transport is not None:
                try:
                    await asyncio.wait_for(c.disconnect(wait=2.0), 5)
                except Exception as e:  # never mask the flow's own result
                    result.setdefault("disconnect_errors", []).append(f"{c.seen.name}: {e!r}")
        for c in (a, b):
            c.cancel_connection_attempt()
            # The other client's failure, if any, is not the first one: consume it.
            if c.session.done() and not c.session.cancelled():
                c.session.exception()
            else:
                c.session.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("ca_cert")
    p.add_argument("jid_a")
    p.add_argument("password_a")
    p.add_argument("jid_b")
    p.add_argument("password_b")
    p.add_argument("--timeout", type=float, default=30.0, help="bound on the whole run, seconds")
    p.add_argument("--host-b", help="B's server when it is another one (federation)")
    p.add_argument("--port-b", type=int, help="B's server's C2S port")
    p.add_argument("--ca-cert-b", help="the CA file B trusts, when not CA_CERT")
    p.add_argument(
        "--strict-order", action="store_true", help="fail when order_violations is not empty"
    )
    p.add_argument("--debug", action="store_true", help="slixmpp debug log (XML) on stderr")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)-5s %(name)s %(message)s",
        stream=sys.stderr,
    )

    result = {"ok": False, "error": None, "steps": [], "rosters": {}}
    started = time.monotonic()

    async def run():
        try:
            # The flow bounds each wait by the deadline; this is the outer bound, with a
            # little room for the clean disconnect.
            await asyncio.wait_for(flow(args, result), args.timeout + 12)
        except StepFailed as e:
            result["error"] = str(e)
        except asyncio.TimeoutError:
            result["error"] = f"the run did not finish within {args.timeout} s"
        except Exception as e:  # IqError, IqTimeout, ...: report, do not trace back
            result["error"] = f"{type(e).__name__}: {e}"

    asyncio.run(run())
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    if result["ok"] and args.strict_order and result.get("order_violations"):
        result["ok"] = False
        result["error"] = "stanzas arrived out of order (RFC 6120 §10.1): " + "; ".join(
            result["order_violations"]
        )
    if not result["ok"] and result["error"] is None:
        result["error"] = "the flow stopped without a result"
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
