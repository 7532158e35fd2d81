#!/usr/bin/env python3
"""XEP-0191 blocking with slixmpp's xep_0191 plugin, against fedrouter.

Alice ("phone" and "laptop"), bob and carol log in. The laptop fetches the block list
(so it gets pushes). The phone blocks bob: the laptop gets the push. Bob writes to alice
and gets an error; carol then writes a marker, which arrives while bob's message does
not. Alice writes to bob and gets not-acceptable. The phone unblocks bob (push to the
laptop) and bob's next message arrives.

Usage: blocking.py HOST PORT CA_CERT ALICE BOB CAROL PASSWORD [--timeout S] [--debug]
Prints services.py's JSON line with "blocklist" (what the laptop fetched after the block)
and "errors" (conditions: bob's message to alice, alice's message to bob).
"""

import time

from services import Client, StepFailed, arguments, run, start, stop

PLUGINS = ("xep_0030", "xep_0191")


def bodies(log):
    return [str(s["body"]) for e, s in log if e == "message" and s["type"] != "error"]


def errors(log):
    return [[str(s["id"]), s["error"]["condition"]] for e, s in log if e == "message_error"]


async def flow(args, result):
    deadline = time.monotonic() + args.timeout
    phone = Client("phone", f"{args.alice}/phone", args.password, args.ca_cert, PLUGINS)
    laptop = Client("laptop", f"{args.alice}/laptop", args.password, args.ca_cert, PLUGINS)
    bob = Client("bob", f"{args.bob}/desk", args.password, args.ca_cert, PLUGINS)
    carol = Client("carol", f"{args.carol}/desk", args.password, args.ca_cert, PLUGINS)
    clients = (phone, laptop, bob, carol)
    try:
        await start(clients, args.host, args.port, deadline)
        result["steps"].append("login")
        before = await laptop["xep_0191"].get_blocked_jids(timeout=10)
        if before:
            raise StepFailed(f"the block list is not empty at first: {before}")

        await phone["xep_0191"].block(args.bob, timeout=10)
        await laptop.until(lambda log: any(e == "blocked" for e, _ in log), "block push",
                           deadline)
        result["blocklist"] = sorted(str(j) for j in
                                     await laptop["xep_0191"].get_blocked_jids(timeout=10))
        result["steps"].append("blocked")

        m = bob.make_message(mto=args.alice, mbody="can you hear me", mtype="chat")
        m["id"] = "blocked-1"
        m.send()
        await bob.until(lambda log: errors(log), "an error for the blocked message", deadline)
        carol.send_message(mto=args.alice, mbody="marker", mtype="chat")
        await phone.until(lambda log: "marker" in bodies(log), "carol's marker", deadline)
        if "can you hear me" in bodies(phone.log) + bodies(laptop.log):
            raise StepFailed("bob's message reached alice while he was blocked")
        result["steps"].append("inbound_blocked")

        m = phone.make_message(mto=f"{args.bob}/desk", mbody="hi bob", mtype="chat")
        m["id"] = "to-blocked-1"
        m.send()
        await phone.until(lambda log: errors(log), "an error for the message to bob",
                          deadline)
        result["errors"] = {"bob": errors(bob.log), "alice": errors(phone.log)}
        result["steps"].append("outbound_refused")

        await phone["xep_0191"].unblock(args.bob, timeout=10)
        await laptop.until(lambda log: any(e == "unblocked" for e, _ in log),
                           "unblock push", deadline)
        bob.send_message(mto=args.alice, mbody="back again", mtype="chat")
        await phone.until(lambda log: "back again" in bodies(log), "bob's message after unblock",
                          deadline)
        result["steps"].append("unblocked")
        result["ok"] = True
    finally:
        await stop(clients, result)


if __name__ == "__main__":
    run(flow, arguments(__doc__, ("alice", "bob", "carol", "password")))
