#!/usr/bin/env bash
# loadgen against fedrouter and against Prosody, the same scenario, one after the other,
# then a comparison table. See the "loadgen-vs-prosody.sh" section of benches/README.md.
#
# Usage: benches/loadgen-vs-prosody.sh [OPTIONS] [-- EXTRA LOADGEN ARGS]
#
#   --peers N            remote domains                 (PEERS, 1000)
#   --users-per-peer N   users per remote domain        (USERS_PER_PEER, 10)
#   --local-users N      local users user0.. on the SUT (LOCAL_USERS, 100)
#   --scenario S         subscribe|presence|message|churn|mixed (SCENARIO, mixed)
#   --rate R             operations/s, open loop; 0 = closed loop (RATE, 200)
#   --duration D         measured duration, humantime  (DURATION, 30s)
#   --out DIR            output folder (OUT, target/loadgen-vs-prosody/<date-time>)
#   --shards N           fedrouter shard threads        (FR_SHARDS, 2)
#   --setup-timeout D    loadgen's bound per set-up phase (SETUP_TIMEOUT, 300s; Prosody
#                        needs 100-170 s for the 8,000 set-up subscriptions at default scale)
#   --no-build           use target/release/{loadgen,fedrouter} as they are (NO_BUILD=1)
#   other arguments, and everything after --, go to both loadgen runs unchanged
#   (EXTRA_ARGS is split on spaces and added too).
#
# Addresses (all loopback): fedrouter 127.0.150.1 (C2S 5222, S2S 5269, admin 9269),
# Prosody 127.0.150.2 (C2S 5222, S2S 5269), loadgen's DNS 127.0.150.53:53 (lua-unbound
# only asks port 53, hence root), peers on ${PEER_NET:-127.150}.x.y:5269.
#
# Exit status: 0 when both runs finished and lost nothing; 1 when either lost stanzas
# or failed; 2 on a set-up problem of this script.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PEERS=${PEERS:-1000}
USERS_PER_PEER=${USERS_PER_PEER:-10}
LOCAL_USERS=${LOCAL_USERS:-100}
SCENARIO=${SCENARIO:-mixed}
RATE=${RATE:-200}
DURATION=${DURATION:-30s}
FR_SHARDS=${FR_SHARDS:-2}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
PASSWORD=${PASSWORD:-loadgen}
SUT_DOMAIN=${SUT_DOMAIN:-cupdomain.test}
FR_IP=${FR_IP:-127.0.150.1}
PROSODY_IP=${PROSODY_IP:-127.0.150.2}
DNS_IP=${DNS_IP:-127.0.150.53}
PEER_NET=${PEER_NET:-127.150}
# Log levels of the two SUTs (to files under the output folder).
FR_LOG_LEVEL=${FR_LOG_LEVEL:-warn}
PROSODY_LOG_LEVEL=${PROSODY_LOG_LEVEL:-warn}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-300s}
# Upper bound of one loadgen run, seconds; default: its three set-up phases, the
# duration, and 120 s for warm-up (3 s), drain (10 s) and shutdown.
RUN_TIMEOUT=${RUN_TIMEOUT:-}
# Bounds of the SUTs' start and stop.
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_GRACE=${STOP_GRACE:-10}

read -r -a EXTRA <<<"${EXTRA_ARGS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) PEERS=$2; shift 2 ;;
    --users-per-peer) USERS_PER_PEER=$2; shift 2 ;;
    --local-users) LOCAL_USERS=$2; shift 2 ;;
    --scenario) SCENARIO=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --shards) FR_SHARDS=$2; shift 2 ;;
    --setup-timeout) SETUP_TIMEOUT=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

die() {
  echo "loadgen-vs-prosody: $*" >&2
  exit 2
}

# seconds TEXT: whole seconds of a simple humantime duration (90s, 2m, 1h, 500ms, 45).
seconds() {
  case "$1" in
    *ms) echo $((${1%ms} / 1000)) ;;
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
  esac
}
if [ -z "$RUN_TIMEOUT" ]; then
  d=$(seconds "$DURATION") st=$(seconds "$SETUP_TIMEOUT")
  [[ "$d" =~ ^[0-9]+$ && "$st" =~ ^[0-9]+$ ]] ||
    die "--duration $DURATION / --setup-timeout $SETUP_TIMEOUT: use a plain 30s, 5m or 1h form, or set RUN_TIMEOUT"
  RUN_TIMEOUT=$((3 * st + d + 120))
