#!/usr/bin/env python3
"""bench/http/layers/run.sh's checks and report (no library beyond Python's own).

  report.py check VARIANT CONNECTIONS ROUND WRK_JSON ROWS COMPLETED OTHER HELD REDIS_KEYS
            REDIS_RESPONSES APP_TICKS PG_TICKS REDIS_TICKS COMMITS WAL_SYNCS LOAD CLK_TCK
      checks that one run did what its variant claims; prints the run as one JSON line
  report.py report RUNS.jsonl OUTDIR --command ... --machine ... ...
      results.md (medians, ratios, where the time goes) and results.svg (the chart)
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

NAMES = {
    "a": "(a) no idempotency",
    "b": "(b) ours, the route's transaction",
    "c": "(c) ours, phased",
    "d": "(d) express-idempotency + Redis",
    "e": "(e) the round trips of (b), no layer",
}
COLORS = {"a": "#7f7f7f", "b": "#1f77b4", "c": "#6baed6", "d": "#d62728", "e": "#bcbd22"}


def check(argv):
    (v, c, rnd, raw, rows, completed, other, held, rkeys, rresp,
     app_t, pg_t, redis_t, xids, wal, load, clk) = argv
    c, rnd = int(c), int(rnd)
    j = json.loads(raw)
    n = j["requests"]
    rows, completed, other, held = int(rows), int(completed), int(other), int(held)
    rkeys, rresp = int(rkeys or 0), int(rresp or 0)
    problems = []
    if n == 0:
        problems.append("no request answered")
    if j["not_201"] or j["socket_errors"]:
        problems.append(f"{j['not_201']} answers not 201, {j['socket_errors']} socket errors")
    if j["replayed"]:
        problems.append(f"{j['replayed']} answers said Idempotent-Replayed (every key is new)")
    # wrk does not count the requests still in flight when it stops (at most one per
    # connection), which the app still completes.
    if not n <= rows <= n + c:
        problems.append(f"{rows} order rows for {n} answers (at most {c} more in flight)")
    if v in "bc":
        if completed != rows:
            problems.append(f"{completed} records completed with 201 for {rows} order rows")
        if other > c:
            problems.append(f"{other} records of other outcomes (at most one per connection closing at the end)")
        if held:
            problems.append(f"{held} records still in progress")
    elif completed or other:
        problems.append(f"{completed} idempotency records, but variant {v} does not use the extension")
    if v == "d":
        if rkeys != rows or rresp != rows:
            problems.append(f"{rkeys} Redis keys, {rresp} with a response, for {rows} order rows")
    elif rkeys:
        problems.append(f"{rkeys} Redis keys, but variant {v} does not use Redis")
    if problems:
        print(f"variant {v}, {c} connections, round {rnd}: " + "; ".join(problems), file=sys.stderr)
        print(f"  wrk: {raw}", file=sys.stderr)
        sys.exit(1)
    tick_us = 1e6 / int(clk)
    print(json.dumps({
        "variant": v, "connections": c, "round": rnd,
        "rps": n / j["seconds"], "p50_ms": j["p50_us"] / 1000, "p99_ms": j["p99_us"] / 1000,
        "mean_ms": j["mean_us"] / 1000, "requests": n, "rows": rows,
        "records": completed, "other_records": other, "redis_keys": rkeys,
        "app_cpu_us": sum(map(int, app_t.split())) * tick_us / rows,
        "app_sys_us": int(app_t.split()[1]) * tick_us / rows,
        "pg_cpu_us": sum(map(int, pg_t.split())) * tick_us / rows,
        "pg_sys_us": int(pg_t.split()[1]) * tick_us / rows,
        "redis_cpu_us": int(redis_t) * tick_us / rows,
        "write_xacts": int(xids) / rows, "wal_bytes": int(wal) / rows, "load1": float(load),
    }))


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}"


def nice_step(x):
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least x."""
    p = 10 ** math.floor(math.log10(x))
    return next(m * p for m in (1, 2, 2.5, 5, 10) if m * p >= x)


