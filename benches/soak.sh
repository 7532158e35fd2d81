#!/usr/bin/env bash
# A soak (issue 21, part 5): loadgen's mixed scenario, churn included, at a moderate
# open-loop rate for an hour against `fedrouter serve`, with fedrouter's RSS, open files
# and queue depths (and loadgen's RSS) sampled every 10 s into a CSV, plotted as SVGs
# with gnuplot, and summarised: first sample after warm-up, last, max, slope per hour.
# See the "soak.sh" section of benches/README.md. Not for CI.
#
# Usage: benches/soak.sh [OPTIONS] [-- EXTRA LOADGEN ARGS]
#
#   --duration D         measured duration after warm-up, humantime (DURATION, 1h)
#   --warmup D           warm-up, excluded from the summary (WARMUP, 5m)
#   --rate R             operations/s, open loop               (RATE, 200)
#   --peers N            remote domains                         (PEERS, 1000)
#   --users-per-peer N   users per remote domain                (USERS_PER_PEER, 10)
#   --local-users N      local users user0.. on fedrouter       (LOCAL_USERS, 100)
#   --mix M              weights of the mixed scenario (MIX, presence=60,message=30,subscribe=8,churn=2)
#   --interval S         seconds between samples                (INTERVAL, 10)
#   --shards N           fedrouter shard threads                (FR_SHARDS, 2)
#   --out DIR            output folder (OUT, target/soak/<date-time>)
#   --no-build           use the binaries as they are (NO_BUILD=1); they are
#                        $CARGO_TARGET_DIR/release/{fedrouter,loadgen} (default target/),
#                        or FEDROUTER=PATH and LOADGEN=PATH
#   other arguments, and everything after --, go to loadgen unchanged.
#
# Addresses (all loopback): fedrouter 127.0.187.1 (C2S 5222, S2S 5269, admin and
# /metrics 9269), loadgen's DNS 127.0.187.53:5353, peers on ${PEER_NET:-127.188}.x.y:5269.
#
# Output in $OUT: samples.csv, rss.svg, fds.svg, queues.svg, streams.svg, summary.md
# and summary.json (this script's), loadgen/ (its summary.json, histograms, stdout,
# stderr), work/ (fedrouter's configuration, data and log; status-end.json).
#
# Exit status: 0 when loadgen finished, fedrouter stayed up and nothing was lost; 1 when
# a stanza was lost or loadgen or fedrouter failed; 2 on a set-up problem of this script.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DURATION=${DURATION:-1h}
WARMUP=${WARMUP:-5m}
RATE=${RATE:-200}
PEERS=${PEERS:-1000}
USERS_PER_PEER=${USERS_PER_PEER:-10}
LOCAL_USERS=${LOCAL_USERS:-100}
MIX=${MIX:-presence=60,message=30,subscribe=8,churn=2}
INTERVAL=${INTERVAL:-10}
FR_SHARDS=${FR_SHARDS:-2}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
PASSWORD=${PASSWORD:-loadgen}
SUT_DOMAIN=${SUT_DOMAIN:-cupdomain.test}
FR_IP=${FR_IP:-127.0.187.1}
DNS_ADDR=${DNS_ADDR:-127.0.187.53:5353}
PEER_NET=${PEER_NET:-127.188}
FR_LOG_LEVEL=${FR_LOG_LEVEL:-warn}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-300s}
DRAIN=${DRAIN:-30s}
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_GRACE=${STOP_GRACE:-10}

EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --users-per-peer) USERS_PER_PEER=$2; shift 2 ;;
    --local-users) LOCAL_USERS=$2; shift 2 ;;
    --mix) MIX=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --shards) FR_SHARDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

die() {
  echo "soak: $*" >&2
  exit 2
}

