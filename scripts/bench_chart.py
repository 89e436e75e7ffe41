#!/usr/bin/env python3
"""Chart and summary of shared-harness invocations (../shared/bench/run.sh output dirs).

Usage: bench_chart.py [options] HARNESS_DIR [HARNESS_DIR ...]

With several dirs (invocations with the same targets), their runs are pooled, rounds numbered on,
and ratios still pair runs of the same round: the medians of two invocations in one report.

  --svg FILE        write the chart here (default HARNESS_DIR/chart.svg; needed with several dirs)
  --report FILE     write a Markdown report here: a summary of PROXY vs nutcracker and vs direct,
                    then HARNESS_DIR/report.md embedded (one dir only; default: no report)
  --proxy NAME      a target under test (default respipe); may be repeated (bench.sh --workers gives
                    respipe-w1, respipe-w2, ...): the report then also puts them side by side, each
                    with its ratios to the first
  --max-other CORES drop runs during which other processes kept more than CORES cores busy, as the
                    harness's summarize.py does (default 0.35; negative keeps every run)
  --title TEXT      extra text for the chart title and the report heading

The chart has two panels, throughput (requests/s) and Redis CPU-seconds per 100k commands, against
the number of clients (log scale), one line per target and test (solid: first test, dashed: second...),
medians over rounds. Python 3 standard library only; the SVG is written by hand.
"""
import csv
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

COLORS = {"direct": "#4d4d4d", "nutcracker": "#e08214", "respipe": "#2166ac"}
PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"]
DASHES = ["", "7,4", "2,3", "10,3,2,3"]
MARKERS = ["circle", "square", "diamond", "triangle"]


def fnum(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def load_runs(d, max_other):
    """runs.tsv rows that succeeded and were not noisy (same rule as summarize.py)."""
    rows = []
    with open(os.path.join(d, "runs.tsv")) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            for k in list(r):
                if k not in ("target", "test"):
                    v = fnum(r[k])
                    r[k] = v if v is not None else r[k]
            r["clients"] = int(r["clients"])
            r["pipeline"] = int(r["pipeline"])
            r["round"] = int(r["round"])
            ok = r["rc"] == 0 and isinstance(r["rps"], float)
            wall = r.get("wall_s")
            other = r.get("other_cpu_s")
            r["other_util"] = other / wall if isinstance(wall, float) and wall > 0 and isinstance(other, float) else None
            r["noisy"] = bool(ok and max_other >= 0 and r["other_util"] is not None and r["other_util"] > max_other)
            r["ok"] = ok and not r["noisy"]
            rows.append(r)
    return rows


def load_meta(d):
    """meta.txt as a dict; its proxy_cmd lines (one per proxy) as a list under proxy_cmd."""
    meta = {"proxy_cmd": []}
    p = os.path.join(d, "meta.txt")
    if os.path.exists(p):
        for line in open(p):
            k, _, v = line.rstrip("\n").partition("\t")
            if k == "proxy_cmd":
                meta[k].append(v)
            else:
                meta.setdefault(k, v)
    return meta


def ordered(seq):
    out = []
    for x in seq:
        if x not in out:
            out.append(x)
    return out


# ------------------------------------------------------------------ SVG
def nice_max(v):
    """A round axis maximum >= v and a tick step."""
    if not v or v <= 0:
        return 1.0, 0.2
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        top = m * exp
        if top >= v * 1.04:
            break
    for n in (5, 4, 6, 3, 8):
        step = top / n
        s = step / 10 ** math.floor(math.log10(step))
        if abs(s - round(s * 2) / 2) < 1e-9:
            return top, step
    return top, top / 5


def fmt_tick(v, kind):
    if kind == "rps":
        return f"{v / 1000:.0f}k" if v >= 1000 else f"{v:.0f}"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"


def marker(shape, x, y, color):
    r = 4
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{color}"/>'
    if shape == "diamond":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} '
                f'{x - r - 1:.1f},{y:.1f}" fill="{color}"/>')
    if shape == "triangle":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y + r:.1f} {x - r - 1:.1f},{y + r:.1f}" '
                f'fill="{color}"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}"/>'