fi

[ "$(id -u)" -eq 0 ] || die "must run as root: lua-unbound asks port 53, so loadgen's DNS binds $DNS_IP:53"
for ip in "$FR_IP" "$PROSODY_IP" "$DNS_IP"; do
  case "$ip" in 127.*) ;; *) die "$ip: not a loopback address" ;; esac
done
command -v python3 >/dev/null || die "python3 is needed for the comparison table"
command -v openssl >/dev/null || die "openssl is needed for the SUT certificate"

OUT=${OUT:-$ROOT/target/loadgen-vs-prosody/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
mkdir -p "$WORK"

LOADGEN=$ROOT/target/release/loadgen
FEDROUTER=$ROOT/target/release/fedrouter

# ---------------------------------------------------------------- processes, by pid
FR_PID=""
PROSODY_PID=""
SAMPLER_PID=""
LOADGEN_PID=""

# stop_pid PID NAME: SIGTERM, up to STOP_GRACE s, then SIGKILL; reaps it (our child).
stop_pid() {
  local pid=$1 name=$2 i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "loadgen-vs-prosody: $name (pid $pid) still running ${STOP_GRACE}s after SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$LOADGEN_PID" loadgen
  LOADGEN_PID=""
  stop_pid "$SAMPLER_PID" sampler
  SAMPLER_PID=""
  stop_pid "$FR_PID" fedrouter
  FR_PID=""
  stop_pid "$PROSODY_PID" prosody
  PROSODY_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_port PID IP PORT NAME: until IP:PORT accepts a connection (bounded by START_TIMEOUT).
wait_port() {
  local pid=$1 ip=$2 port=$3 name=$4 i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "loadgen-vs-prosody: $name exited during start-up" >&2; return 1; }
    if timeout 1 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "loadgen-vs-prosody: $name not listening on $ip:$port within ${START_TIMEOUT}s" >&2
  return 1
}

# proc_stats PID FILE: peak and current RSS (KiB) and CPU seconds (user+system) as JSON.
proc_stats() {
  local pid=$1 file=$2
  python3 - "$pid" "$file" <<'EOF'
import json, os, sys, time
pid, path = sys.argv[1], sys.argv[2]
out = {"pid": int(pid), "t": time.time()}
with open(f"/proc/{pid}/status") as f:
    for line in f:
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0])
with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
tick = os.sysconf("SC_CLK_TCK")
out["utime_s"] = int(fields[11]) / tick
out["stime_s"] = int(fields[12]) / tick
out["threads"] = int(fields[17])
with open(path, "w") as f:
    json.dump(out, f)
EOF
}

# ---------------------------------------------------------------- prerequisites
if [ "$NO_BUILD" != 1 ]; then
  echo "== building loadgen and fedrouter (release)"
  (cd "$ROOT" && cargo build --release -p loadgen -p fedrouter) || die "cargo build failed"
fi
[ -x "$LOADGEN" ] && [ -x "$FEDROUTER" ] || die "$LOADGEN or $FEDROUTER missing (build them, or drop --no-build)"

if ! command -v prosody >/dev/null 2>&1 || ! [ -f /usr/lib/prosody/net/unbound.lua ]; then
  echo "== installing Prosody (.ci/setup-prosody)"
  "$ROOT/.ci/setup-prosody" || die ".ci/setup-prosody failed"
fi
PROSODY_VERSION=$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo unknown)

# Nothing of ours may already be there (a previous run killed hard, another bench).
for hp in "$FR_IP:5222" "$FR_IP:5269" "$PROSODY_IP:5222" "$PROSODY_IP:5269" "$DNS_IP:53"; do
  if timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp#*:}" 2>/dev/null; then
    die "$hp is already in use"
  fi
done

