#!/usr/bin/env bash
# The same loadgen scenario against fedrouter, Prosody and ejabberd, one after the other
# (each a fresh server process with its own configuration and data), then ONE table per
# rate: ops/s, p50/p99 per step, loss, and the server's CPU per 1,000 stanzas over the
# measured window with its ratio to fedrouter. See the "compare.sh" section of
# benches/README.md.
#
# Usage: benches/compare.sh [OPTIONS] [-- EXTRA LOADGEN ARGS]
#
#   --servers LIST       comma-separated, any of fedrouter,prosody,ejabberd
#                        (SERVERS, fedrouter,prosody,ejabberd)
#   --peers N            remote domains                 (PEERS, 1000)
#   --users-per-peer N   users per remote domain        (USERS_PER_PEER, 10)
#   --local-users N      local users user0.. on the SUT (LOCAL_USERS, 100)
#   --scenario S         subscribe|presence|message|churn|mixed (SCENARIO, mixed)
#   --rate R             operations/s, open loop; 0 = closed loop (RATE, 200)
#   --rates R1,R2,...    a sweep: every server at every rate, one table per rate (RATES)
#   --find-max           per server, from the first rate up (doubling, at most
#                        MAX_RATE, default 6400), the highest rate with every p99 < 100 ms
#                        (P99_LIMIT_MS) and no loss (FIND_MAX=1)
#   --duration D         measured duration, humantime  (DURATION, 30s)
#   --out DIR            output folder (OUT, target/compare/<date-time>)
#   --shards N           fedrouter shard threads        (FR_SHARDS, 2)
#   --setup-timeout D    loadgen's bound per set-up phase (SETUP_TIMEOUT, 300s; Prosody
#                        needs 100-170 s for the 8,000 set-up subscriptions at default scale)
#   --no-build           use target/release/{loadgen,fedrouter} as they are (NO_BUILD=1)
#   FR_CONFIG_EXTRA      TOML appended to fedrouter's generated configuration
#   FR_MULTIPLEX         fedrouter's [federation.default] multiplex (true; false: one
#                        outbound stream per remote domain, XEP-0220 §2.4 off)
#   other arguments, and everything after --, go to every loadgen run unchanged
#   (EXTRA_ARGS is split on spaces and added too).
#
# Addresses (all loopback): fedrouter 127.0.150.1 (C2S 5222, S2S 5269, admin 9269),
# Prosody 127.0.150.2, ejabberd 127.0.150.3 (C2S 5222, S2S 5269; Erlang distribution on
# 127.0.150.3:EJ_DIST_PORT, 27150, no epmd), loadgen's DNS 127.0.150.53:53 (lua-unbound only
# asks port 53, hence root), peers on ${PEER_NET:-127.150}.x.y:5269.
#
# CPU: loadgen reads utime + stime of the server's process (all threads) at the start and
# the end of the measured window (--sut-pid), not set-up, warm-up or drain, and divides
# by the stanzas loadgen received in that window.
#
# Exit status: 0 when every run finished and lost nothing; 1 when a run lost stanzas or
# failed; 2 on a set-up problem of this script.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ME=${ME:-compare}

SERVERS=${SERVERS:-fedrouter,prosody,ejabberd}
PEERS=${PEERS:-1000}
USERS_PER_PEER=${USERS_PER_PEER:-10}
LOCAL_USERS=${LOCAL_USERS:-100}
SCENARIO=${SCENARIO:-mixed}
RATE=${RATE:-200}
RATES=${RATES:-}
FIND_MAX=${FIND_MAX:-0}
MAX_RATE=${MAX_RATE:-6400}
P99_LIMIT_MS=${P99_LIMIT_MS:-100}
DURATION=${DURATION:-30s}
FR_SHARDS=${FR_SHARDS:-2}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
PASSWORD=${PASSWORD:-loadgen}
SUT_DOMAIN=${SUT_DOMAIN:-cupdomain.test}
FR_IP=${FR_IP:-127.0.150.1}
PROSODY_IP=${PROSODY_IP:-127.0.150.2}
EJ_IP=${EJ_IP:-127.0.150.3}
EJ_DIST_PORT=${EJ_DIST_PORT:-27150}
EJ_NODE=${EJ_NODE:-fedrouterbench@$EJ_IP}
DNS_IP=${DNS_IP:-127.0.150.53}
PEER_NET=${PEER_NET:-127.150}
# Log levels of the SUTs (to files under the output folder).
FR_LOG_LEVEL=${FR_LOG_LEVEL:-warn}
PROSODY_LOG_LEVEL=${PROSODY_LOG_LEVEL:-warn}
EJ_LOG_LEVEL=${EJ_LOG_LEVEL:-warning}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-300s}
# Upper bound of one loadgen run, seconds; default: its three set-up phases, the
# duration, and 120 s for warm-up (3 s), drain (10 s) and shutdown.
RUN_TIMEOUT=${RUN_TIMEOUT:-}
# Bounds of the SUTs' start and stop, seconds.
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_GRACE=${STOP_GRACE:-10}

