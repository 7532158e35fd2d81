#!/usr/bin/env python3
"""The comparison table of benches/compare.sh: one table per rate.

Usage: compare_table.py OUT SERVERS P99_LIMIT_MS VERSIONS

Reads OUT/rate-R/NAME/{summary.json,loadgen.rc,loadgen.stdout,sut-proc.json,loadavg-*}
for every rate folder and every server of SERVERS (comma-separated), and prints, per
rate, one row per server: operations/s measured, p50/p99 per step (ms), stanzas lost,
the server's CPU over the measured window per 1,000 stanzas loadgen received in it, and
that CPU's ratio to fedrouter's; then whether every p99 was below P99_LIMIT_MS with no
loss. Writes OUT/comparison.json with the same numbers.

Exit status: 0 when every run finished with exit status 0 and lost nothing, 1 otherwise.
"""

import json
import os
import re
import sys

STEPS = ("message", "presence", "subscribe", "subscription_complete", "stream_setup")
SHORT = {"message": "msg", "presence": "pres", "subscribe": "sub",
         "subscription_complete": "sub done", "stream_setup": "stream"}


def read(path, parse=lambda f: f.read()):
    try:
        with open(path) as f:
            return parse(f)
    except (OSError, ValueError):
        return None


def load(d):
    r = {"dir": d}
    r["rc"] = read(os.path.join(d, "loadgen.rc"), lambda f: int(f.read().strip()))
    r["summary"] = read(os.path.join(d, "summary.json"), json.load)
    r["proc"] = read(os.path.join(d, "sut-proc.json"), json.load) or {}
    la = read(os.path.join(d, "loadavg-start")) or ""
    m = re.search(r"load average: ([\d.]+)", la)
    r["load_start"] = float(m[1]) if m else None
    return r


def fmt(v, nd=None):
    if v is None:
        return "—"
    if isinstance(v, float):
        if nd is not None:
            return f"{v:,.{nd}f}"
        if v >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    return f"{v:,}"


def row(cols):
    print("| " + " | ".join(cols) + " |")


def main():
    out, servers, limit, versions = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), sys.argv[4]
    rates = sorted(int(n[5:]) for n in os.listdir(out)
                   if n.startswith("rate-") and n[5:].isdigit())
    everything = {}
    bad = []
    first = True
    for rate in rates:
        runs = {s: load(os.path.join(out, f"rate-{rate}", s)) for s in servers
                if os.path.isdir(os.path.join(out, f"rate-{rate}", s))}
        if not runs:
            continue
        any_s = next((r["summary"] for r in runs.values() if r["summary"]), None)
        if first and any_s:
            p = any_s["params"]
            print(f"\n== scenario {p.get('scenario')}, {p.get('peers')} peers x "
                  f"{p.get('users_per_peer')} users, {p.get('local_users')} local users, "
                  f"{p.get('duration_s')} s measured; {versions}")
            first = False
        print(f"\n=== {rate} operations/s (open loop); latencies p50 / p99 in ms; "
              f"CPU = utime + stime of the server process over the measured window, per "
              f"1,000 stanzas loadgen received in it\n")
        present = [st for st in STEPS
                   if any(((r["summary"] or {}).get("steps") or {}).get(st, {}).get("count", 0)
                          for r in runs.values())]
        row(["server", "ops/s", *[f"{SHORT[st]} p50 / p99" for st in present], "lost",
             "CPU s", "CPU ms / 1k stanzas", "CPU ratio to fedrouter",
             f"every p99 < {limit:.0f} ms, no loss", "load avg"])
        row(["---"] + ["---:"] * (len(present) + 5) + ["---", "---:"])
        base = None
        fr = runs.get("fedrouter")
        if fr and fr["summary"]:
            c = fr["summary"]["params"].get("sut_cpu") or []
            base = c[0].get("cpu_ms_per_1000_stanzas") if c else None
        everything[rate] = {}
        for name, r in runs.items():
            s = r["summary"]
            if s is None:
                row([name, *["—"] * (len(present) + 5), f"no result (loadgen exit {r['rc']})",
                     fmt(r["load_start"])])
                bad.append(f"{name} at {rate}/s: no summary.json (loadgen exit {r['rc']})")
                everything[rate][name] = {"rc": r["rc"]}
                continue
            p = s["params"]
            ops = p["ops_measured"] / max(s.get("measured_seconds") or p["duration_s"], 1e-9)
            lat = []
            fails = []
            for st in present:
                v = s["steps"].get(st)
                if not v or not v.get("count"):
                    lat.append("—")
                    continue
                lat.append(f"{fmt(v['p50_ms'])} / {fmt(v['p99_ms'])}")
                if v["p99_ms"] >= limit:
                    fails.append(f"{SHORT[st]} p99")
            a = s["accounting"]
            if a["lost"] or not a["ok"]:
                fails.append(f"{a['lost']} lost")
            if p.get("ops_skipped"):
                fails.append(f"{p['ops_skipped']} skipped")
            c = (p.get("sut_cpu") or [{}])[0]
            per_k = c.get("cpu_ms_per_1000_stanzas")
            ratio = f"{per_k / base:.2f}x" if per_k is not None and base else "—"
            row([name, fmt(ops, 0), *lat, fmt(a["lost"]), fmt(c.get("cpu_s")),
                 fmt(per_k, 1), ratio, "yes" if not fails else "no: " + ", ".join(fails),
                 fmt(r["load_start"])])
            everything[rate][name] = {
                "rc": r["rc"], "ops_per_s": ops, "lost": a["lost"], "sut_cpu": c,
                "cpu_ratio_to_fedrouter": (per_k / base) if per_k is not None and base else None,
                "p50_p99_ms": {st: [s["steps"][st]["p50_ms"], s["steps"][st]["p99_ms"]]
                               for st in present if st in s["steps"]},
                "sustained": not fails, "why_not": fails, "load_avg_start": r["load_start"],
                "peak_rss_kib": r["proc"].get("VmHWM"),
            }
            if r["rc"] != 0:
                bad.append(f"{name} at {rate}/s: loadgen exit status {r['rc']}")
            if r["proc"].get("exited"):
                bad.append(f"{name} at {rate}/s: the server exited during the run")
    with open(os.path.join(out, "comparison.json"), "w") as f:
        json.dump(everything, f, indent=1)
    print()
    if bad:
        print("FAILED: " + "; ".join(bad))
        return 1
    print(f"every run clean; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
