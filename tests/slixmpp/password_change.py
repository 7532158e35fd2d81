#!/usr/bin/env python3
"""XEP-0077 password change with slixmpp's xep_0077 plugin, against fedrouter.

Alice logs in and changes her password (change_password: an iq set of jabber:iq:register
with her username and the new password). Then a client with the old password must fail
SASL, and one with the new password must log in.

Usage: password_change.py HOST PORT CA_CERT ALICE OLD NEW [--timeout S] [--debug]
Prints services.py's JSON line.
"""

import asyncio
import time

from services import Client, StepFailed, arguments, run, start, stop

PLUGINS = ("xep_0030", "xep_0077")


async def flow(args, result):
    deadline = time.monotonic() + args.timeout
    alice = Client("alice", f"{args.alice}/phone", args.old, args.ca_cert, PLUGINS)
    late = []
    try:
        await start([alice], args.host, args.port, deadline)
        result["steps"].append("login")
        await alice["xep_0077"].change_password(args.new, timeout=10)
        result["steps"].append("changed")

        old = Client("old", f"{args.alice}/old", args.old, args.ca_cert, PLUGINS)
        late.append(old)
        old.connect(args.host, args.port)
        try:
            await asyncio.wait_for(asyncio.shield(old.session), deadline - time.monotonic())
            raise StepFailed("the old password still logs in")
        except StepFailed as e:
            if "SASL authentication failed" not in str(e):
                raise
        result["steps"].append("old_refused")

        new = Client("new", f"{args.alice}/new", args.new, args.ca_cert, PLUGINS)
        late.append(new)
        await start([new], args.host, args.port, deadline)
        result["steps"].append("new_accepted")
        result["ok"] = True
    finally:
        await stop([alice, *late], result)


if __name__ == "__main__":
    run(flow, arguments(__doc__, ("alice", "old", "new")))