# seconds TEXT: whole seconds of a simple humantime duration (90s, 2m, 1h, 45).
seconds() {
  case "$1" in
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
  esac
}
DURATION_S=$(seconds "$DURATION")
WARMUP_S=$(seconds "$WARMUP")
DRAIN_S=$(seconds "$DRAIN")
SETUP_S=$(seconds "$SETUP_TIMEOUT")
for v in DURATION_S WARMUP_S DRAIN_S SETUP_S INTERVAL; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "${v%_S}: '${!v}' is not a plain 30s, 5m, 1h or whole-second duration"
done
[ "$INTERVAL" -ge 1 ] || die "--interval: at least 1 s"
# Bound of the loadgen run: three set-up phases, warm-up, duration, drain, and 120 s
# for the start and the shutdown.
RUN_TIMEOUT=$((3 * SETUP_S + WARMUP_S + DURATION_S + DRAIN_S + 120))

case "$FR_IP" in 127.*) ;; *) die "FR_IP $FR_IP: not a loopback address" ;; esac
case "$DNS_ADDR" in 127.*:*) ;; *) die "DNS_ADDR $DNS_ADDR: not a loopback IP:port" ;; esac
command -v python3 >/dev/null || die "python3 is needed for the summary"
command -v curl >/dev/null || die "curl is needed to read /metrics (apt-get install -y curl)"
command -v openssl >/dev/null || die "openssl is needed for fedrouter's certificate"
if ! command -v gnuplot >/dev/null; then
  echo "== installing gnuplot-nox (Debian) for the plots"
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends gnuplot-nox >/dev/null ||
      { apt-get update >/dev/null && apt-get install -y --no-install-recommends gnuplot-nox >/dev/null; } ||
      die "apt-get install gnuplot-nox failed"
  else
    die "gnuplot is missing: run 'apt-get install -y gnuplot-nox' as root"
  fi
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
FEDROUTER=${FEDROUTER:-$TARGET/release/fedrouter}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
if [ "$NO_BUILD" != 1 ]; then
  echo "== building fedrouter and loadgen (release, target dir $TARGET)"
  (cd "$ROOT" && cargo build --release -p fedrouter -p loadgen) || die "cargo build failed"
fi
[ -x "$FEDROUTER" ] && [ -x "$LOADGEN" ] || die "$FEDROUTER or $LOADGEN missing (build them, or drop --no-build)"

OUT=${OUT:-$ROOT/target/soak/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
LG_OUT=$OUT/loadgen
mkdir -p "$WORK" "$LG_OUT"
CSV=$OUT/samples.csv
ADMIN=$FR_IP:9269
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- processes, by pid
FR_PID=""
LG_PID=""      # the `timeout` wrapping loadgen
SAMPLER_PID=""

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
    echo "soak: $name (pid $pid) still running ${STOP_GRACE}s after SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$LG_PID" loadgen
  LG_PID=""
  stop_pid "$SAMPLER_PID" sampler
  SAMPLER_PID=""
  stop_pid "$FR_PID" fedrouter
  FR_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_port PID IP PORT NAME: until IP:PORT accepts a connection (bounded by START_TIMEOUT).
wait_port() {
  local pid=$1 ip=$2 port=$3 name=$4 i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "soak: $name exited during start-up" >&2; return 1; }
    if timeout 1 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "soak: $name not listening on $ip:$port within ${START_TIMEOUT}s" >&2
  return 1
}

for hp in "$FR_IP:5222" "$FR_IP:5269" "$ADMIN"; do
  if timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp#*:}" 2>/dev/null; then
    die "$hp is already in use (a previous soak still running?)"
  fi
done

# ---------------------------------------------------------------- fedrouter
CERT=$WORK/sut.crt
KEY=$WORK/sut.key
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=$SUT_DOMAIN" -keyout "$KEY" -out "$CERT" \
  -addext "subjectAltName=DNS:$SUT_DOMAIN" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
  -addext "extendedKeyUsage=serverAuth,clientAuth" 2>"$WORK/openssl.log" ||
  die "openssl: $(cat "$WORK/openssl.log")"