# One certificate for the SUT domain, used by both servers and trusted by loadgen's
# clients (--sut-ca): self-signed end-entity (CA:FALSE, as webpki wants for a leaf).
CERT=$WORK/sut.crt
KEY=$WORK/sut.key
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=$SUT_DOMAIN" -keyout "$KEY" -out "$CERT" \
  -addext "subjectAltName=DNS:$SUT_DOMAIN" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
  -addext "extendedKeyUsage=serverAuth,clientAuth" 2>"$WORK/openssl.log" ||
  die "openssl: $(cat "$WORK/openssl.log")"
chmod 644 "$KEY" # Prosody reads it; the folder is ours.

LG_ARGS=(
  --scenario "$SCENARIO" --peers "$PEERS" --users-per-peer "$USERS_PER_PEER"
  --local-users "$LOCAL_USERS" --rate "$RATE" --duration "$DURATION"
  --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" --sut-ca "$CERT"
  --setup-timeout "$SETUP_TIMEOUT" --dns "$DNS_IP:53" --peer-net "$PEER_NET" --no-progress
)

# sample_scenario_start PID DIR: once loadgen reports its set-up done (the line
# "... subscriptions in X s", printed just before the warm-up), the SUT's CPU and RSS
# into DIR/sut-proc-start.json. Bounded by RUN_TIMEOUT.
sample_scenario_start() {
  local pid=$1 dir=$2 i
  for ((i = 0; i < RUN_TIMEOUT * 10; i++)); do
    if grep -q " subscriptions in " "$dir/loadgen.stderr" 2>/dev/null; then
      proc_stats "$pid" "$dir/sut-proc-start.json" || true
      return 0
    fi
    sleep 0.1
  done
}

# run_loadgen NAME IP PID: the scenario against the SUT on IP (process PID); output in
# $OUT/NAME, the SUT's CPU and memory in sut-proc-start.json and sut-proc.json.
run_loadgen() {
  local name=$1 ip=$2 pid=$3 rc
  mkdir -p "$OUT/$name"
  : >"$OUT/$name/loadgen.stderr"
  sample_scenario_start "$pid" "$OUT/$name" &
  SAMPLER_PID=$!
  echo "== loadgen against $name ($ip): ${LG_ARGS[*]} ${EXTRA[*]}"
  # In the background so that a signal to this script runs its trap at once; stopping
  # timeout (by pid) stops loadgen, timeout passes the signal on.
  timeout --signal=INT --kill-after=15 "$RUN_TIMEOUT" \
    "$LOADGEN" "${LG_ARGS[@]}" --sut-s2s "$ip:5269" --sut-c2s "$ip:5222" \
    --out "$OUT/$name" "${EXTRA[@]}" >"$OUT/$name/loadgen.stdout" 2>"$OUT/$name/loadgen.stderr" &
  LOADGEN_PID=$!
  set +e
  wait "$LOADGEN_PID"
  rc=$?
  set -e
  LOADGEN_PID=""
  cat "$OUT/$name/loadgen.stdout"
  cat "$OUT/$name/loadgen.stderr" >&2
  echo "$rc" >"$OUT/$name/loadgen.rc"
  [ "$rc" -eq 124 ] && echo "loadgen-vs-prosody: loadgen against $name timed out after ${RUN_TIMEOUT}s" >&2
  stop_pid "$SAMPLER_PID" sampler
  SAMPLER_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    proc_stats "$pid" "$OUT/$name/sut-proc.json"
  else
    echo "loadgen-vs-prosody: $name exited during the run" >&2
    echo '{"exited": true}' >"$OUT/$name/sut-proc.json"
  fi
  echo "== loadgen against $name: exit status $rc"
}

# ---------------------------------------------------------------- (a) fedrouter
FR_DIR=$WORK/fedrouter
mkdir -p "$FR_DIR"
FR_CONF=$FR_DIR/fedrouter.toml
cat >"$FR_CONF" <<EOF
# Written by benches/loadgen-vs-prosody.sh.
data_dir = "$FR_DIR/data"
domains = ["$SUT_DOMAIN"]
shards = $FR_SHARDS

[listen]
s2s = ["$FR_IP:5269"]
s2s_tls = []
c2s = ["$FR_IP:5222"]
admin = "$FR_IP:9269"

