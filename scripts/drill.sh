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
#
# --sentinel runs the failover drill: a primary, 2 replicas and 3 redis-sentinel processes on loopback,
# 200 clients (60 pipelining 10-50 deep) through respipe while the primary is replaced, round after
# round, by SENTINEL FAILOVER and by SIGKILL in turn (the killed node restarted and made a replica);
# prints the drill's line, one line per failover (promotion and recovery times) and
# failovers: N, recovery_ms=asked:ms,kill:ms,...  (from the promotion for SENTINEL FAILOVER, from the
# kill for SIGKILL); fails on any wrong, misrouted, hung or dropped reply, an error that is not explicit, or a
# recovery slower than the issue's bound (2 s; down-after-milliseconds + 2 s for a kill):
# Each round waits until every node replicates the primary again (10-20 s after a failover or a restart,
# more under load); the load goes on until the last round is over. (The drill line's recovery_ms is
# the time to a write through respipe once a round is over; the failovers' own times are those above.)
#   scripts/drill.sh --sentinel [--seconds 60] [--rounds 4]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
# Runs cargo test's $test (in tests/$file.rs, with $extra test arguments) in release with
# ${prefix}_SECONDS and ${prefix}_ROUNDS from --seconds/--rounds after $mode (defaults $seconds, $rounds),
# and prints the lines of its log that match $lines; fails as the test does.
test_drill() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      --seconds) seconds=$2; shift 2;;
      --rounds) rounds=$2; shift 2;;
      *) echo "drill: unknown option for $mode: $1" >&2; exit 2;;
    esac
  done
  log=$(mktemp "${TMPDIR:-/tmp}/respipe-drill.XXXXXX")
  status=0
  env "${prefix}_SECONDS=$seconds" "${prefix}_ROUNDS=$rounds" \
    cargo test --release --quiet --test "$file" "$test" -- --nocapture "${extra[@]}" \
    >"$log" 2>&1 || status=$?
  grep -E "$lines" "$log" || { echo "drill: no summary line; see $log" >&2; exit 1; }
  [[ $status == 0 ]] || { echo "drill: FAILED (see $log)" >&2; exit "$status"; }
  rm -f "$log"
  exit 0
}
mode=${1:-}
if [[ $mode == --cluster ]]; then
  shift
  command -v redis-cli >/dev/null || { echo "drill: redis-cli is not on PATH" >&2; exit 2; }
  seconds=60 rounds=5 prefix=RESPIPE_RESHARD file=cluster_redirects test=integrity_under_resharding
  extra=() lines='^drill: '
  test_drill "$@"
fi
if [[ $mode == --sentinel ]]; then
  shift
  command -v redis-sentinel >/dev/null || { echo "drill: redis-sentinel is not on PATH" >&2; exit 2; }
  seconds=60 rounds=4 prefix=RESPIPE_SENTINEL file=sentinel_failover test=repeated_failovers_under_load
  extra=(--ignored) lines='^(drill: |drill errors: |failover \(|failovers: )'
  test_drill "$@"
fi
command -v redis-server >/dev/null || { echo "drill: redis-server is not on PATH" >&2; exit 2; }
args=(--clients 300 --pipelined 100 --seconds 60 --kills 2 --idle 10000 "$@")
# Idle clients need one descriptor each here and one each in respipe: raise the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet --bin respipe --example drill
exec target/release/examples/drill --respipe target/release/respipe "${args[@]}"
