#!/usr/bin/env bash
# Real clients through respipe: starts a throwaway redis-server and respipe in front of it on free
# loopback ports, then runs redis-cli (-n, --user/--pass, -3, SUBSCRIBE, MONITOR) and redis-py (RESP2
# and RESP3: set/get, pipeline, WATCH transaction, pub/sub, BLPOP unblocked by another client's LPUSH,
# CLIENT SETNAME/GETNAME, db and ACL user) against respipe, checking results directly on Redis.
#
# Prints `ok NAME` or `FAIL NAME: why` per check and a final `N passed, M failed`; exits non-zero if
# anything failed. Every process it starts is stopped on exit, Ctrl-C included.
#
# Env: RESPIPE_BIN=PATH    use this binary instead of building target/debug/respipe
#      REDIS_SERVER / REDIS_CLI  override those binaries
#      PYTHON=PATH         a python3 that has (or may get) the `redis` package; without it a venv is
#                          made (once) in ${XDG_CACHE_HOME:-~/.cache}/respipe-check-clients-venv
set -euo pipefail

log() { echo "check-clients: $*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}

# ------------------------------------------------------------------ cleanup
WORK=""
PIDS=()
cleanup() {
  local pid i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
    for ((j = 0; j < 50; j++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for b in "$REDIS_SERVER" "$REDIS_CLI" python3 timeout; do
  command -v "$b" >/dev/null || die "missing $b (apt-get install redis-server redis-tools python3)"
done

# ------------------------------------------------------------------ build
if [[ -n ${RESPIPE_BIN:-} ]]; then
  BIN=$RESPIPE_BIN
else
  log "building respipe…"
  (cd "$ROOT" && cargo build --quiet) || die "cargo build failed"
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') \
    || TARGET_DIR=$ROOT/target
  BIN=$TARGET_DIR/debug/respipe
fi
[[ -x $BIN ]] || die "respipe binary not found: $BIN"

# ------------------------------------------------------------------ redis-py
if [[ -n ${PYTHON:-} ]]; then
  PY=$PYTHON
elif python3 -c 'import redis' 2>/dev/null; then
  PY=python3
else
  VENV=${XDG_CACHE_HOME:-$HOME/.cache}/respipe-check-clients-venv
  if ! "$VENV/bin/python" -c 'import redis' 2>/dev/null; then
    log "installing redis-py into $VENV…"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/pip" install -q redis || die "pip install redis failed"
  fi
  PY=$VENV/bin/python
fi
"$PY" -c 'import redis' || die "$PY cannot import redis"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/respipe-clients.XXXXXX")
read -r RPORT PPORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')

start_bg() { # name cmd...
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  LAST_PID=$!
}
wait_ping() { # name pid port
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(timeout 2 "$REDIS_CLI" -p "$3" PING 2>/dev/null) == PONG ]] && return 0
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$WORK/$1.log" >&2; die "$1 exited"; }
    sleep 0.1
  done
  tail -n 20 "$WORK/$1.log" >&2
  die "$1 did not answer PING on port $3 within 10 s"
}

start_bg redis-server "$REDIS_SERVER" --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no --dir "$WORK"
wait_ping redis-server "$LAST_PID" "$RPORT"
start_bg respipe "$BIN" --listen "127.0.0.1:$PPORT" --upstream "127.0.0.1:$RPORT"
wait_ping respipe "$LAST_PID" "$PPORT"
log "redis-server on 127.0.0.1:$RPORT, respipe on 127.0.0.1:$PPORT"

PASSED=0
FAILED=0
ok() { echo "ok $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }
# expect NAME WANT GOT
expect() { if [[ $3 == "$2" ]]; then ok "$1"; else fail "$1" "wanted '$2', got '$3'"; fi; }
cli() { timeout 10 "$REDIS_CLI" -p "$PPORT" "$@" 2>&1; }
direct() { timeout 10 "$REDIS_CLI" -p "$RPORT" "$@" 2>&1; }
# wait_for FILE TEXT: poll FILE (up to 10 s) until it contains TEXT
wait_for() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ------------------------------------------------------------------ redis-cli
expect "redis-cli ping" PONG "$(cli PING)"
expect "redis-cli -n 2 set" OK "$(cli -n 2 SET clidb v2)"
expect "redis-cli -n 2 get" v2 "$(cli -n 2 GET clidb)"
expect "redis-cli -n 2 lands in db 2 on Redis" v2 "$(direct -n 2 GET clidb)"
expect "redis-cli -n 2 not in db 0" "" "$(direct -n 0 GET clidb)"

expect "acl user created directly" OK "$(direct ACL SETUSER app on '>pw' '~app:*' '+@all')"
expect "redis-cli --user --pass set" OK "$(cli --user app --pass pw --no-auth-warning SET app:cli 1)"
expect "redis-cli --user --pass whoami" app "$(cli --user app --pass pw --no-auth-warning ACL WHOAMI)"
out=$(cli --user app --pass pw --no-auth-warning SET other 1)
if [[ $out == NOPERM* ]]; then ok "redis-cli --user NOPERM"; else fail "redis-cli --user NOPERM" "got '$out'"; fi
out=$(cli --user app --pass bad --no-auth-warning PING)
if [[ $out == *WRONGPASS* ]]; then ok "redis-cli --pass wrong WRONGPASS"; else fail "redis-cli --pass wrong WRONGPASS" "got '$out'"; fi

expect "redis-cli -3 hset" 2 "$(cli -3 HSET h f1 v1 f2 v2)"
out=$(cli -3 HGETALL h | tr '\n' ' ')
expect "redis-cli -3 hgetall" "f1 v1 f2 v2 " "$out"

# SUBSCRIBE in the background, PUBLISH from another client.
start_bg sub timeout 10 "$REDIS_CLI" -p "$PPORT" SUBSCRIBE ch
SUB_PID=$LAST_PID
if wait_for "$WORK/sub.log" subscribe; then
  n=""
  for ((i = 0; i < 100; i++)); do
    n=$(cli PUBSUB NUMSUB ch | tail -n 1)
    [[ $n == 1 ]] && break
    sleep 0.1
  done
  expect "redis-cli pubsub numsub" 1 "$n"
  expect "redis-cli publish" 1 "$(cli PUBLISH ch hello)"
  if wait_for "$WORK/sub.log" hello && [[ $(tr '\n' ' ' <"$WORK/sub.log") == *"message ch hello"* ]]; then
    ok "redis-cli subscribe receives"
  else
    fail "redis-cli subscribe receives" "output: $(tr '\n' ' ' <"$WORK/sub.log")"
  fi
else
  fail "redis-cli subscribe" "no confirmation: $(tr '\n' ' ' <"$WORK/sub.log")"
fi
kill "$SUB_PID" 2>/dev/null || true

# MONITOR in the background, a command from another client.
start_bg mon timeout 10 "$REDIS_CLI" -p "$PPORT" MONITOR
MON_PID=$LAST_PID
if wait_for "$WORK/mon.log" OK; then
  cli SET mon 1 >/dev/null
  if wait_for "$WORK/mon.log" '"SET" "mon" "1"'; then
    ok "redis-cli monitor"
  else
    fail "redis-cli monitor" "output: $(tr '\n' ' ' <"$WORK/mon.log")"
  fi
else
  fail "redis-cli monitor" "no OK: $(tr '\n' ' ' <"$WORK/mon.log")"
fi
kill "$MON_PID" 2>/dev/null || true

# ------------------------------------------------------------------ redis-py
cat >"$WORK/check.py" <<'EOF'
import sys, threading, time
import redis

pport, rport = int(sys.argv[1]), int(sys.argv[2])
direct = redis.Redis(port=rport)


def check(name, fn):
    try:
        fn()
        print(f"ok {name}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)


def eq(got, want):
    if got != want:
        raise AssertionError(f"wanted {want!r}, got {got!r}")


def run(proto):
    tag = f"redis-py resp{proto}"
    kw = dict(port=pport, protocol=proto, socket_timeout=15)
    r = redis.Redis(**kw)
    other = redis.Redis(**kw)

    def set_get():
        eq(r.ping(), True)
        eq(r.set(f"py{proto}", "v"), True)
        eq(r.get(f"py{proto}"), b"v")
        eq(r.hset(f"h{proto}", mapping={"a": "1", "b": "2"}), 2)
        eq(r.hgetall(f"h{proto}"), {b"a": b"1", b"b": b"2"})
    check(f"{tag} set/get", set_get)

    def pipeline():
        p = r.pipeline(transaction=False)
        for i in range(100):
            p.set(f"p{proto}:{i}", i)
            p.get(f"p{proto}:{i}")
        res = p.execute()
        eq(res, [x for i in range(100) for x in (True, str(i).encode())])
    check(f"{tag} pipeline", pipeline)

    def transaction():
        key = f"w{proto}"
        r.set(key, 1)
        with r.pipeline() as p:
            p.watch(key)
            v = int(p.get(key))
            p.multi()
            p.set(key, v + 1)
            p.incr(key)
            eq(p.execute(), [True, 3])
        eq(r.get(key), b"3")
        # A conflict: another client changes the watched key.
        with r.pipeline() as p:
            p.watch(key)
            other.set(key, 100)
            p.multi()
            p.set(key, 0)
            try:
                p.execute()
                raise AssertionError("EXEC ran despite the WATCH conflict")
            except redis.WatchError:
                pass
        eq(r.get(key), b"100")
    check(f"{tag} transaction with watch", transaction)

    def pubsub():
        ps = r.pubsub()
        ps.subscribe(f"ch{proto}")
        m = ps.get_message(timeout=5)
        eq((m["type"], m["channel"]), ("subscribe", f"ch{proto}".encode()))
        eq(other.publish(f"ch{proto}", "hi"), 1)
        m = ps.get_message(timeout=5)
        if m is None:
            raise AssertionError("no message")
        eq((m["type"], m["data"]), ("message", b"hi"))
        ps.unsubscribe()
        ps.close()
    check(f"{tag} pubsub", pubsub)

    def blpop():
        q = f"q{proto}"
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("v", r.blpop([q], timeout=10)))
        t.start()
        deadline = time.time() + 10
        while int(direct.info("clients")["blocked_clients"]) != 1:
            if time.time() > deadline:
                raise AssertionError("BLPOP never blocked in Redis")
            time.sleep(0.05)
        # Other clients are not stalled meanwhile.
        for i in range(50):
            eq(other.set(f"nb{i}", i), True)
        eq(other.lpush(q, "x"), 1)
        t.join(15)
        eq(out.get("v"), (q.encode(), b"x") if proto == 2 else [q.encode(), b"x"])
    check(f"{tag} blpop + lpush", blpop)

    def names():
        a = redis.Redis(**kw)
        b = redis.Redis(**kw)
        eq(a.client_setname(f"alpha{proto}"), True)
        eq(b.client_setname(f"beta{proto}"), True)
        # redis-py itself decodes GETNAME to str in RESP2 and leaves bytes in RESP3.
        def name(c):
            n = c.client_getname()
            return n.decode() if isinstance(n, bytes) else n
        eq(name(a), f"alpha{proto}")
        eq(name(b), f"beta{proto}")
    check(f"{tag} client setname/getname", names)

    def no_name():
        eq(redis.Redis(**kw).client_getname(), None)
    check(f"{tag} client getname without a name", no_name)

    def db():
        c = redis.Redis(db=3, **kw)
        eq(c.set(f"db{proto}", "three"), True)
        eq(redis.Redis(port=rport, db=3).get(f"db{proto}"), b"three")
        eq(direct.get(f"db{proto}"), None)
    check(f"{tag} db=3", db)

    def acl():
        c = redis.Redis(username="app", password="pw", **kw)
        eq(c.set(f"app:py{proto}", 1), True)
        try:
            c.set(f"notapp{proto}", 1)
            raise AssertionError("SET outside app:* allowed")
        except redis.exceptions.NoPermissionError:
            pass
        try:
            redis.Redis(username="app", password="bad", **kw).ping()
            raise AssertionError("wrong password accepted")
        except redis.exceptions.AuthenticationError:
            pass
    check(f"{tag} acl user", acl)


run(2)
run(3)
EOF
while IFS= read -r line; do
  case $line in
    "ok "*) ok "${line#ok }" ;;
    "FAIL "*) rest=${line#FAIL }; fail "${rest%%: *}" "${rest#*: }" ;;
    "exit 0") ;;
    "exit "*) fail "redis-py script" "$line" ;;
    *) echo "$line" ;;
  esac
done < <(timeout 180 "$PY" "$WORK/check.py" "$PPORT" "$RPORT" 2>&1; echo "exit $?")

kill -0 "${PIDS[1]}" 2>/dev/null && ok "respipe still running" || fail "respipe still running" "it exited"

echo "$PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