[metrics]
listen = ""

[[tls.certificate]]
domain = "$SUT_DOMAIN"
cert = "$CERT"
key = "$KEY"

[dns]
nameservers = ["$DNS_IP:53"]
timeout = "2s"

[store]
durability = "crash"

[log]
level = "$FR_LOG_LEVEL"

# Google-style federation: plain TCP, Server Dialback.
[federation.default]
tls = "disabled"
auth = "dialback"
verify_certificates = false
EOF

echo "== fedrouter: creating $LOCAL_USERS users"
for ((i = 0; i < LOCAL_USERS; i++)); do
  printf '%s\n' "$PASSWORD" | "$FEDROUTER" user add -c "$FR_CONF" "user$i@$SUT_DOMAIN" >/dev/null ||
    die "fedrouter user add user$i@$SUT_DOMAIN failed"
done

echo "== starting fedrouter serve on $FR_IP (shards $FR_SHARDS)"
"$FEDROUTER" serve -c "$FR_CONF" </dev/null >"$FR_DIR/fedrouter.log" 2>&1 &
FR_PID=$!
wait_port "$FR_PID" "$FR_IP" 5222 fedrouter && wait_port "$FR_PID" "$FR_IP" 5269 fedrouter ||
  { tail -n 40 "$FR_DIR/fedrouter.log" >&2; die "fedrouter did not start"; }
run_loadgen fedrouter "$FR_IP" "$FR_PID"
stop_pid "$FR_PID" fedrouter
FR_PID=""

