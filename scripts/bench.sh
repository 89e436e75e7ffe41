#!/usr/bin/env bash
# respipe's benchmark entry point: builds the release binary and runs the shared side-by-side
# harness (../shared/bench/run.sh: direct Redis vs twemproxy vs respipe, interleaved round by round),
# then writes a Markdown report with respipe's ratios and an SVG chart of throughput and Redis CPU
# against concurrency. With --workers "1 2" it runs one respipe per worker count in the same rounds and
# reports them side by side with their ratios to the first; --cpus places Redis, the proxies and the
# load generator on chosen CPUs. With --shards N it runs scripts/bench_shards.py instead: N redis-server shards
# behind respipe's sharded mode and behind twemproxy's equivalent ketama pool, side by side. With
# --cluster it runs scripts/bench_cluster.py: a 3-primary Redis Cluster, respipe in cluster mode beside
# redis-benchmark --cluster straight at the primaries.
#
# Needs: redis-server, redis-cli, redis-benchmark (Debian: redis-server redis-tools), nutcracker
# (twemproxy), python3, taskset for --pin (util-linux), cargo. As root with apt-get it installs the
# missing ones itself; otherwise:  sudo apt-get install -y redis-server redis-tools nutcracker
#
# Progress (the harness's lines) goes to stderr; at the end the report's summary is printed on stdout.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/bench.sh [options] [-- extra run.sh options]
       scripts/bench.sh --shards N [options] [-- extra bench_shards.py options]
       scripts/bench.sh --cluster [options] [-- extra bench_cluster.py options]

  --quick             short run: 2 rounds, clients "1 50 200", GET only, no -P 16 ceiling
                      (about 2 minutes); explicit options below still win
  --rounds N          rounds (harness default 4); --runs N is the same
  --clients "LIST"    concurrencies (harness default "1 50 200 1000")
  --tests "LIST"      redis-benchmark tests (harness default "set get")
  --pin               Redis on CPU 0, proxies + load generator on CPU 1 (proxy CPU efficiency)
  --cpus "LAYOUT"     a core layout (implies --pin): "redis=LIST proxy=LIST load=LIST", each LIST
                      as taskset -c takes it (0 | 1-4 | 1,3,5-7); proxy= (or respipe=) holds every
                      proxy (each respipe and twemproxy), load= redis-benchmark; an omitted key keeps
                      --pin's default (redis=0 load=1 proxy=the load CPUs)
  --workers "LIST"    one respipe per worker count (N or auto), all in the same rounds: targets
                      respipe-w1, respipe-w2, ...; the report puts them side by side with their
                      ratios to the first in the list (default: one respipe, named respipe, with
                      the binary's default workers)
  --bench-threads N   redis-benchmark --threads N (default: single-threaded), for a load generator
                      that needs more than one core to saturate several workers
  --out DIR           output dir (default target/bench/<timestamp>)
  --label TEXT        free text for the report and chart titles
  --max-other CORES   drop runs during which other processes kept more than CORES cores busy
                      (default 0.35, the harness's; negative keeps every run, e.g. on a shared box)
  --respipe-args "A"  extra respipe flags, e.g. "--pool-size 2 --batch-window-us 0"
  --no-build          do not run cargo build --release (use the existing target/release/respipe)
  --shards N          the sharded comparison instead (see below)
  --cluster           the Redis Cluster comparison instead (see below)
  -h, --help

Anything after `--` goes to ../shared/bench/run.sh as is (see its --help), e.g. -- --requests 300000

Workers (--workers): the cost of splitting the batches, in one invocation, e.g.
  scripts/bench.sh --workers "1 2" --clients "200 1000"          # workers = 2 against workers = 1
  scripts/bench.sh --workers "1 2" --clients "200 1000" --pin    # the same, proxies on one CPU
On a larger machine, give each part its own cores so that Redis, not the load generator, ends up
the bottleneck (workers = auto is one per CPU of the proxy= list):
  scripts/bench.sh --cpus "redis=0 proxy=1-4 load=5-7" --bench-threads 3 --workers "1 2 4"
--workers, --cpus and --bench-threads are for this single-Redis run, not --shards or --cluster.
One report of two invocations (medians over both, ratios paired within each round):
  scripts/bench_chart.py --proxy respipe-w1 --proxy respipe-w2 --svg DIR/chart.svg \
    --report DIR/report.md OUT1/harness OUT2/harness

Outputs in --out: report.md (respipe vs twemproxy vs direct, the harness report embedded),
chart.svg, summary.tsv and runs.tsv (the harness's), harness/ (everything the harness wrote:
logs, raw redis-benchmark output).
Env: RESPIPE_BIN=PATH use this binary (implies --no-build); BENCH_HARNESS=PATH another run.sh.

Two builds side by side (the single-server regression check), both in the same rounds:
  RESPIPE_BIN=new/respipe scripts/bench.sh --pin -- \
    --proxy 'old/respipe --listen {listen} --upstream {upstream}' --proxy-name old

Sharded (--shards N): N redis-server shards on loopback, respipe (upstream kind "shards", ketama,
fnv1a_64, one server per shard, weight 1) against twemproxy with the same ketama pool
(server_connections 1), interleaved round by round, by scripts/bench_shards.py (the shared harness
starts only one Redis). GET and SET from non-pipelined clients, then MGET of 100 prefilled keys
spread over the shards. --rounds, --clients, --tests, --pin, --out, --label and --respipe-args
apply (defaults: 3 rounds, clients "50 200 1000", tests "set get"; --quick: 2 rounds, clients
"50 200", GET only). Anything after `--` goes to bench_shards.py (see its --help), e.g.
  scripts/bench.sh --shards 3 --pin --rounds 2 --clients "200 1000" -- --mget-clients "50 200"
  scripts/bench.sh --shards 3 -- --proxy 'old=old/respipe --config {config} --listen {listen}'
Outputs in --out: report.md (rps, p50, proxy CPU per 100k, commands per Redis read per shard,
ratios to twemproxy), runs.tsv, the configs and every process's log. One report of two
invocations: scripts/bench_shards.py --pool DIR1 DIR2 [--out DIR]

Cluster (--cluster): a Redis Cluster of 3 primaries on loopback (../shared/bench/cluster.sh; env
BENCH_CLUSTER=PATH for another copy) and respipe in cluster mode (--upstream redis-cluster://the
primaries), by scripts/bench_cluster.py. Per round: GET and SET with random keys over all slots
(-r 1000000), non-pipelined, `redis-benchmark --cluster` straight at the primaries (the ceiling)
vs plain redis-benchmark through respipe; MGET of 50 fixed keys spread over all slots, a single
redis-server holding the same keys (the no-cluster ceiling) vs respipe; then SET at 200 clients
through respipe while slots move between the primaries and back (p99, client-visible errors).
--rounds, --clients, --tests, --pin, --out, --label and --respipe-args apply (defaults: 3 rounds,
clients "50 200 1000", tests "set get"; --quick: 1 round, clients "50 200", GET only, one move).
Anything after `--` goes to bench_cluster.py (see its --help), e.g.
  scripts/bench.sh --cluster --runs 2 -- --mget-clients "50 200" --migrations 6
Outputs in --out: report.md (rps, p50, p99, Redis CPU per 100k summed over the primaries, respipe
CPU per 100k, commands per read per primary, ratios to the ceilings; the migration table),
runs.tsv, migration.tsv and every process's log. One report of two invocations:
scripts/bench_cluster.py --pool DIR1 DIR2 [--out DIR]
EOF
}

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || { echo "bench: $1 needs a value" >&2; usage >&2; exit 2; }; }

