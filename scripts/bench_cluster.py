#!/usr/bin/env python3
"""Redis Cluster benchmark: respipe in front of a 3-primary cluster beside the cluster-aware ceiling.

Usage: bench_cluster.py --proxy NAME=CMD [--proxy NAME=CMD ...] [options]

Starts a Redis Cluster of 3 primaries on loopback (../shared/bench/cluster.sh, no replicas), a
single redis-server (the no-cluster ceiling of the MGET test) and every proxy under test, then, per
round, with the order of the targets rotated every round:
  1. GET and SET, random keys over all slots (-r), non-pipelined, at each of --clients:
     `redis-benchmark --cluster` straight at the primaries (each client talks to the right node:
     the ceiling) vs plain `redis-benchmark` (standalone, default settings) through each proxy;
  2. MGET of --mget-keys fixed keys, one per slot range of 16384/K slots (so spread over all slots
     and nodes), prefilled in the cluster and in the single Redis: the single Redis vs each proxy;
  3. a slot migration under load: SET at --migration-clients through the first proxy, while
     --migrations moves of --migration-slots slots each go from one primary to the next (CLUSTER
     SETSLOT IMPORTING/MIGRATING, GETKEYSINSLOT + MIGRATE, SETSLOT NODE) and then back again, so
     every round starts from the same slot map; the moves are --migration-gap seconds apart.
     redis-benchmark stops at the first error reply it reads: it runs in chunks of
     --migration-requests while the slots move, each chunk ended by an error counting one
     client-visible error (a lower bound; exact when it is 0); p99 is over the chunks that
     completed. Afterwards the proxy is probed until it serves every slot again.
Before the rounds, an MGET of the test's keys through each proxy must answer what the single Redis
does (else the report says so and the exit status is 1).

Targets:
  --proxy NAME=CMD      proxy under test, a command template (may be repeated). Placeholders:
                        {listen} (127.0.0.1:PORT), {listen_port}, {upstream}
                        (redis-cluster://SEED,SEED,SEED), {seeds} (SEED,SEED,SEED), {host}. E.g.
                        'respipe=target/release/respipe --upstream {upstream} --listen {listen}'
  --ready-timeout S     seconds to wait for a proxy to answer PING (default 30)
  --cluster-script PATH the cluster starter (default: ../shared/bench/cluster.sh next to the repository)

Load (redis-benchmark, non-pipelined clients):
  --rounds N            rounds (default 3); the report gives medians over rounds
  --clients "LIST"      concurrencies for --tests (default "50 200 1000")
  --tests "LIST"        redis-benchmark -t tests (default "set get")
  --requests N          requests per run (default 150000)
  --keyspace N          redis-benchmark -r (default 1000000; not prefilled: GET finds what SET wrote)
  --datasize N          value bytes (default 3)
  --mget-keys K         keys of the MGET test (default 50; 0 skips it)
  --mget-clients "LIST" concurrencies of the MGET test (default "50")
  --mget-requests N     MGETs per run (default 30000)
  --migrations N        slot moves per round, each then moved back (default 3; 0 skips the test)
  --migration-slots N   slots per move (default 100)
  --migration-clients N clients of the load during the migration (default 200)
  --migration-requests N  requests per load chunk during the migration (default 50000)
  --migration-gap S     seconds between two moves, the load running on (default 1.0)
  --settle-timeout S    after the migration, seconds the proxy may take to serve every slot
                        again (probed with GET runs; default 40)
  --run-timeout S       kill one redis-benchmark run after S seconds (default 120)
  --quiet-pct P, --quiet-wait S  wait for a quiet box before each run, as bench_shards.py does
                        (defaults 30 % of a core, at most 3 s)

Placement:
  --pin                 primaries and the single Redis on --redis-cpus (default 0), proxies and
                        redis-benchmark on --other-cpus (default 1), with taskset
  --base-port P         first loopback port to try (default 21001; the nodes also take P+10000...)

Output:
  --out DIR             runs.tsv (one row per run, as bench_shards.py writes it: per node the
                        commands of the test and reads), migration.tsv, report.md, meta.txt, logs
                        (the nodes' in DIR/cluster)
  --label TEXT          free text for the report heading
  --pool DIR [DIR ...]  run nothing: one report of several invocations' --out dirs (medians
                        over all their rounds); written to --out/report.md when --out is given

Per run, per primary: commands per read = INFO commandstats calls of the test's command / INFO
stats total_reads_processed (deltas over the run); Redis CPU = utime+stime from /proc/PID/stat,
summed over the primaries; proxy CPU likewise. Python 3 standard library only.
"""
import csv
import os
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
import bench_shards as sh  # noqa: E402

