#!/usr/bin/env python3
"""Sharded side-by-side benchmark: N redis-server shards behind twemproxy and behind respipe.

Usage: bench_shards.py --proxy NAME=CMD [--proxy NAME=CMD ...] [options]

Starts N redis-server on free loopback ports, twemproxy (nutcracker) with a ketama/fnv1a_64 pool
over them (server_connections 1, no ejection), and every proxy under test, then runs the same
redis-benchmark load against each target, interleaved round by round (the order rotates every
round, as ../shared/bench/run.sh does for one Redis, which cannot start several upstreams).

Targets:
  --proxy NAME=CMD      proxy under test, a command template (may be repeated). Placeholders:
                        {listen} (127.0.0.1:PORT), {listen_port}, {config} (respipe TOML of the
                        sharded pool), {yaml} (twemproxy's YAML of the same pool), {shard1}..{shardN}
                        (the shards' HOST:PORT), {host}. E.g.
                        'respipe=target/release/respipe --config {config} --listen {listen}'
                        'from-yaml=target/release/respipe --twemproxy {yaml} --listen {listen}'
  --no-nutcracker       do not run twemproxy (ratios are then to the first --proxy)
  --nc-mbuf BYTES       twemproxy -m mbuf size (default 16384)
  --ready-timeout S     seconds to wait for a proxy to answer PING (default 30)

Load (redis-benchmark, non-pipelined clients):
  --shards N            redis-server shards (default 3)
  --rounds N            rounds (default 3)
  --clients "LIST"      concurrencies for --tests (default "50 200 1000")
  --tests "LIST"        redis-benchmark -t tests (default "set get")
  --requests N          requests per run (default 150000; 30000 at 1 client)
  --keyspace N          redis-benchmark -r (default 100000; prefilled through twemproxy)
  --datasize N          value bytes (default 3)
  --mget-keys K         the MGET test: MGET of K prefilled keys spread over the shards
                        (default 100; 0 skips it)
  --mget-clients "LIST" concurrencies of the MGET test (default "50 200")
  --mget-requests N     MGETs per run (default 30000)
  --run-timeout S       kill one redis-benchmark run after S seconds (default 120)
  --quiet-pct P         before each run wait until the box's busy CPU (sampled over 0.2 s) is
                        <= P% of one core (default 30; 0 disables) but at most --quiet-wait S
                        seconds per run (default 3); each run records the CPU others used anyway

Placement:
  --pin                 shards on --redis-cpus (default 0), proxies and redis-benchmark on
                        --other-cpus (default 1), with taskset
  --base-port P         first loopback port to try (default 18379)

Output:
  --out DIR             runs.tsv (one row per run), report.md, meta.txt, configs and logs
  --label TEXT          free text for the report heading
  --pool DIR [DIR ...]  run nothing: one report of the runs of several invocations' --out dirs,
                        pooled (rounds numbered on; ratios still pair runs of the same round);
                        written to --out/report.md when --out is given, always printed

Per run: rps, p50 and p99 (redis-benchmark --csv); proxy CPU per 100k requests (utime+stime from
/proc/PID/stat); per shard the commands and reads Redis processed (INFO stats
total_commands_processed / total_reads_processed deltas, minus our INFO) and Redis CPU
(used_cpu_user + used_cpu_sys); redis-benchmark's CPU; the CPU everything else on the box used.
The report gives medians over rounds and, per round, each target's ratio to twemproxy's (median and
range over rounds). Python 3 standard library only.
"""
import argparse
import csv
import hashlib
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")
REDIS_BENCHMARK = os.environ.get("REDIS_BENCHMARK", "redis-benchmark")
NUTCRACKER = os.environ.get("NUTCRACKER", "nutcracker")
HOST = "127.0.0.1"
# runs.tsv columns, in order
COLUMNS = ["round", "target", "test", "clients", "requests", "rc", "rps", "p50_ms", "p99_ms", "wall_s",
           "proxy_cpu_s", "bench_cpu_s", "other_cpu_s", "redis_cpu_s", "shard_cmds", "shard_reads",
           "pre_noise_pct"]


