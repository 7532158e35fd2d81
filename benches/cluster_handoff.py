#!/usr/bin/env python3
"""Cross-node hand-off latency of a fedrouter cluster, without loadgen.

Two local users of a running cluster (default alice and bob @cupdomain.test, password
"secret", created with `fedrouter user add`) log in through one node with slixmpp; each
follows see-other-host to its owner node. alice sends N chat messages to bob at about RATE
per second; every message crosses nodes when their owners differ. Prints what bob got;
then read each node's `fedrouter_cluster_handoff_latency_quantile_seconds` (or
`/metrics/hgrm?name=cluster_handoff_latency`) on its admin endpoint.

Usage: target/slixmpp-venv/bin/python benches/cluster_handoff.py HOST:PORT [N] [RATE]
"""
import asyncio
import ssl
import sys
import time

import slixmpp

ADDR = sys.argv[1] if len(sys.argv) > 1 else "127.0.199.11:5222"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 6000
RATE = float(sys.argv[3]) if len(sys.argv) > 3 else 2000.0
got = {"n": 0}


class C(slixmpp.ClientXMPP):
    def __init__(self, jid):
        super().__init__(jid, "secret")
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.msg)
        self.add_event_handler("stream_error", self.err)
        self.enable_starttls = True
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE

    def err(self, e):
        # slixmpp ignores see-other-host when connect() was given an address: follow it.
        if e["condition"] == "see-other-host":
            h, p = e["see_other_host"].rsplit(":", 1)
            self.custom_address = (h, int(p))

    async def start(self, _ev):
        self.send_presence()
        self.ready.set()

    def msg(self, _m):
        got["n"] += 1


async def main():
    host, port = ADDR.rsplit(":", 1)
    a, b = C("alice@cupdomain.test"), C("bob@cupdomain.test")
    for c in (a, b):
        c.connect(host=host, port=int(port))
    await asyncio.wait_for(asyncio.gather(a.ready.wait(), b.ready.wait()), 20)
    t0 = time.time()
    for i in range(N):
        a.send_message(mto="bob@cupdomain.test", mbody=f"m{i}", mtype="chat")
        # Paced in steps of 2 messages (asyncio's sleep granularity).
        if i % 2:
            await asyncio.sleep(2.0 / RATE)
    for _ in range(300):  # at most 30 s for the tail
        if got["n"] >= N:
            break
        await asyncio.sleep(0.1)
    took = time.time() - t0
    print(f"sent {N} got {got['n']} in {took:.1f} s ({N / took:.0f}/s)")
    a.disconnect()
    b.disconnect()


asyncio.run(main())
