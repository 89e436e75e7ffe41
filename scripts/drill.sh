#!/usr/bin/env bash
# The long reply-integrity drill: builds respipe and the drill client in release, starts a throwaway
# redis-server and respipe on free loopback ports, runs many clients writing values that carry their
# own id (pipelined and not) while Redis is SIGKILLed and restarted, and prints one line:
#   drill: N commands, ok=.., err=.., nil=.., wrong=0, misrouted=0, hung=0, closed=0, recovery_ms=a,b
# Exits non-zero if any reply was wrong, misrouted or missing, or a client was dropped.
# With --idle N (default 10000) it first opens N idle clients and prints respipe's RSS per idle client.
#
#   scripts/drill.sh [--clients 300] [--pipelined 100] [--seconds 60] [--kills 2] [--idle 10000]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
command -v redis-server >/dev/null || { echo "drill: redis-server is not on PATH" >&2; exit 2; }
args=(--clients 300 --pipelined 100 --seconds 60 --kills 2 --idle 10000 "$@")
# Idle clients need one descriptor each here and one each in respipe: raise the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet --bin respipe --example drill
exec target/release/examples/drill --respipe target/release/respipe "${args[@]}"