ROUNDS="" CLIENTS="" TESTS="" PIN=0 QUICK=0 OUT="" LABEL="" RESPIPE_ARGS="" BUILD=1 SHARDS="" CLUSTER=0 MAX_OTHER=""
CPUS="" WORKERS="" BENCH_THREADS=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift;;
    --rounds|--runs) need_arg "$@"; ROUNDS=$2; shift 2;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2;;
    --tests) need_arg "$@"; TESTS=$2; shift 2;;
    --pin) PIN=1; shift;;
    --cpus) need_arg "$@"; CPUS=$2; PIN=1; shift 2;;
    --workers) need_arg "$@"; WORKERS=$2; shift 2;;
    --bench-threads) need_arg "$@"; BENCH_THREADS=$2; shift 2;;
    --out) need_arg "$@"; OUT=$2; shift 2;;
    --label) need_arg "$@"; LABEL=$2; shift 2;;
    --max-other) need_arg "$@"; MAX_OTHER=$2; shift 2;;
    --respipe-args) need_arg "$@"; RESPIPE_ARGS=$2; shift 2;;
    --no-build) BUILD=0; shift;;
    --shards) need_arg "$@"; SHARDS=$2; shift 2;;
    --cluster) CLUSTER=1; shift;;
    -h|--help) usage; exit 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "bench: unknown option: $1" >&2; usage >&2; exit 2;;
  esac
