#!/usr/bin/env bash
# respipe end to end: build it, start a throwaway redis-server (unless --upstream is given), put
# respipe in front of it, and run the same redis-benchmark load directly against Redis and through
# respipe. Prints a Markdown table: throughput, latency and how many commands Redis handled per
# read syscall (the point of a pipelining proxy: ~1 direct, many through respipe).
#
# Progress goes to stderr, the table to stdout. Exits non-zero if any step or run failed.
# Every process it starts is stopped on exit, Ctrl-C included. Loopback addresses only.
#
# Env: RESPIPE_BIN=PATH  use this binary instead of building target/release/respipe (it must take
#                        respipe's flags: --listen, --upstream, --metrics-listen, ...).
#      REDIS_SERVER / REDIS_CLI / REDIS_BENCHMARK override those binaries.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/demo.sh [options] [-- extra respipe flags]

  --upstream HOST:PORT  benchmark this Redis instead of starting a throwaway one
                        (it gets SET/GET traffic on keys "key:*"; use a loopback address)
  --clients "LIST"      redis-benchmark client counts (default "1 50 200")
  --tests "LIST"        redis-benchmark tests, space or comma separated (default "set get")
  --requests N          requests per run when clients > 1 (default 100000)
  --requests-c1 N       requests per run when clients = 1 (default 20000)
  --rounds N            repeat every run N times; the table shows medians (default 1)
  --run-timeout S       give up on one redis-benchmark run after S seconds (default 120)
  -h, --help

Anything after `--` is passed to respipe, e.g.  scripts/demo.sh -- --batch-window-us 50
EOF
}

UPSTREAM=""
CLIENTS="1 50 200"
TESTS="set get"
REQ=100000
REQ_C1=20000
ROUNDS=1
RUN_TIMEOUT=120
KEYSPACE=100000
DATASIZE=3
EXTRA_ARGS=()

need_arg() { [[ $# -ge 2 && -n $2 ]] || { echo "demo: $1 needs a value" >&2; usage >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --upstream) need_arg "$@"; UPSTREAM=$2; shift 2;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2;;
    --tests) need_arg "$@"; TESTS=$2; shift 2;;
    --requests) need_arg "$@"; REQ=$2; shift 2;;
    --requests-c1) need_arg "$@"; REQ_C1=$2; shift 2;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2;;
    --run-timeout) need_arg "$@"; RUN_TIMEOUT=$2; shift 2;;
    -h|--help) usage; exit 0;;
    --) shift; EXTRA_ARGS=("$@"); break;;
    *) echo "demo: unknown option: $1" >&2; usage >&2; exit 2;;
  esac
done
TESTS=${TESTS//,/ }
for v in "$REQ" "$REQ_C1" "$ROUNDS" "$RUN_TIMEOUT" $CLIENTS; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "demo: not a positive number: '$v'" >&2; exit 2; }
done

log() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}

# ------------------------------------------------------------------ cleanup
WORK=""
PIDS=()      # every background process we started
NAMES=()     # its name, for messages
stop_pid() { # pid name: SIGTERM, wait up to 10 s, then SIGKILL; sets STOP_RC to its exit status
  local pid=$1 name=$2 i
  STOP_RC=0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || STOP_RC=$?; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not exit 10 s after SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || STOP_RC=$?
}
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    [[ -n ${PIDS[$i]} ]] && stop_pid "${PIDS[$i]}" "${NAMES[$i]}"
  done
  [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
trap 'log "hung up"; exit 129' HUP

# ------------------------------------------------------------------ tools
missing=()
for b in "$REDIS_CLI" "$REDIS_BENCHMARK"; do command -v "$b" >/dev/null || missing+=("$b"); done
[[ -n $UPSTREAM ]] || command -v "$REDIS_SERVER" >/dev/null || missing+=("$REDIS_SERVER")
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "missing ${missing[*]}: installing redis-server redis-tools with apt-get…"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 && apt-get install -y -q redis-server redis-tools >&2 \
      || die "apt-get install redis-server redis-tools failed"
    for b in "${missing[@]}"; do command -v "$b" >/dev/null || die "still missing after install: $b"; done
  else
    log "missing ${missing[*]}. Install them with:"
    echo "    sudo apt-get update && sudo apt-get install -y redis-server redis-tools" >&2
    exit 1
  fi
fi
for b in python3 timeout; do command -v "$b" >/dev/null || die "missing $b"; done

# Many clients need many file descriptors (redis-benchmark, respipe, redis-server inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------ build
if [[ -n ${RESPIPE_BIN:-} ]]; then
  BIN=$RESPIPE_BIN
  log "using RESPIPE_BIN=$BIN (not building)"
else
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
  log "building respipe (release; the first build takes a few minutes)…"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  # where cargo put it (honours CARGO_TARGET_DIR and .cargo/config.toml)
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') \
    || TARGET_DIR=$ROOT/target
  BIN=$TARGET_DIR/release/respipe
fi
[[ -x $BIN ]] || command -v "$BIN" >/dev/null || die "respipe binary not found or not executable: $BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/respipe-demo.XXXXXX")