# ---------------------------------------------------------------- (b) Prosody
PR_DIR=$WORK/prosody
mkdir -p "$PR_DIR/data" "$PR_DIR/certs"
PR_CONF=$PR_DIR/prosody.cfg.lua
# Copied from tests/interop/prosody.rs (the working interop configuration), with
# Google-style federation and a quieter log.
cat >"$PR_CONF" <<EOF
-- Written by benches/loadgen-vs-prosody.sh; nothing here is system-wide.
run_as_root = true
pidfile = "$PR_DIR/prosody.pid"
data_path = "$PR_DIR/data"
log = { { levels = { min = "$PROSODY_LOG_LEVEL" }, to = "file", filename = "$PR_DIR/prosody.log" } }
interfaces = { "$PROSODY_IP" }
local_interfaces = { "$PROSODY_IP" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
c2s_direct_tls_ports = { }
s2s_direct_tls_ports = { }
http_ports = { }
https_ports = { }
use_ipv6 = false
unbound = {
	forward = "$DNS_IP";
	hoststxt = false;
	resolvconf = false;
	options = {
		-- libunbound answers .test (RFC 6761) itself with NXDOMAIN by default;
		-- "nodefault" is ignored through ub_ctx_set_option, a transparent zone works.
		["local-zone:"] = "test. transparent";
		-- Forwarders on 127/8 are skipped unless this is off.
		["do-not-query-localhost:"] = "no";
	};
}
modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping" }
modules_disabled = { "offline" }
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
-- Google-style federation: plain TCP and dialback accepted (Debian's file says true).
s2s_require_encryption = false
s2s_secure_auth = false
s2s_timeout = 20
-- A folder: a table crashes 0.12's start-up in util.paths.
certificates = "$PR_DIR/certs"
ssl = {
	certificate = "$CERT";
	key = "$KEY";
}

VirtualHost "$SUT_DOMAIN"
	ssl = {
		certificate = "$CERT";
		key = "$KEY";
	}
EOF

echo "== prosody: registering $LOCAL_USERS users"
# prosodyctl writes internal storage directly (the server is not running yet); a few
# in parallel, each bounded.
seq 0 $((LOCAL_USERS - 1)) | (cd "$PR_DIR" && xargs -P 4 -I{} \
  timeout 60 prosodyctl --config "$PR_CONF" register "user{}" "$SUT_DOMAIN" "$PASSWORD") \
  >"$PR_DIR/register.log" 2>&1 || { tail -n 20 "$PR_DIR/register.log" >&2; die "prosodyctl register failed"; }
n=$(find "$PR_DIR/data" -path '*/accounts/*.dat' | wc -l)
[ "$n" -eq "$LOCAL_USERS" ] || die "prosody: $n of $LOCAL_USERS accounts stored (see $PR_DIR/register.log)"

echo "== starting prosody $PROSODY_VERSION on $PROSODY_IP"
(cd "$PR_DIR" && exec prosody --config "$PR_CONF" -F) </dev/null >"$PR_DIR/prosody.stdout" 2>&1 &
PROSODY_PID=$!
wait_port "$PROSODY_PID" "$PROSODY_IP" 5222 prosody && wait_port "$PROSODY_PID" "$PROSODY_IP" 5269 prosody ||
  { tail -n 40 "$PR_DIR/prosody.stdout" "$PR_DIR/prosody.log" >&2; die "prosody did not start"; }
run_loadgen prosody "$PROSODY_IP" "$PROSODY_PID"
stop_pid "$PROSODY_PID" prosody
PROSODY_PID=""

# ---------------------------------------------------------------- comparison
set +e
python3 - "$OUT" "$PROSODY_VERSION" "$FR_SHARDS" <<'EOF' | tee "$OUT/comparison.md"
import json, os, re, sys

out, prosody_version, shards = sys.argv[1], sys.argv[2], sys.argv[3]
names = ("fedrouter", "prosody")

def load(name):
    d = {"rc": None, "summary": None, "proc": {}, "setup": {}, "closes": None, "authfail": None}
    p = os.path.join(out, name)
    try:
        d["rc"] = int(open(os.path.join(p, "loadgen.rc")).read().strip())
    except (OSError, ValueError):
        pass
    try:
        d["summary"] = json.load(open(os.path.join(p, "summary.json")))
    except (OSError, ValueError):
        pass
    try:
        d["proc"] = json.load(open(os.path.join(p, "sut-proc.json")))
    except (OSError, ValueError):
        pass
    try:
        d["proc_start"] = json.load(open(os.path.join(p, "sut-proc-start.json")))
    except (OSError, ValueError):
        d["proc_start"] = {}
    try:
        err = open(os.path.join(p, "loadgen.stderr")).read()
        m = re.search(r"authenticated in ([\d.]+) s; \d+ clients logged in in ([\d.]+) s; "
                      r"(\d+) subscriptions in ([\d.]+) s", err)
        if m:
            d["setup"] = {"streams_s": float(m[1]), "logins_s": float(m[2]),
                          "presubscribed": int(m[3]), "subscriptions_s": float(m[4])}
        m = re.search(r"only (\d+) of (\d+) subscriptions completed", err)
        if m:
            d["setup"]["subs_incomplete"] = f"{m[1]}/{m[2]}"
    except OSError:
        pass
    try:
        o = open(os.path.join(p, "loadgen.stdout")).read()
        m = re.search(r"unexpected stream closes: (\d+); S2S authentication failures: (\d+)", o)
        if m:
            d["closes"], d["authfail"] = int(m[1]), int(m[2])
    except OSError:
        pass
    return d

r = {n: load(n) for n in names}

def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}{unit}"
        return f"{v:.2f}{unit}" if v < 10 else f"{v:.1f}{unit}"
    return f"{v:,}{unit}"

def ratio(f, p):
    if f is None or p is None or f == 0:
        return "—"
    return f"{p / f:.2f}x"

def row(cols):
    print("| " + " | ".join(cols) + " |")

s = {n: r[n]["summary"] for n in names}
any_summary = next((x for x in s.values() if x), None)
if any_summary:
    prm = any_summary.get("params", {})
    print()
    print(f"== comparison: scenario {prm.get('scenario')}, {prm.get('peers')} peers x "
          f"{prm.get('users_per_peer')} users, {prm.get('local_users')} local users, "
          f"load {json.dumps(prm.get('load'))}, {prm.get('duration_s')} s measured; "
          f"fedrouter serve ({shards} shards) vs prosody {prosody_version}")
print()
row(["step", "metric", "fedrouter", "prosody", "prosody/fedrouter"])
row(["---", "---", "---:", "---:", "---:"])
steps = ["message", "presence", "subscribe", "subscription_complete", "stream_setup"]
for st in steps:
    vals = {n: ((s[n] or {}).get("steps") or {}).get(st) for n in names}
    if not any(vals.values()):
        continue
    for key, label, unit in (("p50_ms", "p50", " ms"), ("p99_ms", "p99", " ms"),
                             ("p999_ms", "p99.9", " ms"), ("max_ms", "max", " ms"),
                             ("throughput_per_s", "per s", "/s")):
        f = (vals["fedrouter"] or {}).get(key)
        p = (vals["prosody"] or {}).get(key)
        row([st, label, fmt(f, unit), fmt(p, unit), ratio(f, p)])
print()
row(["", "fedrouter", "prosody"])
row(["---", "---:", "---:"])
def both(fn):
    return [fn(r[n]) for n in names]
def acc(d, key):
    a = (d["summary"] or {}).get("accounting")
    return None if a is None else a.get(key)
def prm(d, key):
    return ((d["summary"] or {}).get("params") or {}).get(key)
row(["loadgen exit status", *both(lambda d: fmt(d["rc"]))])
row(["accounting ok", *both(lambda d: fmt(str(acc(d, "ok")).lower() if acc(d, "ok") is not None else None))])
for key in ("sent", "received", "bounced", "lost", "excess"):
    row([f"stanzas {key}", *both(lambda d, k=key: fmt(acc(d, k)))])
row(["operations measured", *both(lambda d: fmt(prm(d, "ops_measured")))])
row(["operations skipped (open loop)", *both(lambda d: fmt(prm(d, "ops_skipped")))])
row(["unexpected stream closes", *both(lambda d: fmt(d["closes"]))])
row(["S2S authentication failures", *both(lambda d: fmt(d["authfail"]))])
row(["set-up: peer streams authenticated", *both(lambda d: fmt(d["setup"].get("streams_s"), " s"))])
row(["set-up: clients logged in", *both(lambda d: fmt(d["setup"].get("logins_s"), " s"))])
row(["set-up: subscriptions", *both(lambda d: (fmt(d["setup"].get("presubscribed")) + " in " +
                                               fmt(d["setup"].get("subscriptions_s"), " s")) if d["setup"] else "—")])
row(["SUT peak RSS (VmHWM)", *both(lambda d: fmt(d["proc"].get("VmHWM"), " KiB"))])
row(["SUT RSS at the end (VmRSS)", *both(lambda d: fmt(d["proc"].get("VmRSS"), " KiB"))])
row(["SUT CPU, whole run (user+sys)", *both(lambda d: fmt(
    (d["proc"]["utime_s"] + d["proc"]["stime_s"]) if "utime_s" in d["proc"] else None, " s"))])
def cpu(p):
    return p["utime_s"] + p["stime_s"] if "utime_s" in p else None
def scenario_cpu(d):
    a, b = d["proc_start"], d["proc"]
    if cpu(a) is None or cpu(b) is None:
        return "—"
    used, wall = cpu(b) - cpu(a), b["t"] - a["t"]
    return f"{used:.1f} s in {wall:.0f} s ({100 * used / wall:.0f} % of a core)"
row(["SUT CPU, warm-up to loadgen's exit", *both(scenario_cpu)])
row(["SUT threads", *both(lambda d: fmt(d["proc"].get("threads")))])
row(["loadgen peak RSS", *both(lambda d: fmt(prm(d, "peak_rss_kib"), " KiB"))])

bad = []
for n in names:
    d = r[n]
    if d["rc"] != 0:
        bad.append(f"{n}: loadgen exit status {d['rc']}")
    if d["summary"] is None:
        bad.append(f"{n}: no summary.json")
    elif not acc(d, "ok") or (acc(d, "lost") or 0) > 0:
        bad.append(f"{n}: {acc(d, 'summary')}")
    if d["proc"].get("exited"):
        bad.append(f"{n}: the SUT exited during the run")
json.dump({n: {k: v for k, v in r[n].items() if k != "summary"} for n in names},
          open(os.path.join(out, "comparison-extra.json"), "w"), indent=1)
print()
if bad:
    print("FAILED: " + "; ".join(bad))
    sys.exit(1)
print(f"both runs clean; outputs in {out}")
EOF
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