HOST = sh.HOST
SLOTS = 16384
MIGRATION_COLUMNS = ["round", "target", "clients", "slots_moved", "migrate_s", "chunks", "chunks_failed",
                     "errors", "error_kinds", "p99_ms_median", "p99_ms_max", "rps_median", "redirects_sent",
                     "settle_s"]


def parse_args(argv):
    """The options of the module doc (which is the --help text) into a dict."""
    here = os.path.dirname(os.path.abspath(__file__))
    p = sh.arg_parser(__doc__, "bench_cluster.py", keyspace=1000000, mget_keys=50, mget_clients=[50],
                      base_port=21001)
    p.add_argument("--cluster-script", default=os.path.join(here, "..", "..", "shared", "bench", "cluster.sh"))
    p.add_argument("--migrations", type=sh.count, default=3)
    p.add_argument("--migration-slots", type=sh.positive, default=100)
    p.add_argument("--migration-clients", type=sh.positive, default=200)
    p.add_argument("--migration-requests", type=sh.positive, default=50000)
    p.add_argument("--migration-gap", type=float, default=1.0)
    p.add_argument("--settle-timeout", type=sh.positive, default=40)
    o = sh.parse(p, __doc__, argv)
    if not o.proxies and not o.pool:
        p.error("nothing to measure: give --proxy NAME=CMD")
    if o.mget_keys > SLOTS:
        p.error(f"--mget-keys: at most {SLOTS}")
    return vars(o)


class Node:
    """One Redis of the benchmark: its port, PID (for /proc CPU) and an admin connection."""

    def __init__(self, port, pid):
        self.port, self.pid = port, pid
        self.conn = sh.Resp(port, timeout=10.0)
        cluster = self.info("cluster").get("cluster_enabled") == "1"
        self.id = self.conn.call("CLUSTER", "MYID") if cluster else None
        self.first_slot = None  # a primary's lowest slot at the start

    def info(self, section):
        fields = {}
        for line in self.conn.call("INFO", section).splitlines():
            k, sep, v = line.partition(":")
            if sep:
                fields[k] = v
        return fields


def sampler(nodes, command):
    """measure()'s sample for `nodes`: per node (calls of `command` + calls of INFO, reads, CPU s).
    INFO is counted so that measure() can take our own sample off, as for total_commands_processed;
    other commands (the proxy's slot map refreshes, the benchmark's setup) are left out."""

    def calls(fields, cmd):
        stat = fields.get(f"cmdstat_{cmd}", "calls=0").split(",")[0]
        return int(stat.partition("=")[2])

    def sample():
        out = []
        for n in nodes:
            f = n.info("all")
            out.append((calls(f, command) + calls(f, "info"), int(f["total_reads_processed"]), sh.proc_cpu(n.pid)))
        return out

    return sample