FR_CONF=$WORK/fedrouter.toml
cat >"$FR_CONF" <<EOF
# Written by benches/soak.sh.
data_dir = "$WORK/data"
domains = ["$SUT_DOMAIN"]
shards = $FR_SHARDS

[listen]
s2s = ["$FR_IP:5269"]
s2s_tls = []
c2s = ["$FR_IP:5222"]
admin = "$ADMIN"

[metrics]
listen = ""

[[tls.certificate]]
domain = "$SUT_DOMAIN"
cert = "$CERT"
key = "$KEY"

[dns]
nameservers = ["$DNS_ADDR"]
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
"$FEDROUTER" serve -c "$FR_CONF" </dev/null >"$WORK/fedrouter.log" 2>&1 &
FR_PID=$!
wait_port "$FR_PID" "$FR_IP" 5222 fedrouter && wait_port "$FR_PID" "$FR_IP" 5269 fedrouter &&
  wait_port "$FR_PID" "$FR_IP" 9269 fedrouter ||
  { tail -n 40 "$WORK/fedrouter.log" >&2; die "fedrouter did not start"; }

# ---------------------------------------------------------------- loadgen
LG_ARGS=(
  --scenario mixed --mix "$MIX" --peers "$PEERS" --users-per-peer "$USERS_PER_PEER"
  --local-users "$LOCAL_USERS" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION"
  --drain "$DRAIN" --setup-timeout "$SETUP_TIMEOUT"
  --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" --sut-ca "$CERT"
  --sut-s2s "$FR_IP:5269" --sut-c2s "$FR_IP:5222"
  --dns "$DNS_ADDR" --peer-net "$PEER_NET" --no-progress --out "$LG_OUT"
)
echo "== loadgen: ${LG_ARGS[*]} ${EXTRA[*]}"
: >"$LG_OUT/loadgen.stderr"
# In the background so a signal to this script runs its trap at once; stopping
# `timeout` (by pid) stops loadgen: timeout passes the signal on.
timeout --signal=INT --kill-after=15 "$RUN_TIMEOUT" "$LOADGEN" "${LG_ARGS[@]}" "${EXTRA[@]}" \
  >"$LG_OUT/loadgen.stdout" 2>"$LG_OUT/loadgen.stderr" &
LG_PID=$!
T_START=$(date +%s)

