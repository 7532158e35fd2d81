#!/usr/bin/env bash
# The stalled-peer probe: Prosody (gmail.test) stopped with SIGSTOP while a local user
# floods it; the round trips of three other pairs (two local, one with a second Prosody)
# before, during and after the stall, and the flood's accounting. See the
# "stalled-peer.sh" section of benches/README.md; the driver is
# benches/stalled_peer_probe.rs (a `harness = false` bench target).
#
# Usage: sudo benches/stalled-peer.sh [OPTIONS]
#
#   --stall-secs N     how long Prosody stays stopped         (STALL_SECS, 60)
#   --pre-secs N       round trips before the stall            (PRE_SECS, 10)
#   --post-secs N      round trips after SIGCONT               (POST_SECS, 10)
#   --interval-ms N    one round trip per pair every N ms      (INTERVAL_MS, 100)
#   --flood N          flood messages to jdoe1@gmail.test      (FLOOD, 20000)
#   --body-bytes N     flood message body size                 (BODY_BYTES, 1024)
#   --no-peer2         no second Prosody (no S2S pair)         (PEER2=0)
#   --shards N         fedrouter shard threads                 (FR_SHARDS, 2)
#   --write-stall D    fedrouter's s2s.write_stall_timeout     (WRITE_STALL_TIMEOUT,
#                      unset: fedrouter's default, 30s)
#   --settle-secs N    after SIGCONT, wait this long without a flood reply before the
#                      rest counts as lost                     (SETTLE_SECS, 30)
#   --out DIR          output folder (OUT, target/stalled-peer/<date-time>)
#
# Addresses (loopback, PROBE_NET, default 127.0.233): fedrouter .1 (C2S 5222, S2S 5269,
# admin 9269), Prosody gmail.test .2, DNS .3:53 (lua-unbound only asks port 53, hence
# root), the second Prosody .4.
#
# Output in $OUT: stalled-peer.md (the table, also on stdout), stalled-peer.json,
# probe.stdout, work/ (configurations, fedrouter.log; Prosody's logs are in its
# temporary folders, removed at the end).
#
# Exit status: 0 when the target is met (p99 of the unaffected pairs during the stall
# within 2x of before, no failed round trip, no flood message lost), 1 when not, 2 on a
# set-up problem of this script, 101 when the driver panicked, 130 when interrupted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export STALL_SECS=${STALL_SECS:-60}
export PRE_SECS=${PRE_SECS:-10}
export POST_SECS=${POST_SECS:-10}
export INTERVAL_MS=${INTERVAL_MS:-100}
export FLOOD=${FLOOD:-20000}
export BODY_BYTES=${BODY_BYTES:-1024}
export PEER2=${PEER2:-1}
export FR_SHARDS=${FR_SHARDS:-2}
export WRITE_STALL_TIMEOUT=${WRITE_STALL_TIMEOUT:-}
export SETTLE_SECS=${SETTLE_SECS:-30}
export PROBE_NET=${PROBE_NET:-127.0.233}
OUT=${OUT:-}
# Time the driver gets to stop (it reports and stops its processes) after SIGTERM.
STOP_GRACE=${STOP_GRACE:-60}

while [ $# -gt 0 ]; do
  case "$1" in
    --stall-secs) STALL_SECS=$2; shift 2 ;;
    --pre-secs) PRE_SECS=$2; shift 2 ;;
    --post-secs) POST_SECS=$2; shift 2 ;;
    --interval-ms) INTERVAL_MS=$2; shift 2 ;;
    --flood) FLOOD=$2; shift 2 ;;
    --body-bytes) BODY_BYTES=$2; shift 2 ;;
    --no-peer2) PEER2=0; shift ;;
    --shards) FR_SHARDS=$2; shift 2 ;;
    --write-stall) WRITE_STALL_TIMEOUT=$2; shift 2 ;;
    --settle-secs) SETTLE_SECS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "stalled-peer: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
done

die() {
  echo "stalled-peer: $*" >&2
  exit 2
}

for v in STALL_SECS PRE_SECS POST_SECS INTERVAL_MS FLOOD BODY_BYTES FR_SHARDS SETTLE_SECS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v}: a whole number, please"
done
[[ "$PROBE_NET" =~ ^127\.[0-9]+\.[0-9]+$ ]] || die "PROBE_NET=$PROBE_NET: three numbers on loopback (127.x.y)"
[ "$(id -u)" -eq 0 ] || die "must run as root: Prosody's lua-unbound asks port 53, so the probe's DNS binds $PROBE_NET.3:53"
command -v python3 >/dev/null || die "python3 is needed to find the built driver"