def cluster_script(o, *args):
    res = subprocess.run(["bash", o["cluster_script"], *args], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        sh.fail(f"cluster.sh {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return res.stdout


def start_cluster(o, state):
    """Three primaries by cluster.sh; returns their Nodes in slot order (lowest slot first)."""
    env = {}
    for line in cluster_script(o, "start", "--state", state, "--base-port", str(o["base_port"])).splitlines():
        k, sep, v = line.partition("=")
        if sep:
            env[k] = v.strip('"')
    ports = [int(a.rpartition(":")[2]) for a in env["CLUSTER_PRIMARIES"].split()]
    pids = [int(p) for p in env["CLUSTER_PRIMARY_PIDS"].split()]
    if o["pin"]:
        for pid in pids:
            subprocess.run(["taskset", "-a", "-cp", o["redis_cpus"], str(pid)], check=True, capture_output=True)
    nodes = [Node(port, pid) for port, pid in zip(ports, pids)]
    for entry in nodes[0].conn.call("CLUSTER", "SLOTS"):
        n = next(n for n in nodes if n.port == int(entry[2][1]))
        n.first_slot = min(n.first_slot if n.first_slot is not None else SLOTS, int(entry[0]))
    return sorted(nodes, key=lambda n: n.first_slot), env["CLUSTER_SEEDS"]


def slot_owner(nodes, slot):
    for entry in nodes[0].conn.call("CLUSTER", "SLOTS"):
        if int(entry[0]) <= slot <= int(entry[1]):
            return next(n for n in nodes if n.port == int(entry[2][1]))
    sh.fail(f"slot {slot} has no owner")


def spread_keys(nodes, k):
    """K keys, the i-th in slots [i*16384/K, (i+1)*16384/K) (spread over all slots and nodes), and
    a value for each."""
    keys, values, i = {}, {}, 0
    while len(keys) < k:
        if i >= 200 * k + 10000:
            sh.fail(f"could not find {k} keys spread over the slots")
        key = f"mget:{i}"
        i += 1
        band = int(nodes[0].conn.call("CLUSTER", "KEYSLOT", key)) * k // SLOTS
        if band not in keys:
            keys[band], values[key] = key, f"v{i}"
    return [keys[b] for b in sorted(keys)], values


def prefill_mget(o, nodes, single, keys, values):
    """The MGET keys in the cluster (each on its slot's owner) and in the single Redis."""
    for key in keys:
        value = values[key].ljust(o["datasize"], "x")
        slot = int(nodes[0].conn.call("CLUSTER", "KEYSLOT", key))
        slot_owner(nodes, slot).conn.call("SET", key, value)
        single.conn.call("SET", key, value)


def check_mget(port, keys, single):
    """MGET through the proxy answers what the single Redis does: returns a problem or None."""
    c = sh.Resp(port)
    try:
        got = c.call("MGET", *keys)
    except (OSError, RuntimeError) as e:
        return f"MGET through the proxy failed: {e}"
    finally:
        c.close()
    want = single.conn.call("MGET", *keys)
    if got != want:
        wrong = sum(1 for a, b in zip(got or [], want) if a != b)
        return f"MGET through the proxy answered differently from the single Redis ({wrong} of {len(keys)} values)"
    return None


def migrate_slot(src, dst, others, slot):
    """Move one slot with its keys, as redis-cli --cluster reshard does."""
    dst.conn.call("CLUSTER", "SETSLOT", slot, "IMPORTING", src.id)
    src.conn.call("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.id)
    for _ in range(100000):
        keys = src.conn.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        src.conn.call("MIGRATE", HOST, dst.port, "", 0, 10000, "KEYS", *keys)
    for n in [dst, src] + others:
        n.conn.call("CLUSTER", "SETSLOT", slot, "NODE", dst.id)


def migration_plan(o, nodes):
    """(src, dst, slots) moves: move i takes --migration-slots slots from the start of primary i's
    range (round robin; later passes take the next slots) to primary i+1, then every move is undone
    in reverse order."""
    per = o["migration_slots"]
    moves = []
    for i in range(o["migrations"]):
        src, dst = nodes[i % len(nodes)], nodes[(i + 1) % len(nodes)]
        start = src.first_slot + (i // len(nodes)) * per
        moves.append((src, dst, list(range(start, start + per))))
    return moves + [(dst, src, slots) for src, dst, slots in reversed(moves)]


def errorstats(nodes):
    """Redirect-type error replies the nodes sent so far (MOVED, ASK, TRYAGAIN, CLUSTERDOWN)."""
    total = 0
    for n in nodes:
        for k, v in n.info("errorstats").items():
            if k.removeprefix("errorstat_") in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
                total += int(v.partition("=")[2])
    return total


def run_migration(o, rnd, target, nodes):
    """Slot moves under SET load through `target`: one migration.tsv row."""
    name, port, proc = target
    c = o["migration_clients"]
    argv = sh.bench_argv(o, port, "set", c, o["migration_requests"], [])
    done, failure = threading.Event(), []
    took = [0.0]

    def drive():
        t0 = time.monotonic()
        try:
            for i, (src, dst, slots) in enumerate(migration_plan(o, nodes)):
                if i:
                    time.sleep(o["migration_gap"])  # pacing: the load runs on the moved map a while
                others = [n for n in nodes if n is not src and n is not dst]
                for slot in slots:
                    migrate_slot(src, dst, others, slot)
        except (OSError, RuntimeError) as e:
            failure.append(str(e))
        took[0] = time.monotonic() - t0
        done.set()

    sh.quiet_gate(o["quiet_pct"], o["quiet_wait"])
    redirects0 = errorstats(nodes)
    driver = threading.Timer(0.5, drive)  # the load starts first: the first slot moves under it
    driver.daemon = True
    driver.start()
    chunks = []
    while not done.is_set() and len(chunks) < 10000:
        chunks.append(sh.run_bench(argv, o["run_timeout"]))
        if proc.poll() is not None:
            sh.fail(f"{name} exited ({proc.returncode}) during the slot migration; see its log in {o['out']}")
    driver.join(timeout=600)
    if failure:
        sh.fail(f"the slot migration failed: {failure[0]}")
    redirects = errorstats(nodes) - redirects0
    failed = [ch for ch in chunks if ch[0] != 0]
    errors = [ch for ch in failed if "Error from server" in ch[4]]
    kinds = {}
    for ch in errors:
        kind = ch[4].split("Error from server", 1)[1].lstrip(": ").split()[0:1] or ["?"]
        kinds[kind[0]] = kinds.get(kind[0], 0) + 1
    completed = [ch for ch in chunks if ch[0] == 0]
    settle = settle_proxy(o, port)
    row = {"round": rnd, "target": name, "clients": c, "slots_moved": 2 * o["migrations"] * o["migration_slots"],
           "migrate_s": round(took[0], 2), "chunks": len(chunks), "chunks_failed": len(failed),
           "errors": len(errors), "error_kinds": " ".join(f"{k}:{v}" for k, v in sorted(kinds.items())) or "-",
           "p99_ms_median": sh.med([ch[3] for ch in completed]),
           "p99_ms_max": max((ch[3] for ch in completed), default=None),
           "rps_median": sh.med([ch[1] for ch in completed]), "redirects_sent": redirects,
           "settle_s": settle}
    sh.log(f"  r{rnd} {name:<11} migration of {row['slots_moved']} slots in {row['migrate_s']} s under SET c={c}: "
           f"{len(chunks)} chunks, {len(errors)} ended by an error reply ({row['error_kinds']}), "
           f"p99 median {fmt(row['p99_ms_median'])} max {fmt(row['p99_ms_max'])} ms, nodes sent {redirects} redirects, "
           f"every slot served again after {settle} s")
    return row


def settle_proxy(o, port):
    """Seconds until a GET run over the whole keyspace passes through the proxy (None: not within
    --settle-timeout): the proxy's slot map has caught up with the cluster's."""
    argv = sh.bench_argv(o, port, "get", 50, 20000, [])
    t0 = time.monotonic()
    while time.monotonic() - t0 < o["settle_timeout"]:
        if sh.run_bench(argv, o["run_timeout"])[0] == 0:
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)  # a poll interval: the proxy refreshes its slot map on its own schedule
    return None


def fmt(v, f=".3f"):
    return "–" if v is None or v == "" else format(float(v), f)


def migration_report(mrows):
    """Markdown of the migration rows (one per round)."""
    if not mrows:
        return ""
    out = ["", "## Slot migration under load", "",
           "Per round: SET through the proxy while slots move between primaries and back. Errors: "
           "redis-benchmark chunks ended by an error reply (each counts one: a lower bound, exact at 0). "
           "p99 over the chunks that completed. Redirects sent: MOVED/ASK/TRYAGAIN/CLUSTERDOWN replies the "
           "nodes sent (absorbed by the proxy, or passed on). Settle: seconds after the last move until a GET "
           "run over every slot passed through the proxy.", "",
           "| round | target | clients | slots moved | migration s (moves and gaps) | chunks | client-visible errors | kinds | "
           "p99 ms median / max | rps median | redirects sent | settle s |",
           "|--:|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"]

    for r in mrows:
        out.append(f"| {r['round']} | {r['target']} | {r['clients']} | {r['slots_moved']} | {r['migrate_s']} | "
                   f"{r['chunks']} | {r['errors']} | {r['error_kinds']} | {fmt(r['p99_ms_median'])} / "
                   f"{fmt(r['p99_ms_max'])} | {fmt(r['rps_median'], '.0f')} | {r['redirects_sent']} | "
                   f"{fmt(r['settle_s'], '.1f')} |")
    p99s = [float(r["p99_ms_median"]) for r in mrows if r["p99_ms_median"] not in (None, "")]
    out += ["", f"Over {len(mrows)} round(s): {sum(int(r['errors']) for r in mrows)} client-visible error(s) in "
                f"{sum(int(r['chunks']) for r in mrows)} chunks; p99 during the migration {fmt(sh.med(p99s))} ms "
                "(median of the rounds')."]
    return "\n".join(out) + "\n"


def load_migrations(dirs):
    rows, offset = [], 0
    for d in dirs:
        path = os.path.join(d, "migration.tsv")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            got = list(csv.DictReader(f, delimiter="\t"))
        for r in got:
            r["round"] = int(r["round"]) + offset
        offset = max([offset] + [r["round"] for r in got])
        rows += got
    return rows


def render(rows, meta, label, dirs):
    title = f"# Cluster benchmark: 3 primaries, {' vs '.join(dict.fromkeys(r['target'] for r in rows))}"
    return sh.report(rows, meta, label, title=title, unit=("primary", "primaries")) + migration_report(load_migrations(dirs))


def main():
    o = parse_args(sys.argv[1:])
    if o["pool"]:
        return sh.pool(o, render)
    out = o["out"] or os.path.join(os.environ.get("TMPDIR", "/tmp"), time.strftime("cluster-bench-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    o["out"] = out = os.path.abspath(out)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    top = max(o["clients"] + o["mget_clients"] + [o["migration_clients"]])
    if hard < top + 200:
        sh.fail(f"ulimit -n hard limit {hard} is too low for {top} clients")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    redis_cpus = o["redis_cpus"] if o["pin"] else None
    proxy_cpus = o["other_cpus"] if o["pin"] else None
    procs = sh.Procs(out)
    state = os.path.join(out, "cluster")
    nodes = []
    try:
        nodes, seeds = start_cluster(o, state)
        ports = sh.Ports(max(n.port for n in nodes) + 1)
        single_port = ports.take()
        proc = procs.start("single-redis", [sh.REDIS_SERVER, "--port", str(single_port), "--bind", HOST, "--save", "",
                                            "--appendonly", "no", "--daemonize", "no", "--maxclients", "10000",
                                            "--dir", out], redis_cpus)
        sh.wait_ping(single_port, proc, 10, "single-redis", out)
        single = Node(single_port, proc.pid)
        direct = ("direct-cluster", nodes[0].port, None)
        targets = []
        for name, template in o["proxies"]:
            port = ports.take()
            subst = {"listen": f"{HOST}:{port}", "listen_port": str(port), "upstream": f"redis-cluster://{seeds}",
                     "seeds": seeds, "host": HOST}
            cmd = template
            for k, v in subst.items():
                cmd = cmd.replace("{" + k + "}", v)
            sh.log(f"{name} on {HOST}:{port}: {cmd}")
            with open(os.path.join(out, "proxies.txt"), "a") as f:
                f.write(f"{name}: {cmd}\n")
            p = procs.start(name, shlex.split(cmd), proxy_cpus)
            sh.wait_ping(port, p, o["ready_timeout"], name, out)
            targets.append((name, port, p))
        sh.log(f"primaries on ports {' '.join(str(n.port) for n in nodes)}, single Redis on {single_port}; "
               f"targets: {', '.join(t[0] for t in targets)}; output {out}")

        mget_keys, problems = [], []
        if o["mget_keys"]:
            mget_keys, values = spread_keys(nodes, o["mget_keys"])
            prefill_mget(o, nodes, single, mget_keys, values)
            problems += [f"{t[0]}: {p}" for t in targets if (p := check_mget(t[1], mget_keys, single))]
            for p in problems:
                sh.log(f"warning: {p}")
        spread = [sum(1 for k in mget_keys if slot_owner(nodes, int(nodes[0].conn.call("CLUSTER", "KEYSLOT", k))) is n)
                  for n in nodes]

        def argv_of(target, test, c, n):
            argv = sh.bench_argv(o, target[1], test, c, n, mget_keys)
            if target is direct:
                argv.insert(argv.index(sh.REDIS_BENCHMARK) + 1, "--cluster")
            return argv

        plan = [(t, c, o["requests"], [direct] + targets) for c in o["clients"] for t in o["tests"]]
        if mget_keys:
            plan += [("mget", c, o["mget_requests"], [("single-redis", single_port, None)] + targets)
                     for c in o["mget_clients"]]
        meta = [("date", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                ("redis", subprocess.run([sh.REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.strip()),
                ("cluster", f"3 primaries, no replicas, by {os.path.abspath(o['cluster_script'])}"),
                ("proxies", "; ".join(f"{n}: `{c}`" for n, c in o["proxies"])),
                ("load", f"redis-benchmark -P 1, {o['rounds']} rounds, GET/SET: {o['requests']} requests, "
                         f"-r {o['keyspace']} -d {o['datasize']} (direct-cluster: --cluster); MGET of "
                         f"{o['mget_keys']} keys: {o['mget_requests']} requests"),
                ("migration", f"{o['migrations']} moves of {o['migration_slots']} slots and back, SET at "
                              f"c={o['migration_clients']} in chunks of {o['migration_requests']}"
                 if o["migrations"] else "off"),
                ("pin", f"Redis on CPU {o['redis_cpus']}, proxies and load on CPU {o['other_cpus']}"
                 if o["pin"] else "none"),
                ("nproc", os.cpu_count()), ("loadavg at start", open("/proc/loadavg").read().split()[0])]
        if mget_keys:
            meta.append(("MGET keys per primary", " / ".join(map(str, spread))))
        meta += [("problem", p) for p in problems]
        with open(os.path.join(out, "meta.txt"), "w") as f:
            f.writelines(f"{k}\t{v}\n" for k, v in meta)

        rows, mrows = [], []
        with open(os.path.join(out, "runs.tsv"), "w", newline="") as f, \
                open(os.path.join(out, "migration.tsv"), "w", newline="") as mf:
            w = csv.DictWriter(f, sh.COLUMNS, delimiter="\t")
            w.writeheader()
            mw = csv.DictWriter(mf, MIGRATION_COLUMNS, delimiter="\t")
            mw.writeheader()
            for rnd in range(1, o["rounds"] + 1):
                sh.log(f"round {rnd}/{o['rounds']}")
                for test, c, n, tl in plan:
                    for k in range(len(tl)):
                        t = tl[(k + rnd - 1) % len(tl)]  # rotate the order every round
                        measured = [single] if t[1] == single_port else nodes
                        row = sh.measure(o, rnd, t[0], test, c, n, argv_of(t, test, c, n), t[2],
                                         sampler(measured, test))
                        w.writerow({k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
                        f.flush()
                        rows.append(row)
                if o["migrations"] and targets:
                    mrows.append(run_migration(o, rnd, targets[0], nodes))
                    mw.writerow(mrows[-1])
                    mf.flush()
        text = render(rows, [meta], o["label"], [out])
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(text)
        print(text)
        return 0 if all(r["rc"] == 0 for r in rows) and not problems else 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second ^C or TERM must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        for n in nodes:
            n.conn.close()
        procs.stop()
        if os.path.exists(os.path.join(state, "pids")):
            cluster_script(o, "stop", "--state", state, "--keep")  # the nodes' logs stay in OUT/cluster


if __name__ == "__main__":
    sys.exit(main())
