#!/usr/bin/env bash
# The long reply-integrity drill: builds respipe and the drill client in release, starts a throwaway
# redis-server and respipe on free loopback ports, runs many clients writing values that carry their
# own id (pipelined and not) while Redis is SIGKILLed and restarted, and prints one line:
#   drill: N commands, ok=.., err=.., nil=.., wrong=0, misrouted=0, hung=0, closed=0, recovery_ms=a,b
# Exits non-zero if any reply was wrong, misrouted or missing, or a client was dropped.
# With --idle N (default 10000) it first opens N idle clients and prints respipe's RSS per idle client.
#
#   scripts/drill.sh [--clients 300] [--pipelined 100] [--seconds 60] [--kills 2] [--idle 10000]
#
# --cluster runs the resharding drill instead: a real 3-primary Redis Cluster on loopback, 200 clients
# (66 pipelining 10-50 deep, keys on every primary) through respipe while slots migrate between the
# primaries, round after round; prints the drill's line plus migrations=N and fails on any wrong,
# misrouted, hung, missing or errored reply (so also on a MOVED/ASK reaching a client):
#   scripts/drill.sh --cluster [--seconds 60] [--rounds 5]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ ${1:-} == --cluster ]]; then
  shift
  seconds=60 rounds=5
  while [[ $# -gt 0 ]]; do
    case $1 in
      --seconds) seconds=$2; shift 2;;
      --rounds) rounds=$2; shift 2;;
      *) echo "drill: unknown option for --cluster: $1" >&2; exit 2;;
    esac
  done
  command -v redis-cli >/dev/null || { echo "drill: redis-cli is not on PATH" >&2; exit 2; }
  log=$(mktemp "${TMPDIR:-/tmp}/respipe-reshard.XXXXXX")
  status=0
  RESPIPE_RESHARD_SECONDS=$seconds RESPIPE_RESHARD_ROUNDS=$rounds \
    cargo test --release --quiet --test cluster_redirects integrity_under_resharding -- --nocapture \
    >"$log" 2>&1 || status=$?
  grep -E '^drill: ' "$log" || { echo "drill: no summary line; see $log" >&2; exit 1; }
  [[ $status == 0 ]] || { echo "drill: FAILED (see $log)" >&2; exit "$status"; }
  rm -f "$log"
  exit 0
fi
command -v redis-server >/dev/null || { echo "drill: redis-server is not on PATH" >&2; exit 2; }
args=(--clients 300 --pipelined 100 --seconds 60 --kills 2 --idle 10000 "$@")
# Idle clients need one descriptor each here and one each in respipe: raise the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet --bin respipe --example drill
exec target/release/examples/drill --respipe target/release/respipe "${args[@]}"