# ---------------------------------------------------------------- sampler
# Phases, from loadgen's stderr: "setup" until its line "... subscriptions in X s",
# then "warmup" for WARMUP, "measure" for DURATION, then "drain" until loadgen exits.
# One row every INTERVAL s (paced on the clock, so no drift), bounded in count.
# metric TEXT NAME LABEL...: sum of the samples of family NAME in Prometheus TEXT whose
# labels contain every LABEL (like 'proto="s2s"'): 0 when none does, empty when TEXT is
# (fedrouter did not answer).
metric() {
  local text=$1 name=$2
  shift 2
  [ -n "$text" ] || return 0
  awk -v name="$name" -v labels="$*" '
    BEGIN { n_l = split(labels, l, " ") }
    $1 ~ ("^" name "([{]|$)") {
      for (i = 1; i <= n_l; i++) if (!index($1, l[i])) next
      s += $NF; n++
    }
    END { printf "%d", s }' <<<"$text"
}
sampler() {
  local lg_child="" setup_end="" phase t now rss anon fds thr cpu m q_s2s q_x q_st s2s_in s2s_out c2s cong \
    lg_rss lg_fds max_rows i next nap=""
  # Stopped by SIGTERM (stop_pid): its sleep goes with it.
  trap '[ -n "$nap" ] && kill "$nap" 2>/dev/null; exit 0' TERM
  max_rows=$(((RUN_TIMEOUT + 60) / INTERVAL + 2))
  echo "t_s,phase,fr_rss_kib,fr_rss_anon_kib,fr_fds,fr_threads,fr_cpu_s,q_s2s_remote,q_cross_shard,q_store,q_total,s2s_in,s2s_out,c2s,congested,lg_rss_kib,lg_fds" >"$CSV"
  next=$(date +%s)
  for ((i = 0; i < max_rows; i++)); do
    now=$(date +%s)
    t=$((now - T_START))
    if [ -z "$setup_end" ] && grep -q " subscriptions in " "$LG_OUT/loadgen.stderr" 2>/dev/null; then
      setup_end=$t
      echo "$setup_end" >"$OUT/setup-end-s"
    fi
    if [ -z "$setup_end" ]; then phase=setup
    elif [ "$t" -lt $((setup_end + WARMUP_S)) ]; then phase=warmup
    elif [ "$t" -lt $((setup_end + WARMUP_S + DURATION_S)) ]; then phase=measure
    else phase=drain; fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$FR_PID/status" 2>/dev/null || true)
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$FR_PID/status" 2>/dev/null || true)
    thr=$(awk '/^Threads:/ {print $2}' "/proc/$FR_PID/status" 2>/dev/null || true)
    fds=$(ls "/proc/$FR_PID/fd" 2>/dev/null | wc -l)
    # utime + stime (fields 14 and 15 of /proc/PID/stat, after the parenthesised name), s.
    cpu=$(sed 's/.*) //' "/proc/$FR_PID/stat" 2>/dev/null | awk -v hz="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / hz }' || true)
    m=$(curl -s --max-time 5 "http://$ADMIN/metrics" || true)
    q_s2s=$(metric "$m" fedrouter_queue_depth 'queue="s2s_remote"')
    q_x=$(metric "$m" fedrouter_queue_depth 'queue="cross_shard_outgoing"')
    q_st=$(metric "$m" fedrouter_queue_depth 'queue="store"')
    s2s_in=$(metric "$m" fedrouter_streams 'proto="s2s"' 'dir="in"')
    s2s_out=$(metric "$m" fedrouter_streams 'proto="s2s"' 'dir="out"')
    c2s=$(metric "$m" fedrouter_streams 'proto="c2s"')
    cong=$(metric "$m" fedrouter_congested_destinations)
    [ -n "$lg_child" ] && kill -0 "$lg_child" 2>/dev/null || lg_child=$(pgrep -P "$LG_PID" | head -n 1 || true)
    lg_rss="" lg_fds=""
    if [ -n "$lg_child" ]; then
      lg_rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$lg_child/status" 2>/dev/null || true)
      lg_fds=$(ls "/proc/$lg_child/fd" 2>/dev/null | wc -l)
    fi
    echo "$t,$phase,$rss,$anon,$fds,$thr,$cpu,$q_s2s,$q_x,$q_st,$(( ${q_s2s:-0} + ${q_x:-0} + ${q_st:-0} )),$s2s_in,$s2s_out,$c2s,$cong,$lg_rss,$lg_fds" >>"$CSV"
    next=$((next + INTERVAL))
    now=$(date +%s)
    if [ "$next" -gt "$now" ]; then
      sleep $((next - now)) &
      nap=$!
      wait "$nap" || true
      nap=""
    fi
  done
}
sampler &
SAMPLER_PID=$!

set +e
wait "$LG_PID"
LG_RC=$?
set -e
LG_PID=""
echo "$LG_RC" >"$LG_OUT/loadgen.rc"
[ "$LG_RC" -eq 124 ] && echo "soak: loadgen timed out after ${RUN_TIMEOUT}s" >&2
# One more sample's worth of time after loadgen's exit (the queues once everything has
# drained), then the sampler stops.
sleep "$INTERVAL"
stop_pid "$SAMPLER_PID" sampler
SAMPLER_PID=""
FR_UP=1
if kill -0 "$FR_PID" 2>/dev/null; then
  curl -s --max-time 10 "http://$ADMIN/status" >"$WORK/status-end.json" || true
  curl -s --max-time 10 "http://$ADMIN/metrics" >"$WORK/metrics-end.txt" || true
else
  FR_UP=0
  echo "soak: fedrouter exited during the run" >&2
fi
stop_pid "$FR_PID" fedrouter
FR_PID=""
tail -n 5 "$LG_OUT/loadgen.stderr" >&2 || true

# ---------------------------------------------------------------- plots
# plot FILE TITLE YLABEL "COLUMN:LABEL[:SCALE]"...: one SVG of columns of samples.csv
# against minutes, with the measured phase's start and end marked.
SETUP_END=$(cat "$OUT/setup-end-s" 2>/dev/null || echo 0)
plot() {
  local file=$1 title=$2 ylabel=$3 spec cmd="" col label scale
  shift 3
  for spec in "$@"; do
    IFS=: read -r col label scale <<<"$spec"
    cmd+="${cmd:+, }'$CSV' using (\$1/60):(column('$col')/${scale:-1}) with lines lw 1.5 title '$label'"
  done
  gnuplot <<EOF
set terminal svg size 900,420 dynamic font 'sans,11'
set output '$OUT/$file'
set datafile separator ','
set key autotitle columnhead
set title '$title'
set xlabel 'minutes since fedrouter started'
set ylabel '$ylabel'
set yrange [0:*]
set grid
set key outside bottom center horizontal
set arrow from $(( (SETUP_END + WARMUP_S) ))/60.0, graph 0 to $(( (SETUP_END + WARMUP_S) ))/60.0, graph 1 nohead dt 2 lc rgb 'gray40'
set arrow from $(( (SETUP_END + WARMUP_S + DURATION_S) ))/60.0, graph 0 to $(( (SETUP_END + WARMUP_S + DURATION_S) ))/60.0, graph 1 nohead dt 2 lc rgb 'gray40'
set label 'measured' at $(( SETUP_END + WARMUP_S ))/60.0, graph 0.95 offset 0.5,0 tc rgb 'gray40'
plot $cmd
EOF
}
plot rss.svg "RSS (VmRSS)" "MiB" "fr_rss_kib:fedrouter:1024" "fr_rss_anon_kib:fedrouter RssAnon:1024" \
  "lg_rss_kib:loadgen:1024" ||
  echo "soak: gnuplot failed for rss.svg" >&2
plot fds.svg "Open file descriptors" "fds" "fr_fds:fedrouter" "lg_fds:loadgen" ||
  echo "soak: gnuplot failed for fds.svg" >&2
plot queues.svg "fedrouter queue depths (fedrouter_queue_depth)" "items" \
  "q_s2s_remote:S2S outbound (s2s_remote)" "q_cross_shard:cross-shard inboxes" "q_store:store" ||
  echo "soak: gnuplot failed for queues.svg" >&2
plot streams.svg "fedrouter open streams (fedrouter_streams)" "streams" \
  "s2s_in:S2S in" "s2s_out:S2S out" "c2s:C2S" ||
  echo "soak: gnuplot failed for streams.svg" >&2

# ---------------------------------------------------------------- summary
set +e
python3 - "$OUT" "$LG_RC" "$FR_UP" <<'EOF' | tee "$OUT/summary.md"
import csv, json, os, sys

out, lg_rc, fr_up = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
measured = [r for r in rows if r["phase"] == "measure"]
series = [
    ("fr_rss_kib", "fedrouter RSS", "KiB"),
    ("fr_rss_anon_kib", "fedrouter RssAnon", "KiB"),
    ("fr_fds", "fedrouter open fds", ""),
    ("fr_threads", "fedrouter threads", ""),
    ("fr_cpu_s", "fedrouter CPU (user+sys, cumulative)", "s"),
    ("q_s2s_remote", "queue: S2S outbound", ""),
    ("q_cross_shard", "queue: cross-shard inboxes", ""),
    ("q_store", "queue: store", ""),
    ("q_total", "queues, total", ""),
    ("s2s_in", "S2S streams in", ""),
    ("s2s_out", "S2S streams out", ""),
    ("c2s", "C2S streams", ""),
    ("congested", "congested domains", ""),
    ("lg_rss_kib", "loadgen RSS", "KiB"),
    ("lg_fds", "loadgen open fds", ""),
]

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

def slope_per_hour(pts):
    # Least-squares slope of (t_s, value), per hour.
    if len(pts) < 2:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in pts) / den * 3600

