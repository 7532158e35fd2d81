"""Shared parts of the slixmpp scripts for the small services (carbons.py,
password_change.py, blocking.py): a client that logs in the way roster_flow.py does
(STARTTLS verified against CA_CERT, SASL, bind, roster, initial presence), the common
command line, bounded waits, and the one JSON line each script prints:

    {"ok": true|false, "error": null|"why", "steps": [name, ...], ...script's own keys}

Exit status: 0 when every step happened, 1 when one failed or timed out (the "error"
says which), 2 on bad arguments.
"""

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time

import slixmpp


class StepFailed(Exception):
    """A step of the flow did not happen as expected."""


class Client(slixmpp.ClientXMPP):
    """A slixmpp client with the plugins for the services, recording what it receives."""

    def __init__(self, name, jid, password, ca_cert, plugins=()):
        super().__init__(jid, password)
        self.name = name
        self.session = asyncio.get_running_loop().create_future()
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
        for p in plugins:
            self.register_plugin(p)
        # Everything received, in order: [event, stanza as a string].
        self.log = []
        self._waiters = []
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", self._fail("SASL authentication failed"))
        self.add_event_handler("ssl_invalid_chain", self._fail("certificate did not verify"))
        self.add_event_handler("connection_failed", self._fail("connection failed"))
        self.add_event_handler("stream_error", self._fail("stream error"))
        self.add_event_handler("disconnected", self._fail("disconnected"))
        for event in ("message", "carbon_received", "carbon_sent", "blocked", "unblocked",
                      "message_error"):
            self.add_event_handler(event, self._recorder(event))

    def _fail(self, why):
        def handler(*_args):
            if not self.session.done():
                self.session.set_exception(StepFailed(f"{self.name}: {why}"))

        return handler

    def _recorder(self, event):
        def handler(stanza):
            self.log.append([event, stanza])
            for w in list(self._waiters):
                w()

        return handler

    async def _on_session_start(self, _event):
        try:
            await self.get_roster(timeout=15)
            self.send_presence()
        except Exception as e:
            self._fail(f"roster get failed: {e!r}")()
            return
        if not self.session.done():
            self.session.set_result(True)

    async def until(self, pred, what, deadline):
        """Waits until `pred(log)` is true, bounded by `deadline` (monotonic)."""
        fut = asyncio.get_running_loop().create_future()

        def check():
            if not fut.done() and pred(self.log):
                fut.set_result(True)

        self._waiters.append(check)
        try:
            check()
            left = deadline - time.monotonic()
            if left <= 0 and not fut.done():
                raise asyncio.TimeoutError
            await asyncio.wait_for(fut, max(left, 0.001))
        except asyncio.TimeoutError:
            raise StepFailed(f"{self.name}: no {what} in time; got {self.summary()}")
        finally:
            self._waiters.remove(check)

    def summary(self):
        return [[e, str(s)] for e, s in self.log]


async def start(clients, host, port, deadline):
    """Connects every client and waits for each session to start."""
    for c in clients:
        c.connect(host, port)
    for c in clients:
        left = deadline - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(c.session), max(left, 0.001))
        except asyncio.TimeoutError:
            raise StepFailed(f"{c.name}: no session within the deadline")


async def stop(clients, result):
    """Disconnects cleanly (bounded), never masking the flow's own result."""
    for c in clients:
        if c.transport is not None:
            try:
                await asyncio.wait_for(c.disconnect(wait=2.0), 5)
            except Exception as e:
                result.setdefault("disconnect_errors", []).append(f"{c.name}: {e!r}")
    for c in clients:
        c.cancel_connection_attempt()
        if c.session.done() and not c.session.cancelled():
            c.session.exception()
        else:
            c.session.cancel()


def arguments(doc, extra=()):
    """HOST PORT CA_CERT, then `extra` positional names, --timeout, --debug."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name in ("host", "port", "ca_cert", *extra):
        p.add_argument(name, type=int if name == "port" else str)
    p.add_argument("--timeout", type=float, default=30.0, help="bound on the whole run, s")
    p.add_argument("--debug", action="store_true", help="slixmpp debug log (XML) on stderr")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)-5s %(name)s %(message)s",
        stream=sys.stderr,
    )
    return args


def run(flow, args):
    """Runs `flow(args, result)` bounded by --timeout, prints the JSON line, exits."""
    result = {"ok": False, "error": None, "steps": []}
    started = time.monotonic()

    async def main():
        try:
            await asyncio.wait_for(flow(args, result), args.timeout + 12)
        except StepFailed as e:
            result["error"] = str(e)
        except asyncio.TimeoutError:
            result["error"] = f"the run did not finish within {args.timeout} s"
        except Exception as e:  # IqError, IqTimeout, ...: report, do not trace back
            result["error"] = f"{type(e).__name__}: {e}"

    asyncio.run(main())
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    if not result["ok"] and result["error"] is None:
        result["error"] = "the flow stopped without a result"
    print(json.dumps(result, sort_keys=True, default=str), flush=True)
    sys.exit(0 if result["ok"] else 1)
