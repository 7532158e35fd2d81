#!/usr/bin/env bash
# loadgen against fedrouter and Prosody: benches/compare.sh with --servers
# fedrouter,prosody (kept for existing commands; same options and environment variables,
# `--help` lists them). Output goes to target/loadgen-vs-prosody/<date-time> unless OUT
# or --out says otherwise.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OUT=${OUT:-$here/../target/loadgen-vs-prosody/$(date +%Y%m%d-%H%M%S)}
export ME=loadgen-vs-prosody
exec "$here/compare.sh" --servers "${SERVERS:-fedrouter,prosody}" "$@"
