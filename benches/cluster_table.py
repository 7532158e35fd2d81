#!/usr/bin/env python3
"""The table of benches/cluster.sh: one column per part (single, cluster, kill).

Usage: cluster_table.py OUT PART...

Reads OUT/PART/summary.json (loadgen), OUT/PART/n*.metrics (each node's /metrics at the
end of the run) and, for the kill part, OUT/PART/n*.log (the nodes' JSON log lines).

- p50/p99 per step: loadgen's measured window.
- CPU-s per 1,000 stanzas: utime+stime of every node together over the measured window
  (loadgen --sut-pid, one per node; a killed node counts up to its death) per 1,000
  stanzas loadgen received in that window.
- crossed nodes: sum over nodes of fedrouter_cluster_forwarded_total / sum over nodes of
  fedrouter_stanzas_total{dir="s2s_out"|"c2s_out"} (stanzas the SUT delivered, after
  presence fan-out: each delivery is routed, and forwarded, once), whole run.
- session messages: sum over nodes of fedrouter_cluster_session_messages_total{dir="out"}
  (a client's node and its session's home node, cluster.c2s_sessions = "stay"), whole run.
- hand-off p99: fedrouter_cluster_handoff_latency_seconds buckets summed over the nodes,
  the upper bound of the bucket holding the 99th percentile; and the highest per-node
  HDR p99 (fedrouter_cluster_handoff_latency_quantile_seconds{quantile="0.99"}).
- kill: the time from SIGKILL to the first survivor's "cluster member dead" log line,
  and to the first second whose received-stanza rate is back to 90 % of the rate before
  the kill (loadgen's per-second series, 1 s resolution); accounting of the whole run.
"""

import glob
import json
import os
import re
import statistics
import sys
from datetime import datetime