def chart(series, clients, tests, targets, title, subtitle):
    """series: {(target, test): {clients: (rps, redis_cpu_100k)}} -> SVG text."""
    W, H = 1000, 470
    panel_w, panel_h = 400, 300
    top = 95
    lefts = [80, 580]
    panels = [("rps", "Throughput (requests/s, median)", 0),
              ("cpu", "Redis CPU-seconds per 100k commands (median)", 1)]
    xs = sorted(clients)
    lx = [math.log10(c) for c in xs]
    lo, hi = (lx[0], lx[-1]) if len(lx) > 1 and lx[-1] > lx[0] else (lx[0] - 1, lx[0] + 1)
    pad = 0.06 * (hi - lo)

    def xpos(left, c):
        return left + (math.log10(c) - lo + pad) / (hi - lo + 2 * pad) * panel_w

    color = {}
    for i, t in enumerate(targets):
        color[t] = COLORS.get(t, PALETTE[i % len(PALETTE)])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{escape(title)}</text>',
           f'<text x="{W / 2}" y="43" text-anchor="middle" fill="#555">{escape(subtitle)}</text>']
    # legend: targets (colour, marker), tests (dash)
    lxp = 80
    for i, t in enumerate(targets):
        c = color[t]
        out.append(f'<line x1="{lxp}" y1="66" x2="{lxp + 28}" y2="66" stroke="{c}" stroke-width="2.5"/>')
        out.append(marker(MARKERS[i % len(MARKERS)], lxp + 14, 66, c))
        out.append(f'<text x="{lxp + 34}" y="70">{escape(t)}</text>')
        lxp += 44 + 8 * len(t) + 18
    if len(tests) > 1:
        lxp += 20
        for j, test in enumerate(tests):
            out.append(f'<line x1="{lxp}" y1="66" x2="{lxp + 32}" y2="66" stroke="#333" stroke-width="2" '
                       f'stroke-dasharray="{DASHES[j % len(DASHES)]}"/>')
            out.append(f'<text x="{lxp + 38}" y="70">{escape(test.upper())}</text>')
            lxp += 38 + 9 * len(test) + 22
    for (kind, label, idx), left in zip(panels, lefts):
        vals = [v[idx] for s in series.values() for v in s.values() if v[idx] is not None]
        ymax, step = nice_max(max(vals) if vals else 0)

        def ypos(v):
            return top + panel_h - v / ymax * panel_h

        out.append(f'<text x="{left + panel_w / 2}" y="{top - 8}" text-anchor="middle" font-weight="bold">'
                   f'{escape(label)}</text>')
        # grid + y ticks
        n = int(round(ymax / step))
        for k in range(n + 1):
            v = k * step
            y = ypos(v)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + panel_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#333">{fmt_tick(v, kind)}</text>')
        # x ticks at the measured client counts
        for c in xs:
            x = xpos(left, c)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + panel_h}" stroke="#f0f0f0"/>')
            out.append(f'<line x1="{x:.1f}" y1="{top + panel_h}" x2="{x:.1f}" y2="{top + panel_h + 5}" stroke="#333"/>')
            out.append(f'<text x="{x:.1f}" y="{top + panel_h + 19}" text-anchor="middle" fill="#333">{c}</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#333"/>')
        out.append(f'<text x="{left + panel_w / 2}" y="{top + panel_h + 40}" text-anchor="middle">'
                   f'concurrent clients (log scale, non-pipelined)</text>')
        ylab = "requests per second" if kind == "rps" else "CPU-seconds / 100k commands"
        yc = top + panel_h / 2
        out.append(f'<text x="{left - 58}" y="{yc}" text-anchor="middle" transform="rotate(-90 {left - 58} {yc})">'
                   f'{ylab}</text>')
        # lines
        for i, t in enumerate(targets):
            for j, test in enumerate(tests):
                pts = [(c, v[idx]) for c, v in sorted(series.get((t, test), {}).items()) if v[idx] is not None]
                if not pts:
                    continue
                p = " ".join(f"{xpos(left, c):.1f},{ypos(v):.1f}" for c, v in pts)
                out.append(f'<polyline points="{p}" fill="none" stroke="{color[t]}" stroke-width="2.5" '
                           f'stroke-dasharray="{DASHES[j % len(DASHES)]}" stroke-linejoin="round"/>')
                for c, v in pts:
                    out.append(marker(MARKERS[i % len(MARKERS)], xpos(left, c), ypos(v), color[t]))
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ report
def f(x, nd=2, suffix=""):
    return "NA" if x is None else f"{x:.{nd}f}{suffix}"


