#!/usr/bin/env bash
# loadgen's mixed scenario against (a) one fedrouter node and (b) a three-node fedrouter
# cluster, and (c) the cluster losing one node (SIGKILL) in the middle of the run. Issue
# 17 item 7. See the "cluster.sh" section of benches/README.md.
#
# Usage: benches/cluster.sh [OPTIONS]
#
#   --parts LIST       comma-separated, any of single,cluster,kill (PARTS, all three)
#   --peers N          remote domains                         (PEERS, 1000)
#   --local-users N    local users user0.. on the SUT         (LOCAL_USERS, 100)
#   --users-per-peer N users per remote domain                (USERS_PER_PEER, 10)
#   --rate R           operations/s, open loop                (RATE, 200)
#   --duration D       measured duration, humantime           (DURATION, 30s)
#   --warmup D         warm-up before measuring               (WARMUP, 3s)
#   --kill-node NAME   the node killed in part (c)            (KILL_NODE, n2)
#   --kill-at D        when, from the start of the measured window (KILL_AT, 10s)
#   --shards N         shard threads per node                 (FR_SHARDS, 1)
#   --c2s-sessions M   stay or redirect (cluster.c2s_sessions) (C2S_SESSIONS, stay)
#   --out DIR          output folder (OUT, target/cluster-bench/<date-time>)
#   --no-build         use target/release/{loadgen,fedrouter} as they are (NO_BUILD=1)
#   --quick            100 peers, 20 local users, 15 s, kill at 5 s (unless set otherwise)
#
# Addresses (all loopback): PostgreSQL and nats-server on 127.0.198.1 (5432, 4222); nodes
# n1, n2, n3 on 127.0.198.11, .12, .13 (C2S 5222, S2S 5269, admin and /metrics 9269); the
# single node of part (a) is n1's address; loadgen's DNS on 127.0.76.53:53; peers on
# 127.76.x.y:5269.
#
# Every node shares the PostgreSQL database of its part (a fresh one per part), the
# dialback secret and NATS; [cluster] heartbeat 200ms, failure_timeout 1s. Node i is
# pinned to CPU (i mod ncpu) with taskset (fedrouter pins its shard threads to the cores it
# may use). Every process started here is stopped by pid at the end (trap), also on error.
#
# Exit status: 0 when every part ran (loss in part (c) is expected and reported, not an
# error); 1 when a part failed or (a)/(b) lost stanzas; 2 on a set-up problem.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ME=cluster.sh

PARTS=${PARTS:-single,cluster,kill}
QUICK=${QUICK:-0}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
FR_SHARDS=${FR_SHARDS:-1}
C2S_SESSIONS=${C2S_SESSIONS:-stay}
RATE=${RATE:-200}
WARMUP=${WARMUP:-3s}
USERS_PER_PEER=${USERS_PER_PEER:-10}
KILL_NODE=${KILL_NODE:-n2}
SUT_DOMAIN=${SUT_DOMAIN:-cupdomain.test}
PASSWORD=${PASSWORD:-loadgen}
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_GRACE=${STOP_GRACE:-10}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}

die() {
  echo "$ME: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
  --parts) PARTS=$2; shift 2 ;;
  --peers) PEERS=$2; shift 2 ;;
  --local-users) LOCAL_USERS=$2; shift 2 ;;
  --users-per-peer) USERS_PER_PEER=$2; shift 2 ;;
  --rate) RATE=$2; shift 2 ;;
  --duration) DURATION=$2; shift 2 ;;
  --warmup) WARMUP=$2; shift 2 ;;
  --kill-node) KILL_NODE=$2; shift 2 ;;
  --kill-at) KILL_AT=$2; shift 2 ;;
  --shards) FR_SHARDS=$2; shift 2 ;;
  --c2s-sessions) C2S_SESSIONS=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --no-build) NO_BUILD=1; shift ;;
  --quick) QUICK=1; shift ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$C2S_SESSIONS" in
stay | redirect) ;;
*) die "--c2s-sessions: stay or redirect, not '$C2S_SESSIONS'" ;;
esac
if [ "$QUICK" = 1 ]; then
  PEERS=${PEERS:-100}
  LOCAL_USERS=${LOCAL_USERS:-20}
  DURATION=${DURATION:-15s}
  KILL_AT=${KILL_AT:-5s}