def fail(msg):
    print(f"bench_shards: error: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def count(v):
    """argparse type: a number >= 0."""
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"not a number: {v!r}")
    return int(v)


def positive(v):
    """argparse type: a number >= 1."""
    n = count(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {v!r}")
    return n


def arg_parser(doc, prog, **defaults):
    """The options this benchmark shares with bench_cluster.py (each module doc lists them), with
    `defaults` overriding; the caller adds its own, then calls parse()."""

    def counts(v):
        return [positive(x) for x in v.replace(",", " ").split()]

    def proxy(v):
        name, sep, cmd = v.partition("=")
        if not sep or not name or not cmd:
            raise argparse.ArgumentTypeError(f"wants NAME=CMD, got {v!r}")
        return name, cmd

    usage = doc.split("\n")[2].removeprefix("Usage: ")
    p = argparse.ArgumentParser(prog=prog, add_help=False, usage=usage)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--proxy", dest="proxies", type=proxy, action="append", default=[])
    p.add_argument("--ready-timeout", type=positive, default=30)
    p.add_argument("--rounds", type=positive, default=3)
    p.add_argument("--clients", type=counts, default=[50, 200, 1000])
    p.add_argument("--tests", type=lambda v: v.replace(",", " ").split(), default=["set", "get"])
    p.add_argument("--requests", type=positive, default=150000)
    p.add_argument("--keyspace", type=positive, default=100000)
    p.add_argument("--datasize", type=positive, default=3)
    p.add_argument("--mget-keys", type=count, default=100)
    p.add_argument("--mget-clients", type=counts, default=[50, 200])
    p.add_argument("--mget-requests", type=positive, default=30000)
    p.add_argument("--run-timeout", type=positive, default=120)
    p.add_argument("--quiet-pct", type=count, default=30)
    p.add_argument("--quiet-wait", type=count, default=3)
    p.add_argument("--pin", action="store_true")
    p.add_argument("--redis-cpus", default="0")
    p.add_argument("--other-cpus", default="1")
    p.add_argument("--base-port", type=positive, default=18379)
    p.add_argument("--out")
    p.add_argument("--label", default="")
    p.add_argument("--pool", nargs="+", metavar="DIR")
    p.set_defaults(**defaults)
    return p


def parse(p, doc, argv):
    """The parsed options (a namespace); --help prints `doc` and exits."""
    o = p.parse_args(argv)
    if o.help:
        print(doc)
        sys.exit(0)
    return o


def parse_args(argv):
    """The options of the module doc (which is the --help text) into a dict."""
    p = arg_parser(__doc__, "bench_shards.py")
    p.add_argument("--no-nutcracker", dest="nutcracker", action="store_false")
    p.add_argument("--nc-mbuf", type=positive, default=16384)
    p.add_argument("--shards", type=positive, default=3)
    o = parse(p, __doc__, argv)
    if not o.proxies and not o.nutcracker and not o.pool:
        p.error("nothing to measure: give --proxy NAME=CMD")
    return vars(o)


class Procs:
    """Every process this run starts; stop() ends exactly those (their own sessions, by PID)."""

    def __init__(self, out):
        self.out = out
        self.started = []

    def start(self, name, argv, cpus):
        if cpus:
            argv = ["taskset", "-c", cpus] + argv  # taskset execs: the PID is the program's
        logf = open(os.path.join(self.out, f"{name}.log"), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
        logf.close()
        self.started.append((name, p))
        return p

    def stop(self):
        for _, p in self.started:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for _, p in self.started:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Ports:
    """Free loopback ports from a base upwards, never the same one twice."""

    def __init__(self, base):
        self.next = base

    def take(self):
        while self.next < 32768:
            p = self.next
            self.next += 1
            with socket.socket() as s:
                try:
                    s.bind((HOST, p))
                    return p
                except OSError:
                    continue
        fail("no free port below 32768")


class Resp:
    """A minimal RESP connection for PING, INFO, SET and the like (replies: simple, error, integer,
    bulk, array; integers come back as strings)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def call(self, *args):
        req = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            req += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(req)
        return self._reply()

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest.decode()
        raise RuntimeError(f"unexpected reply {line[:40]!r}")

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk


def wait_ping(port, proc, timeout, name, out):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            c = Resp(port, timeout=1.0)
            try:
                if c.call("PING") == "PONG":
                    return
            finally:
                c.close()
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    tail = open(os.path.join(out, f"{name}.log"), errors="replace").read()[-2000:]
    fail(f"{name} did not answer PING on port {port} within {timeout} s "
         f"({'exited ' + str(proc.returncode) if proc.poll() is not None else 'still running'}); log tail:\n{tail}")


def info_stats(conn):
    """(commands processed, reads processed, CPU seconds) of one Redis."""
    fields = {}
    for line in conn.call("INFO", "all").splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k] = v
    return (int(fields["total_commands_processed"]), int(fields["total_reads_processed"]),
            float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"]))


def proc_cpu(pid):
    """utime + stime of a process, in seconds (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def box_busy():
    """Busy CPU seconds of the whole machine (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def quiet_gate(pct, wait):
    """Wait (bounded) for a quiet box; returns the busy % of one core in the last 0.2 s sample."""
    deadline = time.monotonic() + wait
    while True:
        b0 = box_busy()
        time.sleep(0.2)
        noise = (box_busy() - b0) / 0.2 * 100
        if pct <= 0 or noise <= pct or time.monotonic() >= deadline:
            return noise


def write_configs(out, shard_ports, nc_port):
    """The same pool twice: respipe's TOML and twemproxy's YAML (ketama, fnv1a_64, weight 1, servers
    named shard1..shardN so the ring does not depend on the ports). Returns their paths."""
    names = [f"shard{i + 1}" for i in range(len(shard_ports))]
    toml = os.path.join(out, "respipe-shards.toml")
    with open(toml, "w") as f:
        f.write("# The sharded pool under test (the same ring as nutcracker.yml)\n"
                '[upstream]\nkind = "shards"\nhash = "fnv1a_64"\ndistribution = "ketama"\n')
        for name, port in zip(names, shard_ports):
            f.write(f'\n[[upstream.servers]]\naddress = "{HOST}:{port}"\nweight = 1\nname = "{name}"\n')
    yaml = os.path.join(out, "nutcracker.yml")
    servers = "".join(f"   - {HOST}:{p}:1 {n}\n" for p, n in zip(shard_ports, names))
    with open(yaml, "w") as f:
        f.write(f"""shards:
  listen: {HOST}:{nc_port}
  redis: true
  hash: fnv1a_64
  distribution: ketama
  preconnect: true
  auto_eject_hosts: false
  # every client's requests multiplexed on one connection per server
  server_connections: 1
  timeout: 10000
  backlog: 1024
  servers:
{servers}""")
    return toml, yaml


def bench_argv(o, port, test, clients, requests, mget_keys):
    argv = [REDIS_BENCHMARK, "-h", HOST, "-p", str(port), "-c", str(clients), "-n", str(requests),
            "-P", "1", "--csv"]
    if o["pin"]:
        argv = ["taskset", "-c", o["other_cpus"]] + argv
    if test == "mget":
        return argv + ["MGET"] + mget_keys
    return argv + ["-t", test, "-r", str(o["keyspace"]), "-d", str(o["datasize"])]


def run_bench(argv, timeout):
    """One redis-benchmark run: (rc, rps, p50 ms, p99 ms, stderr) from its --csv output (the last
    row: one test per run); rc is 124 on timeout and non-zero when no figures came."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:  # its output comes as bytes even with text=True
        rc, stdout, stderr = 124, (e.stdout or b"").decode(errors="replace"), f"timed out after {e.timeout} s"
    rows = [r for r in csv.reader(stdout.splitlines()) if r and r[0] != "test"]
    if rc == 0 and rows and len(rows[-1]) >= 7:
        return 0, float(rows[-1][1]), float(rows[-1][4]), float(rows[-1][6]), stderr
    return rc or 1, None, None, None, stderr


def measure(o, rnd, name, test, clients, requests, argv, proc, sample):
    """Run `argv` (redis-benchmark) once against target `name` and measure it: a runs.tsv row.
    `proc`: the proxy's process (its CPU is counted; None for a direct run). `sample()`: per Redis
    node (commands, reads, CPU seconds); each sample is an INFO, so the node's second sample counts
    one more read and one more command than the load made: both are taken off."""
    noise = quiet_gate(o["quiet_pct"], o["quiet_wait"])
    if proc is not None and proc.poll() is not None:
        fail(f"{name} exited ({proc.returncode}) before round {rnd}; see its log in {o['out']}")
    s0 = sample()
    p0 = proc_cpu(proc.pid) if proc else 0.0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = box_busy(), time.monotonic()
    rc, rps, p50, p99, stderr = run_bench(argv, o["run_timeout"])
    wall, b1 = time.monotonic() - t0, box_busy()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p1 = proc_cpu(proc.pid) if proc else 0.0
    s1 = sample()
    if rc != 0:
        log(f"  run failed (rc {rc}): {stderr.strip()[-300:]}")
    cmds = [b[0] - a[0] - 1 for a, b in zip(s0, s1)]
    reads = [b[1] - a[1] - 1 for a, b in zip(s0, s1)]
    redis_cpu = sum(b[2] - a[2] for a, b in zip(s0, s1))
    bench_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    proxy_cpu = p1 - p0
    other_cpu = (b1 - b0) - proxy_cpu - bench_cpu - redis_cpu
    row = {"round": rnd, "target": name, "test": test, "clients": clients, "requests": requests, "rc": rc,
           "rps": rps, "p50_ms": p50, "p99_ms": p99, "wall_s": round(wall, 3),
           "proxy_cpu_s": round(proxy_cpu, 3) if proc else None, "bench_cpu_s": round(bench_cpu, 3),
           "other_cpu_s": round(other_cpu, 3), "redis_cpu_s": round(redis_cpu, 4), "shard_cmds": cmds,
           "shard_reads": reads, "pre_noise_pct": round(noise)}
    per_read = "/".join(f"{c / r:.0f}" if r > 0 else "-" for c, r in zip(cmds, reads))
    cpu = f"{proxy_cpu / requests * 1e5:.3f}" if proc else "-"
    log(f"  r{rnd} {name:<11} {test:<4} c={clients:<5} rps={rps} p50={p50} p99={p99} "
        f"proxy_cpu/100k={cpu} cmds/read={per_read} noise={noise:.0f}%")
    return row


def run_one(o, rnd, target, test, clients, requests, shard_conns, mget_keys):
    name, port, proc = target
    return measure(o, rnd, name, test, clients, requests, bench_argv(o, port, test, clients, requests, mget_keys),
                   proc, lambda: [info_stats(c) for c in shard_conns])


def prefill(o, port):
    """The GET keyspace, through twemproxy (or the first proxy) so each key lands on its shard. A -r
    run of 3x the keyspace covers about 95% of it, as for one Redis."""
    n = o["keyspace"] * 3
    argv = [REDIS_BENCHMARK, "-h", HOST, "-p", str(port), "-t", "set", "-n", str(n), "-r", str(o["keyspace"]),
            "-d", str(o["datasize"]), "-P", "16", "-c", "50", "-q"]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


def mget_keys_spread(o, port, shard_conns):
    """K keys for the MGET test, as evenly spread over the shards as K allows and interleaved
    (shard 1, 2, 3, 1, ...). Candidates are SET through the first target and each shard is asked
    which it holds, so the placement is the proxy's own, not a model of it. (Sequential names like
    mget:0..mget:99 would not do: twemproxy's fnv1a_64 puts 90 of them on one shard of three.)"""
    k = o["mget_keys"]
    if k == 0:
        return [], []
    cands = ["mget:" + hashlib.sha1(str(i).encode()).hexdigest()[:12] for i in range(k * 10)]
    c = Resp(port)
    try:
        for key in cands:
            c.call("SET", key, "x" * o["datasize"])
    finally:
        c.close()
    held = [[key for key in cands if s.call("EXISTS", key) == "1"] for s in shard_conns]
    keys, spread = [], [0] * len(held)
    for i in range(len(cands)):
        for j, h in enumerate(held):
            if len(keys) < k and i < len(h):
                keys.append(h[i])
                spread[j] += 1
    return keys, spread


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ratio(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def report(rows, meta, label, title=None, unit=("shard", "shards")):
    """Markdown: one row per test, clients and target; ratios pair runs of the same round, to the base
    of each test and clients: the first target that ran it. `meta`: (key, value) pairs for the
    heading, one list per invocation pooled. `unit`: what a Redis is called, singular and plural."""
    ok = [r for r in rows if r["rc"] == 0]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    bases = {}
    for r in rows:  # round 1 runs the targets in their given order: the first is the base
        bases.setdefault((r["test"], r["clients"]), r["target"])
    named = list(dict.fromkeys(bases.values()))
    over = named[0] if len(named) == 1 else "base"
    by = {}
    for r in ok:
        by.setdefault((r["test"], r["clients"], r["target"]), {})[r["round"]] = r
    confs = list(bases)

    def per100k(key):
        return lambda r: r[key] / r["requests"] * 1e5 if r[key] is not None else None

    def num(v, f):
        return "–" if v is None else format(v, f)

    title = title or f"# Sharded benchmark: {len(rows[0]['shard_cmds'])} shards, {' vs '.join(targets)}"
    out = [title, ""]
    if label:
        out += [label, ""]
    for i, m in enumerate(meta):
        if len(meta) > 1:
            out += [f"Invocation {i + 1} of {len(meta)} (its rounds are numbered on from the last one's):"]
        out += [f"- {k}: {v}" for k, v in m] + [""]
    out += [f"Medians over rounds; `÷ {over}`: median (range) over rounds of the ratio to "
            f"{' / '.join(named)} in the same round. Proxy CPU: utime+stime per 100k requests. "
            f"Cmds per read: each {unit[0]}'s commands per read syscall (INFO, deltas per run). Redis cmds "
            f"per request: over all {unit[1]} (1 for GET/SET; an MGET split counts once per part).", "",
            f"| test | clients | target | rps | rps ÷ {over} | p50 ms | p50 ÷ {over} | p99 ms | proxy CPU s/100k | "
            f"proxy CPU ÷ {over} | cmds per Redis read, per {unit[0]} | Redis cmds per request | "
            f"Redis CPU s/100k (all {unit[1]}) | Redis CPU ÷ {over} | other CPU (cores) |",
            "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for test, c in confs:
        for t in dict.fromkeys(r["target"] for r in rows if (r["test"], r["clients"]) == (test, c)):
            g = by.get((test, c, t), {})
            name = test.upper()
            if not g:
                out.append(f"| {name} | {c} | {t} | failed | | | | | | | | | | | |")
                continue
            b = by.get((test, c, bases[(test, c)]), {})
            rs = list(g.values())

            def ratio(f):
                if t == bases[(test, c)]:
                    return "–"
                return fmt_ratio([f(g[k]) / f(b[k]) if f(g[k]) is not None and f(b[k]) else None
                                  for k in g if k in b])

            per_read = " / ".join(
                f"{med([r['shard_cmds'][i] / r['shard_reads'][i] for r in rs if r['shard_reads'][i] > 0]) or 0:.0f}"
                for i in range(len(rs[0]["shard_cmds"])))
            cmds_per_req = med([sum(r["shard_cmds"]) / r["requests"] for r in rs])
            other = med([max(0.0, r["other_cpu_s"]) / r["wall_s"] for r in rs])
            proxy100k, redis100k = per100k("proxy_cpu_s"), per100k("redis_cpu_s")
            out.append(f"| {name} | {c} | {t} | {med([r['rps'] for r in rs]) / 1000:.1f}k | "
                       f"{ratio(lambda r: r['rps'])} | {med([r['p50_ms'] for r in rs]):.3f} | "
                       f"{ratio(lambda r: r['p50_ms'])} | {med([r['p99_ms'] for r in rs]):.3f} | "
                       f"{num(med([proxy100k(r) for r in rs]), '.3f')} | {ratio(proxy100k)} | {per_read} | "
                       f"{cmds_per_req:.2f} | {med([redis100k(r) for r in rs]):.3f} | {ratio(redis100k)} | "
                       f"{other:.2f} |")
    failed = len(rows) - len(ok)
    if failed:
        out += ["", f"{failed} run(s) failed: see runs.tsv (rc) and the logs."]
    # our own CPU is counted more finely than the box's (ticks), so "other" can dip below 0
    others = [max(0.0, r["other_cpu_s"]) / r["wall_s"] for r in ok if r["wall_s"] > 0]
    if others:
        out += ["", f"Noise: other processes kept a median {med(others):.2f} cores busy during the runs "
                f"(max {max(others):.2f}); compare ratios within a round, not absolute rps."]
    return "\n".join(out) + "\n"


def load_runs(d, offset):
    """The rows of DIR/runs.tsv as run_one made them, rounds numbered on from `offset`."""
    rows = []
    with open(os.path.join(d, "runs.tsv"), newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            for k in ("round", "clients", "requests", "rc"):
                r[k] = int(r[k])
            r["round"] += offset
            for k in ("rps", "p50_ms", "p99_ms", "wall_s", "proxy_cpu_s", "bench_cpu_s", "other_cpu_s",
                      "redis_cpu_s", "pre_noise_pct"):
                r[k] = float(r[k]) if r[k] else None
            for k in ("shard_cmds", "shard_reads"):
                r[k] = [int(x) for x in r[k].split(",")]
            rows.append(r)
    return rows


def pool(o, render=None):
    """--pool: one report of several invocations' runs. `render(rows, meta, label, dirs)`: the report
    (default: report())."""
    rows, meta = [], []
    for d in o["pool"]:
        runs = load_runs(d, max((r["round"] for r in rows), default=0))
        if not runs:
            fail(f"no runs in {d}/runs.tsv")
        rows += runs
        with open(os.path.join(d, "meta.txt")) as f:
            meta.append([tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line])
    text = (render or (lambda r, m, label, _: report(r, m, label)))(rows, meta, o["label"], o["pool"])
    if o["out"]:
        os.makedirs(o["out"], exist_ok=True)
        with open(os.path.join(o["out"], "report.md"), "w") as f:
            f.write(text)
    print(text)
    return 0


def main():
    o = parse_args(sys.argv[1:])
    if o["pool"]:
        return pool(o)
    out = o["out"] or os.path.join(os.environ.get("TMPDIR", "/tmp"), time.strftime("shard-bench-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    o["out"] = out
    # Many clients: raise our (and our children's) descriptor limit to the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    top = max(o["clients"] + (o["mget_clients"] if o["mget_keys"] else []))
    if hard < top + 200:
        fail(f"ulimit -n hard limit {hard} is too low for {top} clients")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    redis_cpus = o["redis_cpus"] if o["pin"] else None
    proxy_cpus = o["other_cpus"] if o["pin"] else None
    procs = Procs(out)
    ports = Ports(o["base_port"])
    shard_conns = []
    try:
        shard_ports = [ports.take() for _ in range(o["shards"])]
        for i, p in enumerate(shard_ports):
            d = os.path.join(out, f"shard{i + 1}")
            os.makedirs(d, exist_ok=True)
            proc = procs.start(f"shard{i + 1}", [REDIS_SERVER, "--port", str(p), "--bind", HOST, "--save", "",
                                                 "--appendonly", "no", "--daemonize", "no", "--maxclients", "10000",
                                                 "--dir", d], redis_cpus)
            wait_ping(p, proc, 10, f"shard{i + 1}", out)
        shard_conns = [Resp(p) for p in shard_ports]
        nc_port = ports.take()
        toml, yaml = write_configs(out, shard_ports, nc_port)
        targets = []
        if o["nutcracker"]:
            if subprocess.run([NUTCRACKER, "-t", "-c", yaml], capture_output=True).returncode != 0:
                fail(f"nutcracker rejects {yaml}")
            proc = procs.start("nutcracker", [NUTCRACKER, "-c", yaml, "-s", str(ports.take()), "-a", HOST,
                                              "-i", "600000", "-m", str(o["nc_mbuf"])], proxy_cpus)
            wait_ping(nc_port, proc, 10, "nutcracker", out)
            targets.append(("twemproxy", nc_port, proc))
        for name, template in o["proxies"]:
            port = ports.take()
            subst = {"listen": f"{HOST}:{port}", "listen_port": str(port), "config": toml, "yaml": yaml,
                     "host": HOST}
            subst.update({f"shard{i + 1}": f"{HOST}:{p}" for i, p in enumerate(shard_ports)})
            cmd = template
            for k, v in subst.items():
                cmd = cmd.replace("{" + k + "}", v)
            log(f"{name} on {HOST}:{port}: {cmd}")
            with open(os.path.join(out, "proxies.txt"), "a") as f:
                f.write(f"{name}: {cmd}\n")
            proc = procs.start(name, shlex.split(cmd), proxy_cpus)
            wait_ping(port, proc, o["ready_timeout"], name, out)
            targets.append((name, port, proc))
        log(f"{o['shards']} shards on ports {' '.join(map(str, shard_ports))}; targets: "
            f"{', '.join(t[0] for t in targets)}; output {out}")

        log("prefill the keyspace and warm up every target")
        prefill(o, targets[0][1])
        mget_keys, spread = mget_keys_spread(o, targets[0][1], shard_conns)
        for name, port, _ in targets:
            res = subprocess.run([REDIS_BENCHMARK, "-h", HOST, "-p", str(port), "-t", "get", "-n", "20000",
                                  "-r", str(o["keyspace"]), "-c", "50", "-q"], capture_output=True, timeout=120)
            if res.returncode != 0:
                fail(f"warm-up through {name} failed: {res.stderr.decode()[-300:]}")

        plan = [(t, c, o["requests"] if c > 1 else min(o["requests"], 30000))
                for c in o["clients"] for t in o["tests"]]
        if mget_keys:
            plan += [("mget", c, o["mget_requests"]) for c in o["mget_clients"]]
        meta = [("date", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                ("redis", subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.strip()),
                ("nutcracker", "server_connections 1, ketama, fnv1a_64, mbuf " + str(o["nc_mbuf"])
                 if o["nutcracker"] else "off"),
                ("proxies", "; ".join(f"{n}: `{c}`" for n, c in o["proxies"])),
                ("load", f"redis-benchmark -P 1, {o['rounds']} rounds, GET/SET: {o['requests']} requests, "
                         f"-r {o['keyspace']} -d {o['datasize']}; MGET of {o['mget_keys']} keys: "
                         f"{o['mget_requests']} requests"),
                ("pin", f"shards on CPU {o['redis_cpus']}, proxies and load on CPU {o['other_cpus']}"
                 if o["pin"] else "none"),
                ("nproc", os.cpu_count()), ("loadavg at start", open("/proc/loadavg").read().split()[0])]
        if mget_keys:
            meta.append(("MGET keys per shard", " / ".join(map(str, spread))))
        with open(os.path.join(out, "meta.txt"), "w") as f:
            f.writelines(f"{k}\t{v}\n" for k, v in meta)

        rows = []
        with open(os.path.join(out, "runs.tsv"), "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS, delimiter="\t")
            w.writeheader()
            for rnd in range(1, o["rounds"] + 1):
                log(f"round {rnd}/{o['rounds']}")
                for test, c, n in plan:
                    for k in range(len(targets)):
                        t = targets[(k + rnd - 1) % len(targets)]  # rotate the order every round
                        row = run_one(o, rnd, t, test, c, n, shard_conns, mget_keys)
                        w.writerow({k: ",".join(map(str, v)) if isinstance(v, list) else v
                                    for k, v in row.items()})
                        f.flush()
                        rows.append(row)
        text = report(rows, [meta], o["label"])
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(text)
        print(text)
        return 0 if all(r["rc"] == 0 for r in rows) else 1
    finally:
        for c in shard_conns:
            c.close()
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