stats = {}
for key, label, unit in series:
    pts = [(float(r["t_s"]), num(r[key])) for r in measured]
    pts = [(t, v) for t, v in pts if v is not None]
    if not pts:
        stats[key] = None
        continue
    vals = [v for _, v in pts]
    stats[key] = {
        "label": label, "unit": unit, "samples": len(pts),
        "first_after_warmup": vals[0], "last": vals[-1], "max": max(vals),
        "min": min(vals), "mean": sum(vals) / len(vals),
        "slope_per_hour": slope_per_hour(pts),
    }

summary = None
try:
    summary = json.load(open(os.path.join(out, "loadgen", "summary.json")))
except (OSError, ValueError):
    pass
acc = (summary or {}).get("accounting") or {}
params = (summary or {}).get("params") or {}

def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.2f}"

span = (float(measured[-1]["t_s"]) - float(measured[0]["t_s"])) if measured else 0
print()
print(f"== soak: mixed ({params.get('mix')}), {params.get('peers')} peers x "
      f"{params.get('users_per_peer')} users, {params.get('local_users')} local users, "
      f"load {json.dumps(params.get('load'))}, warm-up {params.get('warmup_s')} s, "
      f"measured {params.get('duration_s')} s; {len(rows)} samples, {len(measured)} in the "
      f"measured phase ({span / 60:.1f} min)")