fi
PEERS=${PEERS:-1000}
LOCAL_USERS=${LOCAL_USERS:-100}
DURATION=${DURATION:-30s}
KILL_AT=${KILL_AT:-10s}
case $KILL_NODE in n1 | n2 | n3) ;; *) die "--kill-node $KILL_NODE: expected n1, n2 or n3" ;; esac
OUT=${OUT:-$ROOT/target/cluster-bench/$(date -u +%Y%m%d-%H%M%S)}
LOADGEN=$ROOT/target/release/loadgen
FEDROUTER=$ROOT/target/release/fedrouter
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  LOADGEN=$CARGO_TARGET_DIR/release/loadgen
  FEDROUTER=$CARGO_TARGET_DIR/release/fedrouter
fi

DB_IP=127.0.198.1
PG_PORT=5432
NATS_PORT=4222
DNS=127.0.76.53:53
PEER_NET=127.76
NODE_IPS=(127.0.198.11 127.0.198.12 127.0.198.13)
NCPU=$(nproc)

mkdir -p "$OUT"
chmod 755 "$OUT"
WORK=$(mktemp -d /tmp/fedrouter-cluster-bench.XXXXXX)
chmod 755 "$WORK"

# ---------------------------------------------------------------- processes, by pid
PG_PID=""
NATS_PID=""
LOADGEN_PID=""
declare -A NODE_PID=()