# Free loopback ports: the kernel picks them (bind to port 0); all sockets are open at once so
# the ports differ.
read -r REDIS_PORT PROXY_PORT METRICS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')

# start_bg NAME CMD...: run CMD in the background, stdout+stderr to $WORK/NAME.log; sets LAST_PID
start_bg() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID"); NAMES+=("$name")
}
show_log() { # name
  [[ -s $WORK/$1.log ]] || return 0
  log "last lines of the $1 log:"
  tail -n 20 "$WORK/$1.log" | sed 's/^/    /' >&2
}
# wait_ping NAME PID HOST PORT TRIES: poll PING every 0.1 s until PONG, the process dies or we give up
wait_ping() {
  local name=$1 pid=$2 host=$3 port=$4 tries=$5 i
  for ((i = 0; i < tries; i++)); do
    if [[ $(timeout 2 "$REDIS_CLI" -h "$host" -p "$port" PING 2>/dev/null) == PONG ]]; then return 0; fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      show_log "$name"; die "$name exited before answering PING on $host:$port"
    fi
    sleep 0.1
  done
  [[ -n $pid ]] && show_log "$name"
  die "$name did not answer PING on $host:$port within $((tries / 10)) s"
}

# ------------------------------------------------------------------ upstream Redis
if [[ -n $UPSTREAM ]]; then
  UP_HOST=${UPSTREAM%:*}; UP_PORT=${UPSTREAM##*:}
  UP_HOST=${UP_HOST#[}; UP_HOST=${UP_HOST%]}
  [[ -n $UP_HOST && $UP_PORT =~ ^[0-9]+$ && $UPSTREAM == *:* ]] || die "--upstream wants HOST:PORT, got '$UPSTREAM'"
  log "using Redis at $UPSTREAM"
  wait_ping "upstream Redis" "" "$UP_HOST" "$UP_PORT" 20
  REDIS_PID=""
else
  UP_HOST=127.0.0.1; UP_PORT=$REDIS_PORT
  log "starting redis-server on 127.0.0.1:$REDIS_PORT ($("$REDIS_SERVER" --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'))"
  start_bg redis-server "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize no --maxclients 10000 --dir "$WORK"
  REDIS_PID=$LAST_PID
  wait_ping redis-server "$REDIS_PID" 127.0.0.1 "$REDIS_PORT" 100
fi
UPSTREAM_ADDR=$UP_HOST:$UP_PORT
[[ $UP_HOST == *:* ]] && UPSTREAM_ADDR="[$UP_HOST]:$UP_PORT"

# ------------------------------------------------------------------ respipe
PROXY_CMD=("$BIN" --listen "127.0.0.1:$PROXY_PORT" --upstream "$UPSTREAM_ADDR"
  --metrics-listen "127.0.0.1:$METRICS_PORT" "${EXTRA_ARGS[@]}")
log "starting respipe on 127.0.0.1:$PROXY_PORT in front of $UPSTREAM_ADDR: ${PROXY_CMD[*]}"
start_bg respipe "${PROXY_CMD[@]}"
PROXY_PID=$LAST_PID
PROXY_IDX=$((${#PIDS[@]} - 1))
wait_ping respipe "$PROXY_PID" 127.0.0.1 "$PROXY_PORT" 300
readyz=$(python3 -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except Exception as e:
    print(getattr(e, "code", None) or type(e).__name__)
' "http://127.0.0.1:$METRICS_PORT/readyz")
[[ $readyz == 200 ]] || log "warning: GET /readyz on 127.0.0.1:$METRICS_PORT answered '$readyz', not 200"

# ------------------------------------------------------------------ runs
# The upstream's counters as "commands reads cpu_seconds" (cpu = used_cpu_user + used_cpu_sys of
# redis-server). Our own INFO adds to the next delta one command and two reads (its request and the
# EOF of its close); run_one subtracts them.
redis_counts() {
  timeout 5 "$REDIS_CLI" -h "$UP_HOST" -p "$UP_PORT" INFO all | tr -d '\r' | awk -F: '
    $1=="total_commands_processed"{c=$2} $1=="total_reads_processed"{r=$2}
    $1=="used_cpu_user"{u=$2} $1=="used_cpu_sys"{y=$2}
    END{if (c == "" || r == "") exit 1; printf "%d %d %.6f\n", c, r, u + y}'
}

RESULTS=$WORK/results.tsv   # round target test clients requests rc rps p50 p99 cmds reads cpu_s
FAILED=()
run_one() { # round target host port test clients requests
  local round=$1 target=$2 host=$3 port=$4 test=$5 c=$6 n=$7
  local tag="$target-$test-c$c-r$round" rc=0 before after line
  local up=${test^^}
  local of=""; (( ROUNDS > 1 )) && of=", round $round/$ROUNDS"
  log "c=$c $target $up ($n requests$of)…"
  before=$(redis_counts) || { FAILED+=("$tag: cannot read INFO stats of the upstream"); return 0; }
  timeout "$RUN_TIMEOUT" "$REDIS_BENCHMARK" -h "$host" -p "$port" -c "$c" -n "$n" -t "$test" \
    -r "$KEYSPACE" -d "$DATASIZE" --csv >"$WORK/$tag.csv" 2>"$WORK/$tag.err" || rc=$?
  after=$(redis_counts) || { FAILED+=("$tag: cannot read INFO stats of the upstream"); return 0; }
  # the last CSV row: "SET","rps","avg","min","p50","p95","p99","max"
  line=$(grep -v '^"test"' "$WORK/$tag.csv" | tail -n 1 | tr -d '"') || true
  local t="" rps="" avg="" mn="" p50="" p95="" p99="" mx=""
  IFS=, read -r t rps avg mn p50 p95 p99 mx <<<"$line" || true
  local cmds reads cpu
  read -r cmds reads cpu < <(awk -v a="$before" -v b="$after" 'BEGIN{
    split(a, x, " "); split(b, y, " "); printf "%d %d %.6f\n", y[1] - x[1] - 1, y[2] - x[2] - 2, y[3] - x[3] }')
  if [[ $rc == 124 ]]; then
    FAILED+=("$tag: redis-benchmark did not finish within ${RUN_TIMEOUT} s")
  elif [[ $rc != 0 || -z $rps ]]; then
    FAILED+=("$tag: redis-benchmark failed (exit $rc): $(tail -n 3 "$WORK/$tag.err" | tr '\r\n' '  ')")
    [[ $rc != 0 ]] || rc=1
  elif (( cmds < n )); then
    # Every request must reach Redis; fewer commands than requests means some were lost.
    FAILED+=("$tag: Redis processed only $cmds commands for $n requests")
    rc=1
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$up" "$c" "$n" "$rc" \
    "${rps:-NA}" "${p50:-NA}" "${p99:-NA}" "$cmds" "$reads" "$cpu" >>"$RESULTS"
  if [[ -n $rps ]]; then
    log "    rps=$rps p50=${p50} ms p99=${p99} ms; Redis: $cmds commands in $reads reads, ${cpu} s CPU"
  fi
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    show_log respipe; die "respipe exited during $tag"
  fi
  if [[ -n $REDIS_PID ]] && ! kill -0 "$REDIS_PID" 2>/dev/null; then
    show_log redis-server; die "redis-server exited during $tag"
  fi
}

# Fill the keyspace so GET hits, and warm both paths up (connections, caches, page faults).
log "prefilling $KEYSPACE keys and warming up…"
timeout "$RUN_TIMEOUT" "$REDIS_BENCHMARK" -h "$UP_HOST" -p "$UP_PORT" -t set -n $((KEYSPACE * 2)) \
  -r "$KEYSPACE" -d "$DATASIZE" -P 16 -c 20 --csv >/dev/null 2>"$WORK/prefill.err" \
  || { cat "$WORK/prefill.err" >&2; die "prefilling the upstream failed"; }
for target in "$UP_HOST $UP_PORT" "127.0.0.1 $PROXY_PORT"; do
  read -r host port <<<"$target"
  timeout "$RUN_TIMEOUT" "$REDIS_BENCHMARK" -h "$host" -p "$port" -t get -n 10000 -r "$KEYSPACE" \
    -d "$DATASIZE" -c 20 --csv >/dev/null 2>"$WORK/warmup.err" \
    || { cat "$WORK/warmup.err" >&2; show_log respipe; die "warm-up against $host:$port failed"; }
done

T0=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
  for c in $CLIENTS; do
    n=$REQ; (( c == 1 )) && n=$REQ_C1
    for test in $TESTS; do
      # alternate which target goes first, so slow drift of the machine favours neither
      if (( r % 2 == 1 )); then
        run_one "$r" direct "$UP_HOST" "$UP_PORT" "$test" "$c" "$n"
        run_one "$r" respipe 127.0.0.1 "$PROXY_PORT" "$test" "$c" "$n"
      else
        run_one "$r" respipe 127.0.0.1 "$PROXY_PORT" "$test" "$c" "$n"
        run_one "$r" direct "$UP_HOST" "$UP_PORT" "$test" "$c" "$n"
      fi
    done
  done
done
log "runs took $((SECONDS - T0)) s"

# ------------------------------------------------------------------ stop respipe (graceful)
log "stopping respipe with SIGTERM…"
stop_pid "$PROXY_PID" respipe
PIDS[$PROXY_IDX]=""
if [[ $STOP_RC != 0 ]]; then
  show_log respipe
  FAILED+=("respipe exited with status $STOP_RC after SIGTERM (expected 0)")
fi

# ------------------------------------------------------------------ report
python3 - "$RESULTS" "$ROUNDS" "$REQ" "$REQ_C1" "$UPSTREAM_ADDR" <<'EOF'
import csv, statistics, sys

path, rounds, req, req_c1, upstream = sys.argv[1:6]
rows = list(csv.reader(open(path), delimiter="\t"))
runs = {}  # (test, clients, target) -> list of rows, in run order
order = []
for rnd, target, test, c, n, rc, rps, p50, p99, cmds, reads, cpu in rows:
    key = (test, int(c), target)
    if key not in runs:
        runs[key] = []
        order.append(key)
    runs[key].append(dict(rc=int(rc), rps=rps, p50=p50, p99=p99, cmds=int(cmds), reads=int(reads),
                          cpu=float(cpu)))

def med(vals):
    vals = [float(v) for v in vals if v not in ("", "NA")]
    return statistics.median(vals) if vals else None

def fmt(v, spec):
    return "FAILED" if v is None else format(v, spec)

what = "median of %s rounds" % rounds if int(rounds) > 1 else "one run each"
at_c1 = f" ({req_c1} at 1 client)" if any(c == 1 for _, c, _ in order) else ""
print(f"redis-benchmark -d 3 -r 100000, {req} requests per run{at_c1}, {what}; "
      f"upstream Redis {upstream}. cmds/read: commands Redis processed per read syscall; "
      f"Redis µs/cmd: redis-server CPU time (user + sys) per command.")
print()
print("| test | clients | target | rps | p50 ms | p99 ms | cmds/read | Redis µs/cmd |")
print("|---|--:|---|--:|--:|--:|--:|--:|")
summary = {}
for key in order:
    test, c, target = key
    ok = [r for r in runs[key] if r["rc"] == 0]
    rps, p50, p99 = med(r["rps"] for r in ok), med(r["p50"] for r in ok), med(r["p99"] for r in ok)
    cpr = med(r["cmds"] / r["reads"] for r in ok if r["reads"] > 0)
    us = med(r["cpu"] * 1e6 / r["cmds"] for r in ok if r["cmds"] > 0)
    summary[key] = rps
    print(f"| {test} | {c} | {target} | {fmt(rps, ',.0f')} | {fmt(p50, '.3f')} | {fmt(p99, '.3f')} "
          f"| {fmt(cpr, '.1f')} | {fmt(us, '.2f')} |")
print()
seen = set()
for test, c, _ in order:
    if (test, c) in seen:
        continue
    seen.add((test, c))
    d, p = summary.get((test, c, "direct")), summary.get((test, c, "respipe"))
    ratio = f"{p / d:.2f}" if d and p else "n/a (a run failed)"
    print(f"- {test} c={c}: respipe/direct rps = {ratio}")
EOF

if [[ ${#FAILED[@]} -gt 0 ]]; then
  log "FAILED: ${#FAILED[@]} problem(s):"
  for f in "${FAILED[@]}"; do printf '    %s\n' "$f" >&2; done
  exit 1
fi
log "done: every run succeeded"