OUT=${OUT:-$ROOT/target/stalled-peer/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
# Upper bound of the driver's run: set-up, the three phases, the settling, and 300 s
# for start-up, the warm-up and stopping.
RUN_TIMEOUT=$((PRE_SECS + STALL_SECS + POST_SECS + SETTLE_SECS + 300))

# ---------------------------------------------------------------- processes, by pid
PROBE_PID=""

# alive_as PID WORD: PID runs and its command line contains WORD (not a reused pid).
alive_as() {
  kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"
}

# stop_pid PID NAME GRACE: SIGTERM, up to GRACE s, then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 grace=$3 i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "stalled-peer: $name (pid $pid) still running ${grace}s after SIGTERM; SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  if [ -n "$PROBE_PID" ]; then
    stop_pid "$PROBE_PID" driver "$STOP_GRACE"
    wait "$PROBE_PID" 2>/dev/null || true
    PROBE_PID=""
  fi
  # What the driver started (it stops them itself; this is for a driver killed hard).
  # Prosody may be stopped (SIGSTOP): stop_pid sends SIGCONT first.
  if [ -f "$OUT/pids" ]; then
    local name pid word
    while read -r name pid; do
      case "$name" in fedrouter) word=fedrouter ;; prosody-*) word=prosody ;; *) continue ;; esac
      if [ -n "$pid" ] && [ "$pid" != 0 ] && alive_as "$pid" "$word"; then
        stop_pid "$pid" "$name" 10
      fi
    done <"$OUT/pids"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- prerequisites
if ! command -v prosody >/dev/null 2>&1 || ! [ -f /usr/lib/prosody/net/unbound.lua ]; then
  echo "== installing Prosody (.ci/setup-prosody)"
  "$ROOT/.ci/setup-prosody" || die ".ci/setup-prosody failed"
fi

for hp in "$PROBE_NET.1:5222" "$PROBE_NET.1:5269" "$PROBE_NET.1:9269" "$PROBE_NET.2:5222" \
  "$PROBE_NET.2:5269" "$PROBE_NET.3:53" "$PROBE_NET.4:5222" "$PROBE_NET.4:5269"; do
  if timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp#*:}" 2>/dev/null; then
    die "$hp is already in use (another probe? PROBE_NET picks other addresses)"
  fi
done

echo "== building the probe and fedrouter (cargo bench --no-run, release)"
BIN=$(cd "$ROOT" && cargo bench --bench stalled_peer_probe --no-run --message-format=json |
  python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "stalled_peer_probe" and m.get("executable"):
        exe = m["executable"]
print(exe or "")
') || die "cargo bench --no-run failed"
[ -x "$BIN" ] || die "no stalled_peer_probe executable found in cargo's output"

# ---------------------------------------------------------------- the run
echo "== stalled-peer probe: stall ${STALL_SECS}s, flood ${FLOOD} x ${BODY_BYTES} B, output in $OUT"
rm -f "$OUT/pids"
# In the background so that a signal to this script runs its trap at once.
(cd "$ROOT" && exec "$BIN" --probe) >"$OUT/probe.stdout" &
PROBE_PID=$!
for ((i = 0; i < RUN_TIMEOUT; i++)); do
  kill -0 "$PROBE_PID" 2>/dev/null || break
  sleep 1
done
if kill -0 "$PROBE_PID" 2>/dev/null; then
  echo "stalled-peer: the driver still runs after ${RUN_TIMEOUT}s; SIGTERM (it reports what it has)" >&2
  kill -TERM "$PROBE_PID" 2>/dev/null || true
fi
set +e
# Bounded: the driver ends within STOP_GRACE of SIGTERM; cleanup SIGKILLs it otherwise.
for ((i = 0; i < STOP_GRACE * 10; i++)); do
  kill -0 "$PROBE_PID" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$PROBE_PID" 2>/dev/null && kill -KILL "$PROBE_PID"
wait "$PROBE_PID"
rc=$?
set -e
PROBE_PID=""
cat "$OUT/probe.stdout"
exit "$rc"
