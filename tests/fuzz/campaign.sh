#!/usr/bin/env bash
# The long fuzz campaign (tests/fuzz/README.md, "Campaign"): runs each target for HOURS
# hours, one target after another, at the lowest CPU priority, and appends one line per
# target to the campaign log.
#
# Usage: tests/fuzz/campaign.sh HOURS [JOBS] [TARGET...]
#   HOURS   hours per target (a decimal such as 0.1 is fine)
#   JOBS    libFuzzer processes per target at once (-jobs/-workers; default 1). On a
#           shared machine keep 1.
#   TARGET  targets to run (default: every target, `cargo fuzz list`)
# Environment: CAMPAIGN_LOG (default tests/fuzz/campaign.log).
#
# Log line (tab-separated): date (UTC) commit target seconds executions corpus-files
# findings, where executions is the sum of libFuzzer's final `stat::number_of_executed_units`
# over the jobs and findings counts the new crash-/leak-/timeout-/oom- files under
# artifacts/<target>/. Exit status 1 when any target had findings.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ $# -lt 1 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
hours=$1
jobs=${2:-1}
shift $(( $# >= 2 ? 2 : 1 ))
seconds=$(awk -v h="$hours" 'BEGIN { s = int(h * 3600); if (s < 1) s = 1; print s }')
log=${CAMPAIGN_LOG:-$here/campaign.log}
export RUSTC_BOOTSTRAP=1

cd "$root"
targets=${*:-$(cargo fuzz list --fuzz-dir "$here")}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
nice -n 19 cargo fuzz build --fuzz-dir "$here"
[ -f "$log" ] || printf 'date\tcommit\ttarget\tseconds\texecutions\tcorpus\tfindings\n' >"$log"

status=0
for t in $targets; do
  mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
  work=$(mktemp -d)
  before=$(find "$here/artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' \
    -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  start=$(date +%s)
  echo "campaign: $t for ${seconds}s with $jobs job(s)"
  # With -jobs, libFuzzer writes each job's output to fuzz-<n>.log in the working
  # directory.
  parallel=()
  [ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")
  (cd "$work" && nice -n 19 cargo fuzz run --fuzz-dir "$here" "$t" \
    "$here/corpus/$t" "$here/seeds/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${parallel[@]}" \
    >"$work/run.log" 2>&1) || true
  elapsed=$(( $(date +%s) - start ))
  execs=$(cat "$work"/*.log | grep -o 'stat::number_of_executed_units: *[0-9]*' \
    | grep -o '[0-9]*$' | awk '{ s += $1 } END { print s + 0 }')
  after=$(find "$here/artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' \
    -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  findings=$(( after - before ))
  corpus=$(find "$here/corpus/$t" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$commit" "$t" \
    "$elapsed" "$execs" "$corpus" "$findings" >>"$log"
  if [ "$findings" -gt 0 ]; then
    status=1
    echo "campaign: $t: $findings finding(s) in $here/artifacts/$t; log kept in $work/run.log" >&2
  else
    rm -rf "$work"
  fi
done
exit $status