def krps(x):
    return "NA" if x is None else f"{x / 1000:.1f}k"


def main():
    args = sys.argv[1:]
    opts = {"--svg": None, "--report": None, "--max-other": "0.35", "--title": ""}
    proxies = []
    pos = []
    while args:
        a = args.pop(0)
        if a in ("-h", "--help"):
            print(__doc__)
            return 0
        if a in opts or a == "--proxy":
            if not args:
                sys.exit(f"bench_chart: {a} needs a value")
            if a == "--proxy":
                proxies.append(args.pop(0))
            else:
                opts[a] = args.pop(0)
        elif a.startswith("--"):
            sys.exit(f"bench_chart: unknown option {a}\n{__doc__}")
        else:
            pos.append(a)
    if not pos:
        sys.exit(__doc__)
    if len(pos) > 1 and not opts["--svg"]:
        sys.exit("bench_chart: several dirs: say where the chart goes with --svg FILE")
    d = pos[0]
    proxies = ordered(proxies) or ["respipe"]
    proxy = " / ".join(proxies)
    rows = []
    for dd in pos:
        offset = max((r["round"] for r in rows), default=0)
        rs = load_runs(dd, float(opts["--max-other"]))
        if not rs:
            sys.exit(f"bench_chart: no runs in {dd}/runs.tsv")
        for r in rs:
            r["round"] += offset
        rows += rs
    meta = load_meta(d)
    if len(pos) > 1:
        meta["date"] = ", ".join(load_meta(dd).get("date", "?") for dd in pos)
    base = [r for r in rows if r["pipeline"] == 1]
    targets = ordered(r["target"] for r in base)
    tests = ordered(r["test"] for r in base)
    clients = sorted({r["clients"] for r in base})

    groups = {}
    for r in base:
        groups.setdefault((r["target"], r["test"], r["clients"]), []).append(r)

    def gmed(t, test, c, key):
        return med(r[key] for r in groups.get((t, test, c), []) if r["ok"] and isinstance(r.get(key), float))

    series = {}
    for (t, test, c) in groups:
        series.setdefault((t, test), {})[c] = (gmed(t, test, c, "rps"), gmed(t, test, c, "redis_cpu_100k"))

    pin = meta.get("pin", "none")
    title = f"{proxy} vs twemproxy (nutcracker) vs direct Redis" if "nutcracker" in targets else f"{proxy} vs direct Redis"
    if opts["--title"]:
        title += f" — {opts['--title']}"
    rounds = len({r["round"] for r in rows})
    subtitle = (f"{meta.get('date', '')}, {meta.get('nproc', '?')} CPUs, redis {meta.get('redis', '?')}, "
                f"{rounds} round(s), tests {' '.join(t.upper() for t in tests)}; "
                f"{'pinned: ' + pin if pin != 'none' else 'unpinned'}")
    svg = opts["--svg"] or os.path.join(d, "chart.svg")
    with open(svg, "w") as fh:
        fh.write(chart(series, clients, tests, targets, title, subtitle))

    if not opts["--report"]:
        return 0

    # paired per-round ratios, as summarize.py computes them
    by_round = {(r["round"], r["target"], r["test"], r["clients"]): r for r in base if r["ok"]}
    rounds_l = sorted({r["round"] for r in base})

    def paired(t, b, test, c, key):
        out = []
        for rd in rounds_l:
            x, y = by_round.get((rd, t, test, c)), by_round.get((rd, b, test, c))
            if x and y and isinstance(x.get(key), float) and isinstance(y.get(key), float) and y[key] > 0:
                out.append(x[key] / y[key])
        return out

    def rt(xs):
        if not xs:
            return "NA"
        if len(xs) == 1:
            return f"{xs[0]:.2f}"
        return f"**{med(xs):.2f}** ({min(xs):.2f}–{max(xs):.2f})"

    L = []
    P = L.append
    heading = f"# {proxy} benchmark" + (f" — {opts['--title']}" if opts["--title"] else "")
    P(heading)
    P("")
    P(f"{meta.get('date', '')}; {meta.get('nproc', '?')} CPUs, kernel {meta.get('kernel', '?')}; "
      f"redis {meta.get('redis', '?')}; {meta.get('nutcracker', '')}; pinning: {pin}; "
      f"{rounds} round(s); clients {meta.get('clients', '')}; requests {meta.get('requests', '')}.")
    for v in meta["proxy_cmd"]:
        P(f"Proxy: `{v}`.")
    P("")
    P("![throughput and Redis CPU vs concurrency](chart.svg)")
    P("")
    nz = sum(1 for r in rows if r["noisy"])
    nf = sum(1 for r in rows if not r["ok"] and not r["noisy"])
    if nz or nf:
        P(f"**{nz} run(s) dropped as noisy, {nf} failed** (see runs.tsv).")
        P("")
    P("## Medians")
    P("")
    P("CPU in CPU-seconds per 100k commands. spread = (max−min)/median of rps over rounds. "
      "other = CPU of unrelated processes during the runs (cores, median): the noise.")
    P("")
    P("| test | c | target | rps | spread | p50 ms | p99 ms | cmds/read | Redis CPU/100k | proxy CPU/100k | other | cmds/req |")
    P("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for test in tests:
        for c in clients:
            for t in targets:
                g = [r for r in groups.get((t, test, c), []) if r["ok"]]
                if not groups.get((t, test, c)):
                    continue
                rps = [r["rps"] for r in g]
                m = med(rps)
                spread = (max(rps) - min(rps)) / m * 100 if rps and m else None
                pc = gmed(t, test, c, "proxy_cpu_100k") if t != "direct" else None
                P(f"| {test.upper()} | {c} | {t} | {krps(m)} | {f(spread, 0, '%')} | {f(gmed(t, test, c, 'p50_ms'), 3)} | "
                  f"{f(gmed(t, test, c, 'p99_ms'), 3)} | {f(gmed(t, test, c, 'cmds_per_read'), 1)} | "
                  f"{f(gmed(t, test, c, 'redis_cpu_100k'), 3)} | {f(pc, 3) if t != 'direct' else '–'} | "
                  f"{f(gmed(t, test, c, 'other_util'), 2)} | {f(gmed(t, test, c, 'cmd_ratio'), 3)} |")
    P("")
    tested = [p for p in proxies if p in targets]
    multi = len(tested) > 1
    if tested:
        P(f"## {' / '.join(tested)}: ratios (same round's runs paired; median, (min–max) over rounds)")
        P("")
        P("rps ratio > 1 is faster; p50, Redis CPU and proxy CPU ratios < 1 are better. "
          "cmds/read is the batching Redis sees.")
        P("")
        has_nc = "nutcracker" in targets
        hdr = "| test | c |" + (" target |" if multi else "") + " rps ÷ direct |"
        sep = "|---|--:|" + ("---|" if multi else "") + "--:|"
        if has_nc:
            hdr += " rps ÷ nutcracker | p50 ÷ nutcracker | proxy CPU/100k ÷ nutcracker |"
            sep += "--:|--:|--:|"
        hdr += f" cmds/read {'target' if multi else tested[0]}" + (" / nutcracker" if has_nc else "") + " | Redis CPU/100k ÷ direct |"
        sep += "--:|--:|"
        if has_nc:
            hdr += " Redis CPU/100k ÷ nutcracker |"
            sep += "--:|"
        P(hdr)
        P(sep)
        for test in tests:
            for c in clients:
                for t in tested:
                    if not groups.get((t, test, c)):
                        continue
                    cells = [test.upper(), str(c)] + ([t] if multi else []) + [rt(paired(t, "direct", test, c, "rps"))]
                    if has_nc:
                        cells += [rt(paired(t, "nutcracker", test, c, "rps")),
                                  rt(paired(t, "nutcracker", test, c, "p50_ms")),
                                  rt(paired(t, "nutcracker", test, c, "proxy_cpu_100k"))]
                    cpr = f(gmed(t, test, c, "cmds_per_read"), 1)
                    if has_nc:
                        cpr += " / " + f(gmed("nutcracker", test, c, "cmds_per_read"), 1)
                    cells += [cpr, rt(paired(t, "direct", test, c, "redis_cpu_100k"))]
                    if has_nc:
                        cells.append(rt(paired(t, "nutcracker", test, c, "redis_cpu_100k")))
                    P("| " + " | ".join(cells) + " |")
        P("")
    if multi:
        b = tested[0]
        P(f"## {' / '.join(tested)} side by side (ratios to {b}: same round's runs paired; median, (min–max))")
        P("")
        P(f"Medians per target, then each one's ratio to {b}. With one respipe per worker count (bench.sh "
          "--workers) this is the cost of splitting the work: proxy CPU/100k ÷ is what running that many "
          "workers costs per command; cmds/read ÷ and Redis CPU/100k ÷ show the upstream batches split "
          "among the workers' connections.")
        P("")
        P(f"| test | c | target | rps | p50 ms | proxy CPU/100k | cmds/read | Redis CPU/100k | rps ÷ {b} | "
          f"p50 ÷ | proxy CPU/100k ÷ | cmds/read ÷ | Redis CPU/100k ÷ |")
        P("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        keys = ("rps", "p50_ms", "proxy_cpu_100k", "cmds_per_read", "redis_cpu_100k")
        for test in tests:
            for c in clients:
                for t in tested:
                    if not groups.get((t, test, c)):
                        continue
                    cells = [test.upper(), str(c), t, krps(gmed(t, test, c, "rps")), f(gmed(t, test, c, "p50_ms"), 3),
                             f(gmed(t, test, c, "proxy_cpu_100k"), 3), f(gmed(t, test, c, "cmds_per_read"), 1),
                             f(gmed(t, test, c, "redis_cpu_100k"), 3)]
                    cells += ["–"] * len(keys) if t == b else [rt(paired(t, b, test, c, k)) for k in keys]
                    P("| " + " | ".join(cells) + " |")
        P("")
    peers = [t for t in targets if t not in tested and t not in ("direct", "nutcracker")]
    if tested and peers:
        P(f"## {' / '.join(tested)} against the other proxies in the same rounds (paired; median, (min–max) over rounds)")
        P("")
        P("With an older build as the other proxy this is the regression check: its proxy CPU/100k ratio.")
        P("")
        P("| test | c |" + (" target |" if multi else "") + " vs | rps ÷ | p50 ÷ | proxy CPU/100k ÷ | Redis CPU/100k ÷ | "
          f"cmds/read {'target' if multi else tested[0]} / it |")
        P("|---|--:|" + ("---|" if multi else "") + "---|--:|--:|--:|--:|--:|")
        for t in tested:
            for peer in peers:
                for test in tests:
                    for c in clients:
                        if not groups.get((t, test, c)) or not groups.get((peer, test, c)):
                            continue
                        P(f"| {test.upper()} | {c} | " + (f"{t} | " if multi else "") + f"{peer} | "
                          f"{rt(paired(t, peer, test, c, 'rps'))} | "
                          f"{rt(paired(t, peer, test, c, 'p50_ms'))} | {rt(paired(t, peer, test, c, 'proxy_cpu_100k'))} | "
                          f"{rt(paired(t, peer, test, c, 'redis_cpu_100k'))} | "
                          f"{f(gmed(t, test, c, 'cmds_per_read'), 1)} / {f(gmed(peer, test, c, 'cmds_per_read'), 1)} |")
        P("")
    ou = [r["other_util"] for r in rows if r["other_util"] is not None]
    if ou:
        P(f"Noise: other processes used a median {med(ou):.2f} cores (max {max(ou):.2f}) during the runs; "
          f"loadavg(1m) median {f(med(r['load1'] for r in rows if isinstance(r.get('load1'), float)), 2)}.")
        P("")
    if len(pos) > 1:
        P(f"Pooled from {len(pos)} invocations: " + ", ".join(f"`{dd}`" for dd in pos) + ".")
        P("")
    hr = os.path.join(d, "report.md")
    if len(pos) == 1 and os.path.exists(hr):
        P("## The harness's report")
        P("")
        P(f"(`{os.path.relpath(hr, os.path.dirname(os.path.abspath(opts['--report'])))}`, "
          "written by ../shared/bench/run.sh; headings demoted one level.)")
        P("")
        for line in open(hr):
            line = line.rstrip("\n")
            P("#" + line if line.startswith("#") else line)
    with open(opts["--report"], "w") as fh:
        fh.write("\n".join(L).rstrip("\n") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
