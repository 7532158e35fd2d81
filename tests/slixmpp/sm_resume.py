#!/usr/bin/env python3
"""XEP-0198 stream resumption with slixmpp's xep_0198 plugin, against fedrouter.

Alice and bob log in; bob enables stream management with resumption (xep_0198,
allow_resume). Bob's TCP connection is then aborted (no </stream:stream>, no TLS
close_notify). Once the server has counted the detached session (ADMIN's /metrics,
fedrouter_c2s_sessions_detached_total >= 1), alice sends bob's full JID three chat
messages and pings the server (her stream is processed in order). Bob connects again:
slixmpp sends <resume previd=.../> by itself because it knows the SM id, and must get
<resumed/> (the session_resumed event, no new session_start). The three messages must
arrive, in order, exactly once: alice then sends a marker, and once bob has it, his log
is checked.

Usage: sm_resume.py HOST PORT CA_CERT ADMIN ALICE BOB PASSWORD [--timeout S] [--debug]
(ADMIN is HOST:PORT of the admin listener.) Prints services.py's JSON line with
"received" (the ids of the chat messages bob got, in order, marker included) and
"sm_id" (the resumption id the server gave).
"""

import asyncio
import time
import urllib.request

from services import Client, StepFailed, arguments, run, start, stop

PLUGINS = ("xep_0030", "xep_0198", "xep_0199")
IDS = ("sm-1", "sm-2", "sm-3")
MARKER = "sm-marker"


def received_ids(log):
    return [str(s["id"]) for e, s in log if e == "message" and s["type"] == "chat"]


def metric(admin, name):
    """The sum of `name`'s series on ADMIN's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        body = r.read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] == name:
            total += float(value)
    return total


async def wait_metric(admin, name, at_least, deadline):
    """Polls /metrics (every 50 ms, bounded by `deadline`) until `name` >= `at_least`."""
    while True:
        got = await asyncio.to_thread(metric, admin, name)
        if got >= at_least:
            return
        if time.monotonic() > deadline:
            raise StepFailed(f"{name} stayed at {got}, expected >= {at_least}")
        await asyncio.sleep(0.05)


async def wait_event(client, event, deadline, fail_events=()):
    """Waits for slixmpp event `event` on `client`, failing on any of `fail_events`."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def ok(*_a):
        if not fut.done():
            fut.set_result(event)

    def bad(name):
        def h(*_a):
            if not fut.done():
                fut.set_exception(StepFailed(f"{client.name}: {name} instead of {event}"))
        return h

    handlers = [(event, ok)] + [(e, bad(e)) for e in fail_events]
    for e, h in handlers:
        client.add_event_handler(e, h, disposable=True)
    try:
        await asyncio.wait_for(fut, max(deadline - time.monotonic(), 0.001))
    except asyncio.TimeoutError:
        raise StepFailed(f"{client.name}: no {event} in time")
    finally:
        for e, h in handlers:
            client.del_event_handler(e, h)


async def flow(args, result):
    deadline = time.monotonic() + args.timeout
    alice = Client("alice", f"{args.alice}/desk", args.password, args.ca_cert,
                   ("xep_0030", "xep_0199"))
    bob = Client("bob", f"{args.bob}/phone", args.password, args.ca_cert, PLUGINS)
    bob_full = f"{args.bob}/phone"
    clients = (alice, bob)
    try:
        enabled = asyncio.ensure_future(wait_event(bob, "sm_enabled", deadline))
        await start(clients, args.host, args.port, deadline)
        await enabled
        sm_id = bob.plugin["xep_0198"].sm_id
        if not sm_id:
            raise StepFailed("bob: <enabled/> without a resumption id")
        result["sm_id"] = sm_id
        result["steps"].append("sm_enabled")

        # Abrupt drop: the TCP connection goes away with no closing tag.
        gone = asyncio.ensure_future(wait_event(bob, "disconnected", deadline))
        bob.transport.abort()
        await gone
        await wait_metric(args.admin, "fedrouter_c2s_sessions_detached_total", 1, deadline)
        result["steps"].append("dropped")

        for i, mid in enumerate(IDS):
            m = alice.make_message(mto=bob_full, mbody=f"while away {i + 1}", mtype="chat")
            m["id"] = mid
            m.send()
        # Alice's stream is handled in order: the pong comes after the three were routed.
        await alice.plugin["xep_0199"].ping(jid=args.alice.split("@")[1], timeout=10)
        if received_ids(bob.log):
            raise StepFailed(f"bob got messages while dropped: {received_ids(bob.log)}")
        result["steps"].append("sent_while_away")

        resumed = asyncio.ensure_future(
            wait_event(bob, "session_resumed", deadline,
                       fail_events=("sm_failed", "session_start")))
        bob.connect(args.host, args.port)
        await resumed
        result["steps"].append("resumed")

        await bob.until(lambda log: len(received_ids(log)) >= len(IDS),
                        "the three messages", deadline)
        m = alice.make_message(mto=bob_full, mbody="marker", mtype="chat")
        m["id"] = MARKER
        m.send()
        await bob.until(lambda log: MARKER in received_ids(log), "the marker", deadline)
        got = received_ids(bob.log)
        result["received"] = got
        if got != [*IDS, MARKER]:
            raise StepFailed(f"bob: expected {[*IDS, MARKER]} exactly once in order, got {got}")
        result["steps"].append("received_in_order_once")
        result["ok"] = True
    finally:
        await stop(clients, result)


if __name__ == "__main__":
    run(flow, arguments(__doc__, ("admin", "alice", "bob", "password")))