read -r -a EXTRA <<<"${EXTRA_ARGS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) SERVERS=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --users-per-peer) USERS_PER_PEER=$2; shift 2 ;;
    --local-users) LOCAL_USERS=$2; shift 2 ;;
    --scenario) SCENARIO=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    --find-max) FIND_MAX=1; shift ;;
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
  echo "$ME: $*" >&2
  exit 2
}

IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
[ "${#SERVER_LIST[@]}" -gt 0 ] || die "--servers: empty"
for s in "${SERVER_LIST[@]}"; do
  case "$s" in
    fedrouter | prosody | ejabberd) ;;
    *) die "--servers: \`$s\` is not one of fedrouter, prosody, ejabberd" ;;
  esac
done
IFS=, read -r -a RATE_LIST <<<"${RATES:-$RATE}"
for r in "${RATE_LIST[@]}"; do
  [[ "$r" =~ ^[0-9]+$ ]] || die "--rates/--rate: \`$r\` is not a whole number of operations/s"
done
if [ "$FIND_MAX" = 1 ]; then
  [ "${RATE_LIST[0]}" -gt 0 ] || die "--find-max: the first rate must be above 0 (open loop)"
  [[ "$MAX_RATE" =~ ^[0-9]+$ ]] || die "MAX_RATE: \`$MAX_RATE\` is not a whole number"
fi

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
for ip in "$FR_IP" "$PROSODY_IP" "$EJ_IP" "$DNS_IP"; do
  case "$ip" in 127.*) ;; *) die "$ip: not a loopback address" ;; esac
done
command -v python3 >/dev/null || die "python3 is needed for the comparison table"
command -v openssl >/dev/null || die "openssl is needed for the SUT certificate"

OUT=${OUT:-$ROOT/target/compare/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
mkdir -p "$WORK"
chmod 755 "$OUT" "$WORK"

LOADGEN=$ROOT/target/release/loadgen
FEDROUTER=$ROOT/target/release/fedrouter

has() {
  local s
  for s in "${SERVER_LIST[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

# ---------------------------------------------------------------- processes, by pid
SUT_PID=""     # the process this script started for the current server
SUT_NAME=""
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
    echo "$ME: $name (pid $pid) still running ${STOP_GRACE}s after SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$LOADGEN_PID" loadgen
  LOADGEN_PID=""
  stop_sut
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_port PID IP PORT NAME: until IP:PORT accepts a connection (bounded by START_TIMEOUT).
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

PROSODY_VERSION=""
if has prosody; then
  if ! command -v prosody >/dev/null 2>&1 || ! [ -f /usr/lib/prosody/net/unbound.lua ]; then
    echo "== installing Prosody (.ci/setup-prosody)"
    "$ROOT/.ci/setup-prosody" || die ".ci/setup-prosody failed"
  fi
  PROSODY_VERSION=$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo unknown)
fi
EJ_VERSION=""
if has ejabberd; then
  if ! command -v ejabberdctl >/dev/null 2>&1; then
    echo "== installing ejabberd (.ci/setup-ejabberd)"
    "$ROOT/.ci/setup-ejabberd" || die ".ci/setup-ejabberd failed"
  fi
  command -v unshare >/dev/null || die "unshare (util-linux) is needed for ejabberd's private /etc/resolv.conf"
  EJ_VERSION=$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo unknown)
fi