def svg_chart(cells, variants, conns):
    """Two panels: requests/s and p99 ms, bars grouped by connections."""
    W, H, top, bottom, left = 960, 420, 60, 70, 70
    pw = (W - 2 * left - 40) / 2
    ph = H - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">POST /orders on Express: '
           'one insert, with and without an idempotency layer (median of rounds)</text>']
    for p, (metric, title) in enumerate([("rps", "requests/s (higher is better)"),
                                         ("p99_ms", "p99 latency, ms (lower is better)")]):
        x0 = left + p * (pw + 40 + left / 2)
        top_value = max(cells[(v, c)][metric] for v in variants for c in conns) * 1.08 or 1
        step = nice_step(top_value / 4)
        ticks = int(-(-top_value // step))
        vmax = step * ticks
        out.append(f'<text x="{x0 + pw / 2}" y="{top - 12}" text-anchor="middle">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + pw}" y2="{top + ph}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + ph}" stroke="black"/>')
        for t in range(ticks + 1):
            val = step * t
            y = top + ph - ph * t / ticks
            out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            label = f"{val:,.0f}" if step >= 1 else f"{val:g}"
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        gw = pw / len(conns)
        bw = gw * 0.8 / len(variants)
        for gi, c in enumerate(conns):
            gx = x0 + gi * gw + gw * 0.1
            for vi, v in enumerate(variants):
                val = cells[(v, c)][metric]
                h = ph * val / vmax
                x = gx + vi * bw
                out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                           f'fill="{COLORS[v]}"><title>{NAMES[v]}, {c} connections: {val:,.1f}</title></rect>')
                out.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{top + ph - h - 3:.1f}" text-anchor="middle" '
                           f'font-size="9">{v}</text>')
            out.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                       f'{c} conn.</text>')
    lx = left
    for v in variants:
        out.append(f'<rect x="{lx}" y="{H - 28}" width="12" height="12" fill="{COLORS[v]}"/>')
        out.append(f'<text x="{lx + 16}" y="{H - 18}">{NAMES[v]}</text>')
        lx += 16 + 7 * len(NAMES[v]) + 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


