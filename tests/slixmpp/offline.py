#!/usr/bin/env python3
"""Offline messages (XEP-0160) seen by slixmpp (a client library nobody here wrote).

Two phases, one per run, so that the test can wait between them until the server has
stored what was sent (its `offline_stored` counter):

  send    JID logs in (STARTTLS verified against CA_CERT, SASL, bind) WITHOUT sending
          presence, sends TO a `chat`, a `normal` and a `headline` message (bodies
          BODY_CHAT, BODY_NORMAL, BODY_HEADLINE), and disconnects cleanly.
  receive JID logs in, sends initial presence, waits for --expect messages, then pings
          the server (a marker: anything delivered with the stored messages arrived
          before its answer) and disconnects.

Prints ONE JSON line on stdout:

    {"ok": true|false, "error": null|"why", "jid": bound JID,
     "messages": [{"from": bare, "type": t, "body": b, "id": id,
                   "delay_stamp": ISO 8601 UTC or null, "delay_from": JID or null}],
     "elapsed_s": N}

`delay_stamp` is slixmpp's own parse of the XEP-0203 element (`msg['delay']['stamp']`, a
datetime, printed with isoformat()). Exits 0 only when the phase completed; 1 on failure
or timeout (the "error" says which), 2 on bad arguments. Bounded by --timeout.

Usage: offline.py send|receive HOST PORT CA_CERT JID PASSWORD [--to JID] [--expect N]
                  [--timeout S] [--debug]
"""

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time

import slixmpp

BODY_CHAT = "stored chat \u00e9\u65e5 <&>"
BODY_NORMAL = "stored normal"
BODY_HEADLINE = "headline, never stored"


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records the messages it gets."""

    def __init__(self, jid, password, ca_cert, presence):
        super().__init__(jid, password)
        self.register_plugin("xep_0203")  # Delayed Delivery: msg['delay']
        self.register_plugin("xep_0199")  # XMPP Ping: the closing marker
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_cert)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        # The CA file is the server's own self-signed end-entity certificate.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.ssl_context = ctx
        self.ca_certs = None
        self.whitespace_keepalive = False
        self.presence = presence
        self.session = asyncio.get_running_loop().create_future()
        self.messages = []
        self.changed = asyncio.Event()
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", lambda *_: self._fail("SASL authentication failed"))
        self.add_event_handler("ssl_invalid_chain", lambda *_: self._fail("certificate did not verify"))
        self.add_event_handler("connection_failed", lambda e: self._fail(f"connection failed: {e}"))
        self.add_event_handler("disconnected", lambda r: self._fail(f"disconnected: {r}"))
        self.add_event_handler("message", self._on_message)

    def _fail(self, why):
        if not self.session.done():
            self.session.set_exception(RuntimeError(why))

    async def _on_session_start(self, _event):
        if self.presence:
            self.send_presence()
        if not self.session.done():
            self.session.set_result(True)

    def _on_message(self, msg):
        delay = msg["delay"]
        stamp = delay["stamp"]
        self.messages.append(
            {
                "from": msg["from"].bare,
                "type": msg["type"],
                "body": msg["body"],
                "id": msg["id"],
                "delay_stamp": stamp.isoformat() if stamp is not None else None,
                "delay_from": str(delay["from"]) if delay["from"] else None,
            }
        )
        self.changed.set()


async def flow(args, result):
    deadline = time.monotonic() + args.timeout
    c = Client(args.jid, args.password, args.ca_cert, presence=args.phase == "receive")
    try:
        c.connect(args.host, args.port)
        await asyncio.wait_for(asyncio.shield(c.session), max(deadline - time.monotonic(), 0.001))
        result["jid"] = str(c.boundjid)
        if args.phase == "send":
            for mtype, body, mid in (
                ("chat", BODY_CHAT, "off-chat"),
                ("normal", BODY_NORMAL, "off-normal"),
                ("headline", BODY_HEADLINE, "off-headline"),
            ):
                m = c.make_message(mto=args.to, mbody=body, mtype=mtype)
                m["id"] = mid
                m.send()
        else:
            # Bounded: each turn waits for a new message, until the deadline.
            while len(c.messages) < args.expect:
                c.changed.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"got {len(c.messages)} of {args.expect} messages")
                try:
                    await asyncio.wait_for(c.changed.wait(), left)
                except asyncio.TimeoutError:
                    raise RuntimeError(f"got {len(c.messages)} of {args.expect} messages")
            await c.plugin["xep_0199"].ping(jid=c.boundjid.domain, timeout=max(deadline - time.monotonic(), 1))
        result["ok"] = True
    finally:
        result["messages"] = c.messages
        if c.transport is not None:
            try:
                await asyncio.wait_for(c.disconnect(wait=2.0), 5)
            except Exception as e:  # never mask the flow's own result
                result["disconnect_error"] = repr(e)
        c.cancel_connection_attempt()
        if c.session.done() and not c.session.cancelled():
            c.session.exception()
        else:
            c.session.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["send", "receive"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("ca_cert")
    p.add_argument("jid")
    p.add_argument("password")
    p.add_argument("--to", help="send: the offline recipient (bare JID)")
    p.add_argument("--expect", type=int, default=2, help="receive: messages to wait for")
    p.add_argument("--timeout", type=float, default=30.0, help="bound on the whole run, seconds")
    p.add_argument("--debug", action="store_true", help="slixmpp debug log (XML) on stderr")
    args = p.parse_args()
    if args.phase == "send" and not args.to:
        p.error("send needs --to")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)-5s %(name)s %(message)s",
        stream=sys.stderr,
    )
    result = {"ok": False, "error": None, "jid": None, "messages": []}
    started = time.monotonic()

    async def run():
        try:
            await asyncio.wait_for(flow(args, result), args.timeout + 8)
        except asyncio.TimeoutError:
            result["error"] = f"the run did not finish within {args.timeout} s"
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"

    asyncio.run(run())
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