# Nothing of ours may already be there (a previous run killed hard, another bench).
for hp in "$FR_IP:5222" "$FR_IP:5269" "$PROSODY_IP:5222" "$PROSODY_IP:5269" \
  "$EJ_IP:5222" "$EJ_IP:5269" "$EJ_IP:$EJ_DIST_PORT" "$DNS_IP:53"; do
  if timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp#*:}" 2>/dev/null; then
    die "$hp is already in use"
  fi
done

# One certificate for the SUT domain, used by every server and trusted by loadgen's
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
chmod 644 "$KEY" # Prosody and ejabberd read it; the folder is ours.

# ---------------------------------------------------------------- the servers
# start_NAME DIR: a fresh server with its configuration and data in DIR and the local
# users created; sets SUT_PID (the process started here, stopped by pid), MEASURE_PID
# (the process whose CPU is measured) and SUT_IP.

start_fedrouter() {
  local dir=$1 conf=$1/fedrouter.toml i
  cat >"$conf" <<EOF
# Written by benches/compare.sh.
data_dir = "$dir/data"
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
multiplex = ${FR_MULTIPLEX:-true}
EOF
  # FR_CONFIG_EXTRA: TOML appended as it is, e.g. $'[s2s]\nsm_ack_after = "5s"'.
  [ -z "${FR_CONFIG_EXTRA:-}" ] || printf '\n# FR_CONFIG_EXTRA\n%s\n' "$FR_CONFIG_EXTRA" >>"$conf"
  echo "== fedrouter: creating $LOCAL_USERS users"
  "$LOADGEN" accounts --server fedrouter --config "$conf" --local-users "$LOCAL_USERS" \
    --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" >"$dir/accounts.sh"
  (PATH=$(dirname "$FEDROUTER"):$PATH bash -e "$dir/accounts.sh") >"$dir/accounts.log" 2>&1 ||
    { tail -n 20 "$dir/accounts.log" >&2; die "fedrouter user add failed"; }
  echo "== starting fedrouter serve on $FR_IP (shards $FR_SHARDS)"
  "$FEDROUTER" serve -c "$conf" </dev/null >"$dir/fedrouter.log" 2>&1 &
  SUT_PID=$!
  MEASURE_PID=$SUT_PID
  SUT_IP=$FR_IP
  wait_port "$SUT_PID" "$FR_IP" 5222 fedrouter && wait_port "$SUT_PID" "$FR_IP" 5269 fedrouter ||
    { tail -n 40 "$dir/fedrouter.log" >&2; die "fedrouter did not start"; }
}

start_prosody() {
  local dir=$1 conf=$1/prosody.cfg.lua n
  mkdir -p "$dir/data" "$dir/certs"
  # Copied from tests/interop/prosody.rs (the working interop configuration), with
  # Google-style federation and a quieter log.
  cat >"$conf" <<EOF
-- Written by benches/compare.sh; nothing here is system-wide.
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { { levels = { min = "$PROSODY_LOG_LEVEL" }, to = "file", filename = "$dir/prosody.log" } }
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
certificates = "$dir/certs"
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
  "$LOADGEN" accounts --server prosody --config "$conf" --local-users "$LOCAL_USERS" \
    --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" >"$dir/accounts.sh"
  (cd "$dir" && xargs -P 4 -I{} -d '\n' timeout 60 bash -c '{}' <"$dir/accounts.sh") \
    >"$dir/accounts.log" 2>&1 || { tail -n 20 "$dir/accounts.log" >&2; die "prosodyctl register failed"; }
  n=$(find "$dir/data" -path '*/accounts/*.dat' | wc -l)
  [ "$n" -eq "$LOCAL_USERS" ] || die "prosody: $n of $LOCAL_USERS accounts stored (see $dir/accounts.log)"
  echo "== starting prosody $PROSODY_VERSION on $PROSODY_IP"
  (cd "$dir" && exec prosody --config "$conf" -F) </dev/null >"$dir/prosody.stdout" 2>&1 &
  SUT_PID=$!
  MEASURE_PID=$SUT_PID
  SUT_IP=$PROSODY_IP
  wait_port "$SUT_PID" "$PROSODY_IP" 5222 prosody && wait_port "$SUT_PID" "$PROSODY_IP" 5269 prosody ||
    { tail -n 40 "$dir/prosody.stdout" "$dir/prosody.log" >&2; die "prosody did not start"; }
}

