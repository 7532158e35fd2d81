#!/usr/bin/env python3
"""XEP-0280 message carbons with slixmpp's xep_0280 plugin, against fedrouter.

Alice logs in twice (resources "phone" and "laptop"), both enable carbons; bob logs in.
Bob writes to alice's phone: the laptop gets a <received/> carbon. The phone writes to
bob: the laptop gets a <sent/> carbon. Bob writes a <private/> message, then a marker, to
the phone: the laptop gets the marker's carbon and none of the private one.

Usage: carbons.py HOST PORT CA_CERT ALICE BOB PASSWORD [--timeout S] [--debug]
Prints services.py's JSON line with "carbons": {"received": [...], "sent": [...]} (bodies
of the forwarded messages as the laptop saw them).
"""

import time

from services import Client, StepFailed, arguments, run, start, stop

PLUGINS = ("xep_0030", "xep_0280")


def carbon_bodies(log, event):
    key = "carbon_received" if event == "carbon_received" else "carbon_sent"
    return [str(s[key]["body"]) for e, s in log if e == event]


async def flow(args, result):
    deadline = time.monotonic() + args.timeout
    phone = Client("phone", f"{args.alice}/phone", args.password, args.ca_cert, PLUGINS)
    laptop = Client("laptop", f"{args.alice}/laptop", args.password, args.ca_cert, PLUGINS)
    bob = Client("bob", f"{args.bob}/desk", args.password, args.ca_cert, PLUGINS)
    clients = (phone, laptop, bob)
    try:
        await start(clients, args.host, args.port, deadline)
        result["steps"].append("login")
        for c in (phone, laptop):
            await c["xep_0280"].enable(timeout=10)
        result["steps"].append("enabled")

        bob.send_message(mto=f"{args.alice}/phone", mbody="to the phone", mtype="chat")
        await laptop.until(lambda log: "to the phone" in carbon_bodies(log, "carbon_received"),
                           "<received/> carbon", deadline)
        result["steps"].append("received_carbon")

        phone.send_message(mto=f"{args.bob}/desk", mbody="from the phone", mtype="chat")
        await laptop.until(lambda log: "from the phone" in carbon_bodies(log, "carbon_sent"),
                           "<sent/> carbon", deadline)
        result["steps"].append("sent_carbon")

        private = bob.make_message(mto=f"{args.alice}/phone", mbody="private one",
                                   mtype="chat")
        private.enable("carbon_private")
        private.send()
        bob.send_message(mto=f"{args.alice}/phone", mbody="marker", mtype="chat")
        await laptop.until(lambda log: "marker" in carbon_bodies(log, "carbon_received"),
                           "the marker's carbon", deadline)
        got = carbon_bodies(laptop.log, "carbon_received")
        if "private one" in got:
            raise StepFailed(f"laptop: the <private/> message was copied: {got}")
        await phone.until(lambda log: any(e == "message" and str(s["body"]) == "private one"
                                          for e, s in log), "the private message", deadline)
        result["steps"].append("private_not_copied")
        result["carbons"] = {
            "received": got,
            "sent": carbon_bodies(laptop.log, "carbon_sent"),
        }
        result["ok"] = True
    finally:
        await stop(clients, result)


if __name__ == "__main__":
    run(flow, arguments(__doc__, ("alice", "bob", "password")))