print()
print("| series | first after warm-up | last | max | slope per hour |")
print("|---|---:|---:|---:|---:|")
for key, label, unit in series:
    s = stats[key]
    if s is None:
        print(f"| {label} | — | — | — | — |")
        continue
    u = f" {unit}" if unit else ""
    print(f"| {label} | {fmt(s['first_after_warmup'])}{u} | {fmt(s['last'])}{u} | "
          f"{fmt(s['max'])}{u} | {fmt(s['slope_per_hour'])}{u}/h |")
print()
print("| loadgen accounting | |")
print("|---|---:|")
for key in ("sent", "received", "bounced", "lost", "excess"):
    print(f"| stanzas {key} | {fmt(acc.get(key))} |")
print(f"| operations measured | {fmt(params.get('ops_measured'))} |")
print(f"| operations skipped (open loop) | {fmt(params.get('ops_skipped'))} |")
print(f"| loadgen exit status | {lg_rc} |")
try:
    for line in open(os.path.join(out, "loadgen", "loadgen.stdout")):
        if "unexpected stream closes" in line:
            print(f"| {line.strip()} | |")
except OSError:
    pass

bad = []
if lg_rc != 0:
    bad.append(f"loadgen exit status {lg_rc}")
if summary is None:
    bad.append("no loadgen summary.json")
elif not acc.get("ok") or (acc.get("lost") or 0) > 0:
    bad.append(f"accounting: {acc.get('summary', acc)}")
if not fr_up:
    bad.append("fedrouter exited during the run")
if not measured:
    bad.append("no sample in the measured phase")
json.dump({"series": stats, "accounting": acc, "params": params, "loadgen_rc": lg_rc,
           "fedrouter_up": fr_up, "failures": bad},
          open(os.path.join(out, "summary.json"), "w"), indent=1)
print()
if bad:
    print("FAILED: " + "; ".join(bad))
    sys.exit(1)
print(f"lost 0; outputs in {out}")
EOF
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