done
[[ -z $SHARDS || $CLUSTER == 0 ]] || die "--shards and --cluster are two different benchmarks: pick one"
if [[ $QUICK == 1 && $CLUSTER == 1 ]]; then
  ROUNDS=${ROUNDS:-1}; CLIENTS=${CLIENTS:-50 200}; TESTS=${TESTS:-get}
  EXTRA=(--migrations 1 "${EXTRA[@]}")
elif [[ $QUICK == 1 && -n $SHARDS ]]; then
  ROUNDS=${ROUNDS:-2}; CLIENTS=${CLIENTS:-50 200}; TESTS=${TESTS:-get}
  EXTRA=(--mget-clients 50 "${EXTRA[@]}")
elif [[ $QUICK == 1 ]]; then
  ROUNDS=${ROUNDS:-2}; CLIENTS=${CLIENTS:-1 50 200}; TESTS=${TESTS:-get}
fi
TESTS=${TESTS//,/ }; CLIENTS=${CLIENTS//,/ }
for v in $ROUNDS $CLIENTS $SHARDS; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "not a positive number: '$v'"
done
[[ -z $MAX_OTHER || $MAX_OTHER =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || die "--max-other: not a number: '$MAX_OTHER'"
[[ -z $MAX_OTHER || ( -z $SHARDS && $CLUSTER == 0 ) ]] \
  || die "--max-other is for the harness (--shards and --cluster keep every run, noise shown)"
MODE=harness
[[ -z $SHARDS ]] || MODE=shards
[[ $CLUSTER == 0 ]] || MODE=cluster
[[ $MODE == harness || -z $WORKERS$CPUS$BENCH_THREADS ]] \
  || die "--workers, --cpus and --bench-threads are for the single-Redis harness, not --shards or --cluster"

# --workers: the worker counts, one respipe target each
WLIST=()
if [[ -n $WORKERS ]]; then
  read -ra ws <<<"${WORKERS//,/ }"
  [[ ${#ws[@]} -gt 0 ]] || die "--workers: no worker count in '$WORKERS'"
  for w in "${ws[@]}"; do
    [[ $w =~ ^([1-9][0-9]*|auto)$ ]] || die "--workers: not a positive number or auto: '$w'"
    [[ " ${WLIST[*]} " != *" $w "* ]] || die "--workers: $w is in the list twice"
    WLIST+=("$w")
  done
  [[ " $RESPIPE_ARGS" != *" --workers"* ]] || die "--workers sets each respipe's workers: leave them out of --respipe-args"
fi
[[ -z $BENCH_THREADS || $BENCH_THREADS =~ ^[1-9][0-9]*$ ]] || die "--bench-threads: not a positive number: '$BENCH_THREADS'"

# --cpus: the core layout, checked against the CPUs this process may run on
cpu_set() { # cpu_set LIST: CPU_SET=(each CPU of a taskset -c list such as 0,2-4)
  local part a b
  local -a parts
  CPU_SET=()
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    a=$((10#${part%-*})) b=$((10#${part#*-}))
    ((a <= b)) || die "--cpus: '$part' is not a range (low-high)"
    for ((; a <= b; a++)); do CPU_SET+=("$a"); done
  done
}
REDIS_CPUS="" PROXY_CPUS="" LOAD_CPUS=""
if [[ -n $CPUS ]]; then
  allowed=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status 2>/dev/null || true)
  allowed_set=""
  if [[ -n $allowed ]]; then cpu_set "$allowed"; allowed_set=" ${CPU_SET[*]} "; fi
  read -ra items <<<"$CPUS"
  for it in "${items[@]}"; do
    key=${it%%=*} val=${it#*=}
    [[ $it == *=* && $val =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] \
      || die "--cpus: '$it' is not KEY=LIST, a LIST as taskset -c takes it (0, 1-4, 1,3,5-7)"
    cpu_set "$val"
    for c in "${CPU_SET[@]}"; do
      [[ -z $allowed_set || $allowed_set == *" $c "* ]] || die "--cpus: CPU $c ($it) is not one this process may run on ($allowed)"
    done
    case $key in
      redis) var=REDIS_CPUS;;
      proxy|respipe) var=PROXY_CPUS;;
      load) var=LOAD_CPUS;;
      *) die "--cpus: unknown key '$key' in '$it' (redis=, proxy= or its alias respipe=, load=)";;
    esac
    name=${var%_CPUS}
    [[ -z ${!var} ]] || die "--cpus: '$it': the ${name,,} CPUs are given twice (respipe= is proxy=)"
    printf -v "$var" '%s' "$val"
  done
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS=${BENCH_HARNESS:-$ROOT/../shared/bench/run.sh}
[[ $MODE != harness || -x $HARNESS ]] || die "the shared benchmark harness is not at $HARNESS (expected ../shared/bench/run.sh
       next to the repository; set BENCH_HARNESS=PATH to use another copy)"
[[ $MODE != harness ]] || HARNESS=$(cd "$(dirname "$HARNESS")" && pwd)/$(basename "$HARNESS")
CLUSTER_SH=${BENCH_CLUSTER:-$ROOT/../shared/bench/cluster.sh}
[[ $MODE != cluster || -f $CLUSTER_SH ]] || die "the cluster starter is not at $CLUSTER_SH (expected
       ../shared/bench/cluster.sh next to the repository; set BENCH_CLUSTER=PATH to use another copy)"

# ------------------------------------------------------------------ tools
# binary -> Debian package
declare -A PKG=([redis-server]=redis-server [redis-cli]=redis-tools [redis-benchmark]=redis-tools
  [nutcracker]=nutcracker [python3]=python3 [taskset]=util-linux [setsid]=util-linux [ss]=iproute2)
tools=("${REDIS_SERVER:-redis-server}" "${REDIS_CLI:-redis-cli}" "${REDIS_BENCHMARK:-redis-benchmark}"
  "${PYTHON:-python3}")
if [[ $MODE == cluster ]]; then tools+=(ss setsid)
elif [[ " ${EXTRA[*]} " != *" --no-nutcracker "* ]]; then tools+=("${NUTCRACKER:-nutcracker}"); fi
[[ $PIN == 0 ]] || tools+=(taskset)
missing=() pkgs=()
for b in "${tools[@]}"; do
  command -v "$b" >/dev/null && continue
  missing+=("$b")
  p=${PKG[$(basename "$b")]:-}
  [[ -n $p && " ${pkgs[*]} " != *" $p "* ]] && pkgs+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && [[ ${#pkgs[@]} -gt 0 ]]; then
    log "missing ${missing[*]}: installing ${pkgs[*]} with apt-get…"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q "${pkgs[@]}"; } >&2 || die "apt-get install ${pkgs[*]} failed"
    for b in "${missing[@]}"; do command -v "$b" >/dev/null || die "still missing after install: $b"; done
  else
    log "missing ${missing[*]}. Install them with:"
    echo "    sudo apt-get update && sudo apt-get install -y redis-server redis-tools nutcracker python3" >&2
    exit 1
  fi
fi

# ------------------------------------------------------------------ build
if [[ -n ${RESPIPE_BIN:-} ]]; then
  BIN=$RESPIPE_BIN
  log "using RESPIPE_BIN=$BIN (not building)"
else
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || TARGET_DIR=$ROOT/target
  if [[ $BUILD == 1 ]]; then
    log "cargo build --release (the first build takes a few minutes)…"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  fi
  BIN=$TARGET_DIR/release/respipe
fi
[[ -x $BIN ]] || die "respipe binary not found or not executable: $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

OUT=${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
label=${LABEL:-respipe $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')}
if [[ -n $CPUS ]]; then label+=", pinned: $CPUS"; elif [[ $PIN == 1 ]]; then label+=", pinned"; fi

# ------------------------------------------------------------------ sharded, cluster: bench_*.py
if [[ $MODE != harness ]]; then
  if [[ $MODE == cluster ]]; then
    printf -v proxy_cmd 'respipe=%q --upstream {upstream} --listen {listen}' "$BIN"
    args=(--cluster-script "$CLUSTER_SH"); what="cluster: 3 primaries"
  else
    printf -v proxy_cmd 'respipe=%q --config {config} --listen {listen}' "$BIN"
    args=(--shards "$SHARDS"); what="sharded: $SHARDS shards"
  fi
  [[ -z $RESPIPE_ARGS ]] || proxy_cmd+=" $RESPIPE_ARGS"
  args+=(--proxy "$proxy_cmd" --out "$OUT" --label "$label")
  [[ -z $ROUNDS ]] || args+=(--rounds "$ROUNDS")
  [[ -z $CLIENTS ]] || args+=(--clients "$CLIENTS")
  [[ -z $TESTS ]] || args+=(--tests "$TESTS")
  [[ $PIN == 0 ]] || args+=(--pin)
  args+=("${EXTRA[@]}")
  log "$what, proxy under test: ${proxy_cmd#respipe=}"
  log "output: $OUT"
  T0=$SECONDS
  rc=0
  # in the background, so that a TERM/INT/HUP to this script reaches it (it then stops all it started)
  python3 "$ROOT/scripts/bench_$MODE.py" "${args[@]}" &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done  # a signal cut the wait short
  trap - TERM INT HUP
  if [[ $rc == 0 ]]; then
    log "took $((SECONDS - T0)) s; wrote $OUT/report.md, $OUT/runs.tsv (logs and configs: $OUT)"
  else
    log "bench_$MODE.py exited with status $rc after $((SECONDS - T0)) s; see $OUT"
  fi
  exit "$rc"
fi

# ------------------------------------------------------------------ run the harness
HOUT=$OUT/harness
[[ ! -e $HOUT ]] || die "$HOUT already exists: pick another --out"

printf -v proxy_cmd '%q --listen {listen} --upstream {upstream}' "$BIN"
[[ -z $RESPIPE_ARGS ]] || proxy_cmd+=" $RESPIPE_ARGS"
args=() names=()
if [[ ${#WLIST[@]} -eq 0 ]]; then
  args+=(--proxy "$proxy_cmd" --proxy-name respipe); names+=(respipe)
else
  for w in "${WLIST[@]}"; do
    args+=(--proxy "$proxy_cmd --workers $w" --proxy-name "respipe-w$w"); names+=("respipe-w$w")
  done
fi
args+=(--out "$HOUT" --label "$label")
[[ -z $ROUNDS ]] || args+=(--rounds "$ROUNDS")
[[ -z $CLIENTS ]] || args+=(--clients "$CLIENTS")
[[ -z $TESTS ]] || args+=(--tests "$TESTS")
[[ $PIN == 0 ]] || args+=(--pin)
[[ -z $REDIS_CPUS ]] || args+=(--redis-cpus "$REDIS_CPUS")
[[ -z $PROXY_CPUS ]] || args+=(--proxy-cpus "$PROXY_CPUS")
[[ -z $LOAD_CPUS ]] || args+=(--other-cpus "$LOAD_CPUS")
[[ -z $BENCH_THREADS ]] || args+=(--bench-threads "$BENCH_THREADS")
[[ $QUICK == 0 ]] || args+=(--no-ceiling)
args+=("${EXTRA[@]}")

log "harness: $HARNESS"
if [[ ${#WLIST[@]} -eq 0 ]]; then
  log "proxy under test: $proxy_cmd"
else
  log "proxies under test: ${names[*]}: $proxy_cmd --workers N"
fi
if [[ $PIN == 1 && ${#WLIST[@]} -gt 0 ]]; then
  cpu_set "${PROXY_CPUS:-${LOAD_CPUS:-1}}"
  for w in "${WLIST[@]}"; do
    [[ $w == auto || $w -le ${#CPU_SET[@]} ]] \
      || log "note: respipe-w$w runs $w workers on ${#CPU_SET[@]} proxy CPU(s): they take turns on a core"
  done
fi
log "output: $OUT"
T0=$SECONDS
rc=0
# The harness prints progress lines on stderr (passed through) and its report on stdout (kept in
# harness/report.md; not repeated here).
"$HARNESS" "${args[@]}" >"$OUT/harness-stdout.md" || rc=$?
[[ $rc == 0 ]] || log "the harness exited with status $rc"
[[ -s $HOUT/runs.tsv && $(wc -l <"$HOUT/runs.tsv") -gt 1 ]] || die "the harness wrote no runs (status $rc); see $HOUT"
log "harness took $((SECONDS - T0)) s"

# ------------------------------------------------------------------ report + chart
summarize=(python3 "$(dirname "$HARNESS")/summarize.py")
chart=(python3 "$ROOT/scripts/bench_chart.py")
if [[ -n $MAX_OTHER ]]; then
  summarize+=(--max-other "$MAX_OTHER"); chart+=(--max-other "$MAX_OTHER")
  rm -f "$HOUT/report.md"   # summarized again below with this threshold
fi
[[ -s $HOUT/report.md ]] || "${summarize[@]}" "$HOUT" >"$HOUT/report.md" || die "summarizing $HOUT failed"
for f in summary.tsv runs.tsv; do [[ ! -f $HOUT/$f ]] || cp "$HOUT/$f" "$OUT/$f"; done
for n in "${names[@]}"; do chart+=(--proxy "$n"); done
"${chart[@]}" --svg "$OUT/chart.svg" --report "$OUT/report.md" --title "$label" "$HOUT" \
  || die "bench_chart.py failed"
rm -f "$OUT/harness-stdout.md"

# the summary (everything before the embedded harness report) on stdout
sed '/^## The harness.s report/,$d' "$OUT/report.md"
log "wrote $OUT/report.md, $OUT/chart.svg, $OUT/summary.tsv, $OUT/runs.tsv (raw: $HOUT)"
exit "$rc"