# stop_pid PID NAME [SIG]: SIG (TERM), up to STOP_GRACE s, then SIGKILL; reaps it.
stop_pid() {
  local pid=$1 name=$2 sig=${3:-TERM} i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$ME: $name (pid $pid) still running ${STOP_GRACE}s after SIG$sig; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_nodes() {
  local n
  for n in "${!NODE_PID[@]}"; do
    stop_pid "${NODE_PID[$n]}" "fedrouter $n"
  done
  NODE_PID=()
}

cleanup() {
  stop_pid "$LOADGEN_PID" loadgen
  stop_nodes
  stop_pid "$NATS_PID" nats-server
  # PostgreSQL: SIGINT is its fast shutdown.
  STOP_GRACE=30 stop_pid "$PG_PID" postgres INT
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_port PID IP PORT NAME: until IP:PORT accepts a connection (bounded).
wait_port() {
  local pid=$1 ip=$2 port=$3 name=$4 i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "$ME: $name exited during start-up" >&2; return 1; }
    if timeout 1 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$ME: $name not listening on $ip:$port within ${START_TIMEOUT}s" >&2
  return 1
}

# ---------------------------------------------------------------- prerequisites
PG_BIN=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && PG_BIN=$d
done
[ -n "$PG_BIN" ] || die "PostgreSQL server binaries missing: run .ci/setup-postgres"
command -v nats-server >/dev/null || die "nats-server missing: apt-get install nats-server"
command -v setpriv >/dev/null || die "setpriv missing (util-linux): run .ci/setup-postgres"
command -v curl >/dev/null || die "curl missing"
command -v taskset >/dev/null || die "taskset missing (util-linux)"
if [ "$NO_BUILD" != 1 ]; then
  echo "== building loadgen and fedrouter (release)"
  (cd "$ROOT" && cargo build --release -p loadgen -p fedrouter) || die "cargo build failed"
fi
[ -x "$LOADGEN" ] && [ -x "$FEDROUTER" ] || die "$LOADGEN or $FEDROUTER missing (build them, or drop --no-build)"

for hp in "$DB_IP:$PG_PORT" "$DB_IP:$NATS_PORT" "$DNS" "${NODE_IPS[0]}:5222" \
  "${NODE_IPS[1]}:5222" "${NODE_IPS[2]}:5222"; do
  if timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp#*:}" 2>/dev/null; then
    die "$hp is already in use"
  fi
done

# as_postgres CMD...: PostgreSQL refuses to run as root.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- PostgreSQL and NATS
echo "== PostgreSQL ($PG_BIN) on $DB_IP:$PG_PORT"
mkdir -p "$WORK/pg"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$WORK/pg"
as_postgres "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A trust --no-sync \
  >"$OUT/initdb.log" 2>&1 || { tail -n 20 "$OUT/initdb.log" >&2; die "initdb failed"; }
# A simple command (not the function) in the background, so that $! is postgres itself
# (setpriv execs it), the pid stopped at the end.
PG_RUN=()
[ "$(id -u)" -eq 0 ] && PG_RUN=(setpriv --reuid=postgres --regid=postgres --init-groups)
"${PG_RUN[@]}" "$PG_BIN/postgres" -D "$WORK/pg/data" -h "$DB_IP" -p "$PG_PORT" \
  -k "$WORK/pg" -c fsync=off -c synchronous_commit=off -c max_connections=200 \
  </dev/null >"$OUT/postgres.log" 2>&1 &
PG_PID=$!
for ((i = 0; i < START_TIMEOUT * 10; i++)); do
  grep -qs "ready to accept connections" "$OUT/postgres.log" && break
  kill -0 "$PG_PID" 2>/dev/null || { tail -n 20 "$OUT/postgres.log" >&2; die "postgres exited"; }
  sleep 0.1
done
grep -q "ready to accept connections" "$OUT/postgres.log" || die "postgres not ready in ${START_TIMEOUT}s"

echo "== nats-server on $DB_IP:$NATS_PORT"
nats-server -a "$DB_IP" -p "$NATS_PORT" </dev/null >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
wait_port "$NATS_PID" "$DB_IP" "$NATS_PORT" nats-server || die "nats-server did not start"

# One certificate for the SUT domain, shared by the nodes, trusted by loadgen's clients.
CERT=$WORK/sut.crt
KEY=$WORK/sut.key
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=$SUT_DOMAIN" -keyout "$KEY" -out "$CERT" \
  -addext "subjectAltName=DNS:$SUT_DOMAIN" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
  -addext "extendedKeyUsage=serverAuth,clientAuth" 2>"$WORK/openssl.log" ||
  die "openssl: $(cat "$WORK/openssl.log")"
SECRET=$(openssl rand -hex 32)

# ---------------------------------------------------------------- nodes
# write_config DIR NAME IP DB CLUSTER(0|1): DIR/NAME.toml
write_config() {
  local dir=$1 name=$2 ip=$3 db=$4 cluster=$5 conf=$1/$2.toml
  mkdir -p "$dir/$name-data"
  cat >"$conf" <<EOF
# Written by benches/cluster.sh.
data_dir = "$dir/$name-data"
domains = ["$SUT_DOMAIN"]
shards = $FR_SHARDS

[listen]
s2s = ["$ip:5269"]
s2s_tls = []
c2s = ["$ip:5222"]
admin = "$ip:9269"

[metrics]
listen = ""

[[tls.certificate]]
domain = "$SUT_DOMAIN"
cert = "$CERT"
key = "$KEY"

[dns]
nameservers = ["$DNS"]
timeout = "2s"

[store]
backend = "postgres"
url = "postgresql://postgres@$DB_IP:$PG_PORT/$db"

[s2s]
dialback_secret = "$SECRET"

[log]
level = "info"
format = "json"

# Google-style federation: plain TCP, Server Dialback.
[federation.default]
tls = "disabled"
auth = "dialback"
verify_certificates = false
EOF
  if [ "$cluster" = 1 ]; then
    cat >>"$conf" <<EOF

[cluster]
node = "$name"
nats = ["nats://$DB_IP:$NATS_PORT"]
heartbeat = "200ms"
failure_timeout = "1s"
c2s_address = "$ip:5222"
c2s_sessions = "$C2S_SESSIONS"
EOF
  fi
}

# start_nodes DIR DB N: a fresh database DB, the accounts, N nodes (N=1: no [cluster]).
start_nodes() {
  local dir=$1 db=$2 n=$3 i name ip
  mkdir -p "$dir"
  as_postgres "$PG_BIN/createdb" -h "$DB_IP" -p "$PG_PORT" -U postgres "$db" ||
    die "createdb $db failed"
  for ((i = 0; i < n; i++)); do
    write_config "$dir" "n$((i + 1))" "${NODE_IPS[$i]}" "$db" "$([ "$n" -gt 1 ] && echo 1 || echo 0)"
  done
  echo "== $db: creating $LOCAL_USERS users (loadgen accounts | fedrouter user add, one node's config)"
  "$LOADGEN" accounts --server fedrouter --config "$dir/n1.toml" --local-users "$LOCAL_USERS" \
    --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" >"$dir/accounts.sh"
  (PATH=$(dirname "$FEDROUTER"):$PATH bash -e "$dir/accounts.sh") >"$dir/accounts.log" 2>&1 ||
    { tail -n 20 "$dir/accounts.log" >&2; die "fedrouter user add failed"; }
  for ((i = 0; i < n; i++)); do
    name=n$((i + 1))
    ip=${NODE_IPS[$i]}
    taskset -c $(((i + 1) % NCPU)) "$FEDROUTER" serve -c "$dir/$name.toml" </dev/null \
      >"$dir/$name.log" 2>&1 &
    NODE_PID[$name]=$!
  done
  for ((i = 0; i < n; i++)); do
    name=n$((i + 1))
    ip=${NODE_IPS[$i]}
    wait_port "${NODE_PID[$name]}" "$ip" 5222 "fedrouter $name" &&
      wait_port "${NODE_PID[$name]}" "$ip" 5269 "fedrouter $name" ||
      { tail -n 40 "$dir/$name.log" >&2; die "fedrouter $name did not start"; }
  done
  if [ "$n" -gt 1 ]; then
    # Every node sees every other one before the run (bounded).
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
      local all=1
      for ((j = 0; j < n; j++)); do
        live=$(curl -sf "http://${NODE_IPS[$j]}:9269/status/cluster" |
          python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("live", [])))' 2>/dev/null || echo 0)
        [ "$live" = "$n" ] || all=0
      done
      [ "$all" = 1 ] && break
      sleep 0.1
    done
    [ "$all" = 1 ] || die "the $n nodes did not all see each other within ${START_TIMEOUT}s"
  fi
}