LINE = re.compile(r'^(fedrouter_[a-z0-9_]+)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|\+Inf)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def metrics(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                m = LINE.match(line.strip())
                if m:
                    labels = dict(LABEL.findall(m.group(2) or ""))
                    out.append((m.group(1), labels, float(m.group(3))))
    except OSError:
        pass
    return out


def cross_and_handoff(d):
    forwarded = received = session = 0.0
    buckets = {}
    node_p99 = []
    for path in sorted(glob.glob(f"{d}/n*.metrics")):
        for name, labels, v in metrics(path):
            if name == "fedrouter_cluster_forwarded_total":
                forwarded += v
            elif name == "fedrouter_cluster_session_messages_total" and labels.get("dir") == "out":
                session += v
            elif name == "fedrouter_stanzas_total" and labels.get("dir") in ("s2s_out", "c2s_out"):
                received += v
            elif name == "fedrouter_cluster_handoff_latency_seconds_bucket":
                le = labels.get("le")
                key = float("inf") if le == "+Inf" else float(le)
                buckets[key] = buckets.get(key, 0) + v
            elif (name == "fedrouter_cluster_handoff_latency_quantile_seconds"
                  and labels.get("quantile") == "0.99"):
                node_p99.append(v)
    p99 = None
    if buckets and buckets.get(float("inf"), 0) > 0:
        total = buckets[float("inf")]
        for le in sorted(buckets):
            if buckets[le] >= 0.99 * total:
                p99 = le
                break
    return (forwarded, received, p99, (max(node_p99) if node_p99 else None),
            buckets.get(float("inf"), 0), session)


def ts(line):
    try:
        j = json.loads(line)
    except ValueError:
        return None, ""
    t = j.get("timestamp")
    msg = j.get("fields", {}).get("message", "") if isinstance(j.get("fields"), dict) else ""
    if not t:
        return None, msg
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp(), msg
    except ValueError:
        return None, msg


def kill_times(d, summary):
    k = summary["params"].get("kill") or {}
    at_unix, at_s = k.get("killed_at_unix_s"), k.get("killed_at_s")
    detected = None
    for path in sorted(glob.glob(f"{d}/n*.log")):
        with open(path, errors="replace") as f:
            for line in f:
                if "cluster member dead" not in line:
                    continue
                t, _ = ts(line)
                if t is not None and at_unix is not None and t >= at_unix:
                    detected = t if detected is None else min(detected, t)
    series = summary["params"].get("per_second") or []
    recovered = None
    if at_s is not None:
        before = [s["stanzas_in_per_s"] for s in series if 0 <= s["t_s"] <= at_s]
        if before:
            base = statistics.median(before)
            for s in series:
                if s["t_s"] > at_s + 0.5 and s["stanzas_in_per_s"] >= 0.9 * base:
                    recovered = s["t_s"] - at_s
                    break
    return (None if detected is None or at_unix is None else detected - at_unix), recovered


def fmt(v, unit="", digits=1):
    return "—" if v is None else f"{v:.{digits}f}{unit}"


def main():
    out, parts = sys.argv[1], sys.argv[2:]
    cols, rows, steps = [], {}, []
    for p in parts:
        d = os.path.join(out, p)
        try:
            s = json.load(open(f"{d}/summary.json"))
        except (OSError, ValueError):
            cols.append(p)
            rows.setdefault("result", {})[p] = "no summary.json (see loadgen.stderr)"
            continue
        cols.append(p)
        for name, v in s["steps"].items():
            if v.get("count", 0) == 0:
                continue
            if name not in steps:
                steps.append(name)
            rows.setdefault(f"{name} p50 / p99 ms", {})[p] = f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}"
        prm = s["params"]
        nodes = len(prm.get("sut_s2s", []))
        rows.setdefault("nodes", {})[p] = str(nodes)
        rows.setdefault("ops measured", {})[p] = f"{prm['ops_measured']} ({prm['ops_measured'] / max(s['measured_seconds'], 1e-9):.0f}/s)"
        tot = prm.get("sut_cpu_total") or {}
        per = tot.get("cpu_ms_per_1000_stanzas")
        rows.setdefault("CPU-s per 1,000 stanzas (all nodes)", {})[p] = fmt(None if per is None else per / 1000, " s", 3)
        fwd, rcv, p99, node_p99, n_handoff, session = cross_and_handoff(d)
        rows.setdefault("crossed nodes (forwarded / sent by SUT)", {})[p] = (
            f"{100 * fwd / rcv:.1f} % ({fwd:.0f} / {rcv:.0f})" if rcv else "—")
        rows.setdefault("session messages between access and home nodes", {})[p] = f"{session:.0f}"

        rows.setdefault("hand-off p99 (buckets, all nodes) / worst node HDR p99", {})[p] = (
            f"≤ {1000 * p99:.1f} ms / {fmt(None if node_p99 is None else 1000 * node_p99, ' ms')} (n={n_handoff:.0f})"
            if p99 is not None else "—")
        a = s["accounting"]
        rows.setdefault("sent = received + bounced + lost", {})[p] = (
            f"{a['sent']} = {a['received']} + {a['bounced']} + {a['lost']}")
        rows.setdefault("redirects / relogins", {})[p] = f"{prm.get('redirects', 0)} / {prm.get('relogins', 0)}"
        if prm.get("kill"):
            det, rec = kill_times(d, s)
            rows.setdefault("kill: at (s into window)", {})[p] = fmt(prm["kill"].get("killed_at_s"), " s", 2)
            rows.setdefault("kill: first survivor logs member dead after", {})[p] = fmt(det, " s", 2)
            rows.setdefault("kill: rate back to 90 % after", {})[p] = fmt(rec, " s", 0)
    order = ["nodes", "ops measured"] + [f"{n} p50 / p99 ms" for n in steps] + [
        "CPU-s per 1,000 stanzas (all nodes)",
        "crossed nodes (forwarded / sent by SUT)",
        "session messages between access and home nodes",
        "hand-off p99 (buckets, all nodes) / worst node HDR p99",
        "sent = received + bounced + lost",
        "redirects / relogins",
        "kill: at (s into window)",
        "kill: first survivor logs member dead after",
        "kill: rate back to 90 % after",
        "result",
    ]
    print("| | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in order:
        if r in rows:
            print(f"| {r} | " + " | ".join(rows[r].get(c, "") for c in cols) + " |")


if __name__ == "__main__":
    main()