# ejctl DIR ARGS...: ejabberdctl against the node of DIR (bounded: 60 s).
ejctl() {
  local dir=$1
  shift
  timeout 60 ejabberdctl --config-dir "$dir" --config "$dir/ejabberd.yml" \
    --ctl-config "$dir/ejabberdctl.cfg" --spool "$dir/spool" --logs "$dir/logs" \
    --node "$EJ_NODE" "$@"
}

# beam_pid NODE: the pid of the Erlang VM running node NODE (the process whose CPU counts).
beam_pid() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null || true)
    case "$cmd" in
      *beam*" -sname $1 "* | *beam*" -name $1 "*) echo "${p#/proc/}"; return 0 ;;
    esac
  done
  return 1
}

start_ejabberd() {
  local dir=$1 i up="" n
  mkdir -p "$dir/spool" "$dir/logs"
  cp "$CERT" "$KEY" "$dir/"
  # Plain TCP + dialback towards loadgen's Google-style peers (as the fedrouter and
  # Prosody runs); C2S with STARTTLS required, as loadgen's clients want.
  cat >"$dir/ejabberd.yml" <<EOF
# Written by benches/compare.sh; nothing here is system-wide.
hosts:
  - $SUT_DOMAIN
loglevel: $EJ_LOG_LEVEL
log_rotate_count: 0
certfiles:
  - "$dir/sut.crt"
  - "$dir/sut.key"
auth_method: internal
auth_password_format: scram
s2s_use_starttls: false
s2s_access: all
# The peers have A records only: no AAAA look-ups first.
outgoing_s2s_families:
  - ipv4
listen:
  -
    port: 5222
    ip: "$EJ_IP"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
  -
    port: 5269
    ip: "$EJ_IP"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  s2s:
    allow: all
modules:
  mod_roster: {}
  mod_s2s_dialback: {}
  mod_disco: {}
  mod_admin_extra: {}
EOF
  # The distribution interface as an Erlang term (INET_DIST_INTERFACE would start one more
  # VM per ejabberdctl call to parse it).
  cat >"$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$EJ_NODE
ERL_OPTIONS="-setcookie fedrouter-bench-$$ -kernel inet_dist_use_interface {${EJ_IP//./,}}"
ERL_DIST_PORT=$EJ_DIST_PORT
ERL_MAX_PORTS=65536
EOF
  # Erlang's resolver (SRV look-ups): loadgen's DNS only; ejabberdctl points ERL_INETRC
  # at CONFIG_DIR/inetrc. A look-ups of the system resolver go to the private
  # /etc/resolv.conf bind-mounted below.
  # resolv_conf first: read after the nameserver, it clears it.
  cat >"$dir/inetrc" <<EOF
{resolv_conf, ""}.
{nameserver, {${DNS_IP//./,}}, 53}.
{lookup, [file, dns]}.
EOF
  printf 'nameserver %s\noptions timeout:2 attempts:1\n' "$DNS_IP" >"$dir/resolv.conf"
  # ejabberdctl run as root switches to the ejabberd user: it must own the folder.
  chown -R ejabberd: "$dir"
  echo "== starting ejabberd $EJ_VERSION on $EJ_IP (node $EJ_NODE, private /etc/resolv.conf)"
  (
    ulimit -n 65536 || true
    exec unshare --mount --propagation private -- bash -c '
      mount --bind "$1" /etc/resolv.conf || exit 97
      shift
      exec "$@"' bash "$dir/resolv.conf" \
      ejabberdctl --config-dir "$dir" --config "$dir/ejabberd.yml" \
      --ctl-config "$dir/ejabberdctl.cfg" --spool "$dir/spool" --logs "$dir/logs" \
      --node "$EJ_NODE" foreground
  ) </dev/null >"$dir/foreground.log" 2>&1 &
  SUT_PID=$!
  SUT_IP=$EJ_IP
  # Bounded: START_TIMEOUT s for the node to answer `status` (each call starts a VM).
  local until=$((SECONDS + START_TIMEOUT))
  while [ "$SECONDS" -lt "$until" ]; do
    if ejctl "$dir" status >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$SUT_PID" 2>/dev/null || break
    sleep 0.5
  done
  [ -n "$up" ] || { tail -n 40 "$dir/foreground.log" "$dir/logs/"*.log >&2 2>/dev/null; die "ejabberd did not start"; }
  MEASURE_PID=$(beam_pid "$EJ_NODE") || die "ejabberd: no Erlang VM running node $EJ_NODE"
  wait_port "$SUT_PID" "$EJ_IP" 5222 ejabberd && wait_port "$SUT_PID" "$EJ_IP" 5269 ejabberd ||
    { tail -n 40 "$dir/foreground.log" >&2; die "ejabberd did not listen"; }
  echo "== ejabberd: registering $LOCAL_USERS users (VM pid $MEASURE_PID)"
  "$LOADGEN" accounts --server ejabberd --config "$dir/ejabberd.yml" \
    --local-users "$LOCAL_USERS" --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" >"$dir/accounts.sh"
  # Each line starts an Erlang VM that calls the node: a few in parallel, each bounded.
  xargs -P 4 -I{} -d '\n' timeout 60 bash -c '{}' <"$dir/accounts.sh" >"$dir/accounts.log" 2>&1 ||
    { tail -n 20 "$dir/accounts.log" >&2; die "ejabberdctl register failed"; }
  n=$(ejctl "$dir" registered_users "$SUT_DOMAIN" | wc -l)
  [ "$n" -eq "$LOCAL_USERS" ] || die "ejabberd: $n of $LOCAL_USERS accounts registered (see $dir/accounts.log)"
}

# stop_sut: the current server, by pid (ejabberd: `ejabberdctl stop` first).
stop_sut() {
  local i
  [ -n "$SUT_PID" ] || return 0
  if [ "$SUT_NAME" = ejabberd ] && kill -0 "$SUT_PID" 2>/dev/null; then
    timeout 30 ejabberdctl --config-dir "$SUT_DIR" --config "$SUT_DIR/ejabberd.yml" \
      --ctl-config "$SUT_DIR/ejabberdctl.cfg" --spool "$SUT_DIR/spool" --logs "$SUT_DIR/logs" \
      --node "$EJ_NODE" stop >/dev/null 2>&1 || true
    for ((i = 0; i < STOP_GRACE * 10; i++)); do
      kill -0 "$SUT_PID" 2>/dev/null || break
      sleep 0.1
    done
    # The VM (a grandchild through su) if it outlived the stop.
    MEASURE_PID=${MEASURE_PID:-$(beam_pid "$EJ_NODE" || true)}
    if [ -n "$MEASURE_PID" ] && kill -0 "$MEASURE_PID" 2>/dev/null; then
      kill -KILL "$MEASURE_PID" 2>/dev/null || true
    fi
  fi
  stop_pid "$SUT_PID" "$SUT_NAME"
  SUT_PID=""
  MEASURE_PID=""
}

# ---------------------------------------------------------------- one run
LG_ARGS=(
  --scenario "$SCENARIO" --peers "$PEERS" --users-per-peer "$USERS_PER_PEER"
  --local-users "$LOCAL_USERS" --duration "$DURATION"
  --sut-domain "$SUT_DOMAIN" --password "$PASSWORD" --sut-ca "$CERT"
  --setup-timeout "$SETUP_TIMEOUT" --dns "$DNS_IP:53" --peer-net "$PEER_NET" --no-progress
)

# run_one NAME RATE: a fresh server NAME, loadgen at RATE against it, the server stopped;
# everything in $OUT/rate-RATE/NAME (loadgen.rc holds loadgen's exit status).
run_one() {
  local name=$1 rate=$2 dir rc
  dir=$OUT/rate-$rate/$name
  mkdir -p "$dir/server"
  chmod 755 "$OUT/rate-$rate" "$dir"
  SUT_NAME=$name
  SUT_DIR=$dir/server
  "start_$name" "$dir/server"
  echo "== loadgen against $name ($SUT_IP) at $rate ops/s: ${LG_ARGS[*]} ${EXTRA[*]}"
  uptime >"$dir/loadavg-start"
  # In the background so that a signal to this script runs its trap at once; stopping
  # timeout (by pid) stops loadgen, timeout passes the signal on.
  timeout --signal=INT --kill-after=15 "$RUN_TIMEOUT" \
    "$LOADGEN" "${LG_ARGS[@]}" --rate "$rate" --sut-s2s "$SUT_IP:5269" --sut-c2s "$SUT_IP:5222" \
    --sut-pid "$MEASURE_PID" --out "$dir" "${EXTRA[@]}" >"$dir/loadgen.stdout" 2>"$dir/loadgen.stderr" &
  LOADGEN_PID=$!
  set +e
  wait "$LOADGEN_PID"
  rc=$?
  set -e
  LOADGEN_PID=""
  uptime >"$dir/loadavg-end"
  cat "$dir/loadgen.stdout"
  cat "$dir/loadgen.stderr" >&2
  echo "$rc" >"$dir/loadgen.rc"
  [ "$rc" -eq 124 ] && echo "$ME: loadgen against $name timed out after ${RUN_TIMEOUT}s" >&2
  if kill -0 "$MEASURE_PID" 2>/dev/null; then
    proc_stats "$MEASURE_PID" "$dir/sut-proc.json"
  else
    echo "$ME: $name exited during the run" >&2
    echo '{"exited": true}' >"$dir/sut-proc.json"
  fi
  stop_sut
  echo "== loadgen against $name at $rate ops/s: exit status $rc"
  return 0
}

# sustained DIR: exit 0 when the run in DIR had every step's p99 below P99_LIMIT_MS and
# no loss; prints why not otherwise.
sustained() {
  python3 - "$1" "$P99_LIMIT_MS" <<'EOF'
import json, sys
d, limit = sys.argv[1], float(sys.argv[2])
try:
    s = json.load(open(f"{d}/summary.json"))
except (OSError, ValueError):
    print("no summary.json"); sys.exit(1)
bad = [f"{k} p99 {v['p99_ms']:.0f} ms" for k, v in s["steps"].items()
       if v.get("count", 0) > 0 and v["p99_ms"] >= limit]
a = s["accounting"]
if a["lost"] or not a["ok"]:
    bad.append(f"{a['lost']} lost")
if s["params"].get("ops_skipped"):
    bad.append(f"{s['params']['ops_skipped']} operations skipped")
if bad:
    print(", ".join(bad)); sys.exit(1)
EOF
}

echo "== $(date -u +%FT%TZ) servers ${SERVERS}, rates ${RATE_LIST[*]}$([ "$FIND_MAX" = 1 ] && echo ", find-max up to $MAX_RATE"); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$FIND_MAX" = 1 ]; then
  : >"$OUT/find-max.txt"
  for name in "${SERVER_LIST[@]}"; do
    rate=${RATE_LIST[0]} best=0
    # Bounded: doubling from the first rate up to MAX_RATE.
    while [ "$rate" -le "$MAX_RATE" ]; do
      run_one "$name" "$rate"
      if why=$(sustained "$OUT/rate-$rate/$name"); then
        best=$rate
        rate=$((rate * 2))
      else
        echo "$name at $rate ops/s: not sustained ($why)" | tee -a "$OUT/find-max.txt"
        break
      fi
    done
    echo "$name: highest rate sustained (every p99 < ${P99_LIMIT_MS} ms, no loss): $best ops/s" |
      tee -a "$OUT/find-max.txt"
  done
else
  for rate in "${RATE_LIST[@]}"; do
    for name in "${SERVER_LIST[@]}"; do
      run_one "$name" "$rate"
    done
  done
fi

# ---------------------------------------------------------------- comparison
set +e
python3 "$ROOT/benches/compare_table.py" "$OUT" "$SERVERS" "$P99_LIMIT_MS" \
  "fedrouter serve ($FR_SHARDS shards); prosody $PROSODY_VERSION; ejabberd $EJ_VERSION" |
  tee "$OUT/comparison.md"
rc=${PIPESTATUS[0]}
[ -f "$OUT/find-max.txt" ] && { echo; cat "$OUT/find-max.txt"; } | tee -a "$OUT/comparison.md"
set -e
exit "$rc"