# scrape DIR N: every node's /metrics and /status/cluster into DIR.
scrape() {
  local dir=$1 n=$2 i
  for ((i = 0; i < n; i++)); do
    curl -sf "http://${NODE_IPS[$i]}:9269/metrics" >"$dir/n$((i + 1)).metrics" 2>/dev/null || true
    curl -sf "http://${NODE_IPS[$i]}:9269/status/cluster" >"$dir/n$((i + 1)).cluster.json" 2>/dev/null || true
  done
}

# run_part NAME N [KILL]: loadgen against N nodes; KILL=1 kills $KILL_NODE at $KILL_AT.
run_part() {
  local part=$1 n=$2 kill=${3:-0} dir=$OUT/$1 s2s="" c2s="" pids=() i rc
  start_nodes "$dir" "fr_$part" "$n"
  for ((i = 0; i < n; i++)); do
    s2s+="${s2s:+,}${NODE_IPS[$i]}:5269"
    c2s+="${c2s:+,}${NODE_IPS[$i]}:5222"
    pids+=(--sut-pid "${NODE_PID[n$((i + 1))]}")
  done
  local kill_args=()
  if [ "$kill" = 1 ]; then
    kill_args=(--kill-pid "${NODE_PID[$KILL_NODE]}" --kill-at "$KILL_AT")
  fi
  echo "== ($part) loadgen mixed against $n node(s): $PEERS peers, $LOCAL_USERS users, $RATE ops/s, $DURATION"
  timeout --signal=INT --kill-after=15 "$RUN_TIMEOUT" \
    "$LOADGEN" --scenario mixed --peers "$PEERS" --users-per-peer "$USERS_PER_PEER" \
    --local-users "$LOCAL_USERS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" --sut-s2s "$s2s" --sut-c2s "$c2s" \
    --sut-ca "$CERT" --dns "$DNS" --peer-net "$PEER_NET" --no-progress \
    "${pids[@]}" "${kill_args[@]}" --out "$dir" \
    >"$dir/loadgen.stdout" 2>"$dir/loadgen.stderr" &
  LOADGEN_PID=$!
  set +e
  wait "$LOADGEN_PID"
  rc=$?
  set -e
  LOADGEN_PID=""
  echo "$rc" >"$dir/loadgen.rc"
  cat "$dir/loadgen.stdout"
  tail -n 20 "$dir/loadgen.stderr" >&2
  scrape "$dir" "$n"
  stop_nodes
  echo "== ($part) loadgen exit status $rc"
}

IFS=, read -r -a PART_LIST <<<"$PARTS"
for p in "${PART_LIST[@]}"; do
  case $p in
  single) run_part single 1 ;;
  cluster) run_part cluster 3 ;;
  kill) run_part kill 3 1 ;;
  *) die "--parts: unknown part $p (single, cluster, kill)" ;;
  esac
done

# ---------------------------------------------------------------- the table
python3 "$ROOT/benches/cluster_table.py" "$OUT" "${PART_LIST[@]}" | tee "$OUT/table.md"
status=0
for p in "${PART_LIST[@]}"; do
  rc=$(cat "$OUT/$p/loadgen.rc" 2>/dev/null || echo 2)
  if [ "$p" = kill ]; then
    # Loss is expected when a node dies (and reported); set-up failures are not.
    [ "$rc" -le 1 ] || status=1
  else
    [ "$rc" -eq 0 ] || status=1
  fi
done
echo "== results in $OUT"
exit "$status"