def report(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("out")
    for opt in ("command", "machine", "pool", "seconds", "rounds", "warmup", "redis-fsync", "elapsed"):
        ap.add_argument("--" + opt, required=True)
    ap.add_argument("--load", nargs=2, required=True)
    a = ap.parse_args(argv)
    runs = [json.loads(line) for line in Path(a.runs).read_text().splitlines() if line.strip()]
    variants = [v for v in "abcde" if any(r["variant"] == v for r in runs)]
    conns = sorted({r["connections"] for r in runs})
    rounds = int(a.rounds)
    cells = {}
    for v in variants:
        for c in conns:
            rs = [r for r in runs if r["variant"] == v and r["connections"] == c]
            if len(rs) != rounds:
                sys.exit(f"report: {v} at {c} connections has {len(rs)} runs, not {rounds}")
            cells[(v, c)] = {k: statistics.median(r[k] for r in rs)
                             for k in ("rps", "p50_ms", "p99_ms", "app_cpu_us", "app_sys_us", "pg_cpu_us", "pg_sys_us",
                                       "redis_cpu_us", "write_xacts", "wal_bytes")}
            cells[(v, c)]["rps_all"] = [r["rps"] for r in rs]
    loads = [r["load1"] for r in runs]

    def ratio(x, y, c, metric="rps"):
        if (x, c) not in cells or (y, c) not in cells:
            return None
        return cells[(x, c)][metric] / cells[(y, c)][metric]

    L = []
    L.append("# Express with and without an idempotency layer")
    L.append("")
    L.append(f"Written by bench/http/layers/run.sh on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {a.elapsed} s. Command:")
    L.append("")
    L.append(f"    {a.command}")
    L.append("")
    L.append(f"Machine: {a.machine}. The apps, PostgreSQL, Redis and wrk share it with other work.")
    L.append(f"Load average (1, 5, 15 min) at the start {' '.join(a.load[0].split())}, at the end "
             f"{' '.join(a.load[1].split())}; the 1-minute figure at the end of each run: "
             f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}.")
    L.append("")
    L.append(f"`POST /orders` inserts one row; each request a new `Idempotency-Key`, the same headers "
             f"and body for every variant. {a.seconds} s per run after a {a.warmup} s warm-up per "
             f"variant, {rounds} rounds per number of connections, the variants taking turns (the "
             f"order rotating each round); each cell is the median of its rounds. pg pool of "
             f"{a.pool} connections (pipeline mode) in every variant; one node process per "
             f"variant; wrk, one thread. Redis: append-only file, `appendfsync {a.redis_fsync}`, "
             f"no RDB snapshots. PostgreSQL: `fsync` and `synchronous_commit` on.")
    L.append("")
    L.append("| variant | connections | requests/s | p50 ms | p99 ms | requests/s of each round |")
    L.append("|---|---:|---:|---:|---:|---|")
    for v in variants:
        for c in conns:
            x = cells[(v, c)]
            L.append(f"| {NAMES[v]} | {c} | {x['rps']:,.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                     + ", ".join(f"{r:,.0f}" for r in x["rps_all"]) + " |")
    L.append("")
    L.append("Ratios of the medians (requests/s; p99 the other way round: the first's p99 over the second's):")
    L.append("")
    L.append("| connections | (b)/(a) req/s | (b)/(d) req/s | (c)/(a) req/s | (d)/(a) req/s | (b)/(a) p99 | (b)/(d) p99 |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        L.append(f"| {c} | {fmt_ratio(ratio('b', 'a', c))} | {fmt_ratio(ratio('b', 'd', c))} | "
                 f"{fmt_ratio(ratio('c', 'a', c))} | {fmt_ratio(ratio('d', 'a', c))} | "
                 f"{fmt_ratio(ratio('b', 'a', c, 'p99_ms'))} | {fmt_ratio(ratio('b', 'd', c, 'p99_ms'))} |")
    L.append("")
    if "e" in variants:
        L.append("The floor (e), (b)'s round trips and statements without the extension or the layer: "
                 "(e)/(a) is what the round trips cost, (b)/(e) what the extension's functions and "
                 "the layer's JavaScript cost beyond them (requests/s).")
        L.append("")
        L.append("| connections | (e)/(a) req/s | (b)/(e) req/s |")
        L.append("|---:|---:|---:|")
        for c in conns:
            L.append(f"| {c} | {fmt_ratio(ratio('e', 'a', c))} | {fmt_ratio(ratio('b', 'e', c))} |")
        L.append("")
    targets = []
    for c in conns:
        ba, bd = ratio("b", "a", c), ratio("b", "d", c)
        if ba is not None:
            targets.append(f"{c} conn.: (b)/(a) {ba:.2f} ({'met' if ba >= 0.9 else 'missed'})")
        if bd is not None:
            targets.append(f"(b)/(d) {bd:.2f} ({'met' if bd >= 1.0 else 'missed'})")
    if targets:
        L.append("Target (issue 19): (b) at least 0.9 of (a) and at least 1.0 of (d) in requests/s. "
                 + "; ".join(targets) + ".")
        L.append("")
    L.append("Where the time goes, per order row (medians of the rounds): CPU time of the variant's node "
             "process, of PostgreSQL (every server process) and of Redis, from /proc (10 ms ticks, "
             "summed over the run; system: in the kernel); the transaction ids assigned (one per "
             "transaction that wrote, and one per subtransaction that wrote; (b) has none since it "
             "stores the outcome without a SAVEPOINT); with `synchronous_commit` on each top-level commit waits for its "
             "WAL to be flushed, one fsync serving every commit waiting for it; and the WAL bytes.")
    L.append("")
    L.append("| variant | connections | node CPU µs | of which system | PostgreSQL CPU µs | of which system | Redis CPU µs | transaction ids | WAL bytes |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        for c in conns:
            x = cells[(v, c)]
            L.append(f"| {NAMES[v]} | {c} | {x['app_cpu_us']:.0f} | {x['app_sys_us']:.0f} | {x['pg_cpu_us']:.0f} | {x['pg_sys_us']:.0f} | "
                     f"{x['redis_cpu_us']:.0f} | {x['write_xacts']:.2f} | {x['wal_bytes']:,.0f} |")
    L.append("")
    if "a" in variants and "b" in variants and any((ratio("b", "a", c) or 1) < 0.9 for c in conns):
        # The machine is CPU-bound (wrk, node, PostgreSQL on 2 cores): requests/s follow the CPU
        # that each request costs in all the processes, so (a)/(b) in CPU per request is about
        # the most (b)/(a) in requests/s can be.
        cpu = lambda v, c: cells[(v, c)]["app_cpu_us"] + cells[(v, c)]["pg_cpu_us"] + cells[(v, c)]["redis_cpu_us"]
        parts = [f"{c} conn.: (b) {cpu('b', c):.0f} µs against (a) {cpu('a', c):.0f} µs, (a)/(b) "
                 f"{cpu('a', c) / cpu('b', c):.2f} (requests/s: {fmt_ratio(ratio('b', 'a', c))})" for c in conns]
        L.append("Why the target against (a) is missed: node, PostgreSQL and wrk share 2 cores, so "
                 "requests/s follow the CPU time each request costs. Node + PostgreSQL + Redis per "
                 "request: " + "; ".join(parts) + ". (b) makes three round trips to PostgreSQL on "
                 "one connection (BEGIN with idem_begin, the route's insert, idem_complete with "
                 "COMMIT) where (a) makes one, and writes the key's record (an insert and an update: "
                 "the WAL bytes) besides the row; 0.9 of (a) would need (b) to cost little more CPU "
                 "than (a) does.")
        L.append("")
    L.append("Checked after every run (the run fails otherwise): every answer 201, none with "
             "`Idempotent-Replayed`, no socket error; one order row per answer (plus at most one per "
             "connection still in flight when wrk stopped); (b) and (c) one completed record per row "
             "and none left in progress; (d) one Redis key holding a stored response per row; (a) "
             "neither records nor Redis keys. Chart: [results.svg](results.svg).")
    L.append("")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(L))
    (out / "results.svg").write_text(svg_chart(cells, variants, conns))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        check(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "report":
        report(sys.argv[2:])
    else:
        sys.exit(__doc__)
