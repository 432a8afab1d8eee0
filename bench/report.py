#!/usr/bin/env python3
"""Turns bench/run.sh's results.csv into results.md (tables, ratios, targets) and bench.png.

    python3 bench/report.py OUT_DIR

Every figure comes from OUT_DIR/results.csv and OUT_DIR/machine.txt; nothing is typed in.
Exits non-zero if a case is missing (so a broken harness fails `make test-bench`); a missed
target is reported, not an error.
"""
import csv
import os
import sys

out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
machine = open(os.path.join(out, "machine.txt")).read().strip()


def pick(section, case=None, sync=None, clients=None):
    for r in rows:
        if r["section"] == section and (case is None or r["case"] == case) \
                and (sync is None or r["sync"] == sync) and (clients is None or r["clients"] == str(clients)):
            return float(r["value"])
    raise SystemExit(f"report: missing {section}/{case}/{sync}/{clients} in results.csv")


def extra(section, case, sync=None, clients=None):
    for r in rows:
        if r["section"] == section and r["case"] == case and (sync is None or r["sync"] == sync) \
                and (clients is None or r["clients"] == str(clients)):
            return r["extra"]
    return ""


syncs = sorted({r["sync"] for r in rows if r["section"] == "matrix"}, reverse=True)  # on, off
clients = sorted({int(r["clients"]) for r in rows if r["section"] == "matrix"})
cases = [("baseline", "(1) baseline: payment insert"),
         ("idem", "(2) one transaction: begin + insert + complete"),
         ("replay", "(3) replay: idem_begin on a completed key"),
         ("pkselect", "(3') primary-key SELECT of a same-size row"),
         ("alt", "(4) hand-written PL/pgSQL alternative"),
         ("phases", "(5) phases: begin, then insert + complete"),
         ("floor", "(6) round-trip floor of (2): trivial SELECTs for begin and complete"),
         ("keyrow", "(6') the least (2) can do: (6), the key's record INSERTed once"),
         ("pkcheck", "(3'') the least (3) can do: (3'), the fingerprint compared")]
targets = []  # (what, value, goal, met)
# The ratios the targets name, and the other ones worth a look.
TARGET_RATIOS = [("(2) / (4): one transaction against the PL/pgSQL alternative", "idem", "alt", 1.5),
                 ("(2) / (6): one transaction against its round-trip floor", "idem", "floor", 0.85),
                 ("(3) / (3'): replay against a primary-key SELECT", "replay", "pkselect", 0.8)]
RATIOS = [(label.split(":")[0], a, b) for label, a, b, _ in TARGET_RATIOS] + [
    ("(2) / (1)", "idem", "baseline"), ("(5) / (1)", "phases", "baseline"), ("(4) / (1)", "alt", "baseline"),
    # The ceilings: the least plain SQL that keeps the key's contract (the record read, or
    # written once, with the fingerprint) against the same reference, and ours against it.
    ("(6') / (6): ceiling of (2) / (6)", "keyrow", "floor"), ("(2) / (6')", "idem", "keyrow"),
    ("(3'') / (3'): ceiling of (3) / (3')", "pkcheck", "pkselect"), ("(3) / (3'')", "replay", "pkcheck")]
md = ["# Benchmark results", "", "```", machine, "```", ""]

md += ["## Throughput (TPS; a transaction is one request)", ""]
for sync in syncs:
    md += [f"synchronous_commit = {sync}", "",
           "| case | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in clients) + " |",
           "|---|" + "---:|" * len(clients)]
    for case, label in cases:
        md.append(f"| {label} | " + " | ".join(f"{pick('matrix', case, sync, c):,.0f}" for c in clients) + " |")
    md += ["", "Ratios:", "",
           "| ratio | " + " | ".join(str(c) for c in clients) + " |", "|---|" + "---:|" * len(clients)]
    for label, a, b in RATIOS:
        md.append(f"| {label} | " + " | ".join(
            f"{pick('matrix', a, sync, c) / pick('matrix', b, sync, c):.2f}" for c in clients) + " |")
    md.append("")

for label, a, b, goal in TARGET_RATIOS:
    v = min(pick("matrix", a, s, c) / pick("matrix", b, s, c) for s in syncs for c in clients)
    targets.append((f"{label.split(':')[0]} ≥ {goal} (worst cell: every client count, synchronous_commit "
                    f"{' and '.join(syncs)})", f"{v:.2f}", goal, v >= goal))

bd = [r for r in rows if r["section"] == "breakdown"]
if bd:
    md += ["## Where the time goes (pgbench -r, 1 client, synchronous_commit off)", "",
           "| case | statement | ms |", "|---|---|---:|"]
    for r in bd:
        md.append(f"| {r['case']} | `{r['extra']}` | {float(r['value']):.3f} |")
    for case in ["baseline", "idem"]:
        total = sum(float(r["value"]) for r in bd if r["case"] == case)
        md.append(f"| {case} | **sum** | **{total:.3f}** |")
    md.append("")

md += ["## Fingerprint (µs per document, one client)", "",
       "| size | jsonb text bytes | idem_fingerprint | sha256(jsonb::text::bytea) | ratio (sha256 / idem) |",
       "|---|---:|---:|---:|---:|"]
worst = None
for size in ["100", "1k", "64k"]:
    i, s = pick("fingerprint", "idem", None, size), pick("fingerprint", "sha256", None, size)
    nbytes = extra("fingerprint", "idem", None, size).split()[1]
    md.append(f"| {size} | {nbytes} | {i:.2f} | {s:.2f} | {s / i:.2f} |")
    worst = s / i if worst is None else min(worst, s / i)
targets.append(("idem_fingerprint at least as fast as sha256(jsonb::text::bytea) (worst size; ≥ 1 is met)",
                f"{worst:.2f}", 1.0, worst >= 1.0))
md.append("")

hot_rows = [r for r in rows if r["section"] == "hot"]
md += ["## HOT completions (pg_stat_user_tables, over every matrix run)", "",
       "| case | HOT updates | all updates | share |", "|---|---:|---:|---:|"]
for r in hot_rows:
    total = int(r["extra"].split()[1])
    hot = int(float(r["value"]))
    share = hot / total if total else float("nan")
    md.append(f"| {r['case']} | {hot:,} | {total:,} | {share:.1%} |")
    targets.append((f"HOT completions ≥ 95% ({r['case']})", f"{share:.1%}", 0.95, share >= 0.95))
md.append("")

scale = [r for r in rows if r["section"] == "scale"]
sizes = sorted({int(r["clients"]) for r in scale})
md += ["## Scale (stored keys loaded with INSERT ... SELECT, UUID keys in random order; idem_begin latency at 1 client)", "",
       "| stored keys | bytes/record (table + indexes) | of which heap, indexes | begin, new key (ms) | begin, replay of a stored key (ms) |",
       "|---:|---:|---|---:|---:|"]
for n in sizes:
    md.append(f"| {n:,} | {pick('scale', 'bytes', None, n):.0f} | {extra('scale', 'bytes', None, n)} | "
              f"{pick('scale', 'begin_new', None, n):.3f} | {pick('scale', 'begin_replay', None, n):.3f} |")
proto = [r for r in rows if r["section"] == "bytes"]
for r in proto:
    md.append(f"\nRecords written by the protocol itself in the matrix ({int(float(r['clients'])):,} records, "
              f"after VACUUM): {float(r['value']):.0f} bytes/record ({r['extra']}).")
md.append("")
if sizes:
    b = max(pick("scale", "bytes", None, n) for n in sizes)
    targets.append(("≤ 200 bytes per record without a response, indexes included (worst scale point)",
                    f"{b:.0f}", 200, b <= 200))
    lo, hi = min(sizes), max(sizes)
    if hi > lo:
        for s in ["new", "replay"]:
            v = pick("scale", f"begin_{s}", None, hi) / pick("scale", f"begin_{s}", None, lo)
            targets.append((f"begin ({s} key) at {hi:,} keys ≤ 1.2 × at {lo:,}", f"{v:.2f}", 1.2, v <= 1.2))

idle, busy = pick("purge", "idle_p99"), pick("purge", "purge_p99")
md += ["## Purge under load", "",
       f"Live load: (2) at {extra('purge', 'idle_p99').split(' at ')[1]}, 4 clients, synchronous_commit on.", "",
       "| | p99 latency (ms) | transactions |", "|---|---:|---|",
       f"| live load alone | {idle:.2f} | {extra('purge', 'idle_p99').split(' tx')[0]} |",
       f"| during idem_purge(10000) in a loop | {busy:.2f} | {extra('purge', 'purge_p99')} |"]
widle, wbusy = pick("purge", "worker_idle_p99"), pick("purge", "worker_p99")
md += [f"| live load alone, library preloaded (worker off) | {widle:.2f} | {extra('purge', 'worker_idle_p99').split(' tx')[0]} |",
       f"| during the purge worker's pass | {wbusy:.2f} | {extra('purge', 'worker_p99')} |", ""]
targets.append(("purge: live p99 ≤ 2 × idle p99", f"{busy / idle:.2f}", 2.0, busy / idle <= 2.0))
targets.append(("purge worker: live p99 ≤ 2 × idle p99", f"{wbusy / widle:.2f}", 2.0, wbusy / widle <= 2.0))

canon = os.path.join(out, "canonical.txt")
if os.path.exists(canon):
    md += ["## Where sha256(jsonb::text) is wrong", "", "```", open(canon).read().rstrip(), "```", ""]

md += ["## Targets", "", "| target | measured | met |", "|---|---:|---|"]
for what, val, goal, met in targets:
    md.append(f"| {what} | {val} | {'met' if met else '**missed**'} |")
md.append("")
who = [r for r in rows if r["section"] == "who"]
if who:
    labels = dict(cases)
    fields = [dict(kv.split(" ", 1) for kv in r["extra"].split("; ")) for r in who]
    profiled = "postgres" in fields[0]
    md += ["## Who runs during a 1-client request (synchronous_commit on)", "",
           "pgbench at 1 client, each case alone for one run, after a CHECKPOINT; the WAL it wrote "
           "per transaction, and of it the full-page images (the first change of each page after "
           "the checkpoint writes the whole page; from pg_stat_wal, PostgreSQL 14 and later); "
           + ("with perf's samples of every CPU (every 250 µs of CPU time), the CPU time per "
              "transaction of each party, in µs: the server's PostgreSQL code and libc, the "
              "extension's library (its own code: what it calls in PostgreSQL counts as "
              "PostgreSQL), the server in the kernel, the client (pgbench, its libpq and kernel "
              "time), anything else; and the time when no CPU runs (the transaction's time less "
              "the parties' sum: wake-ups, the commit's flush). One run per case, under the "
              "profiler: read the columns, not the totals' order." if profiled
              else "perf was not available: no profile."), ""]
    if profiled:
        parties = ["postgres", "extension", "kernel", "client", "other"]
        md += ["| case | µs per transaction | PostgreSQL | extension | server kernel | client | other | no CPU runs | WAL bytes | full-page images |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r, f in zip(who, fields):
            nobody = float(r["value"]) - sum(float(f[k]) for k in parties)
            md.append(f"| {labels[r['case']]} | {float(r['value']):.1f} | " + " | ".join(
                f[k] for k in parties) + f" | {nobody:.1f} | {f['wal']} | {f.get('fpi', 'n/a')} |")
    else:
        md += ["| case | µs per transaction | WAL bytes | full-page images |", "|---|---:|---:|---:|"]
        for r, f in zip(who, fields):
            md.append(f"| {labels[r['case']]} | {float(r['value']):.1f} | {f['wal']} | {f.get('fpi', 'n/a')} |")
open(os.path.join(out, "results.md"), "w").write("\n".join(md))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The ratios the targets name, per client count, each beside its target line.
fig, axes = plt.subplots(1, len(syncs), figsize=(6 * len(syncs), 4.5), squeeze=False)
width = 0.8 / len(TARGET_RATIOS)
colors = ["tab:blue", "tab:orange", "tab:green"]
for ax, sync in zip(axes[0], syncs):
    for k, (label, a, b, goal) in enumerate(TARGET_RATIOS):
        xs = [j + (k - len(TARGET_RATIOS) / 2 + 0.5) * width for j in range(len(clients))]
        ax.bar(xs, [pick("matrix", a, sync, c) / pick("matrix", b, sync, c) for c in clients], width,
               label=label, color=colors[k])
        ax.hlines(goal, xs[0] - width / 2, xs[-1] + width / 2, colors=colors[k], linestyles="dashed")
    ax.set_xticks(range(len(clients)))
    ax.set_xticklabels([f"{c} client{'s' if c > 1 else ''}" for c in clients])
    ax.set_ylabel("ratio of TPS (dashed: the target)")
    ax.set_title(f"synchronous_commit = {sync}")
    ax.grid(axis="y", alpha=0.3)
axes[0][0].legend(fontsize=7, loc="upper left")
fig.suptitle("idempotency: the ratios the targets name (" + machine.splitlines()[0] + ")", fontsize=10)
fig.tight_layout()
fig.savefig(os.path.join(out, "bench.png"), dpi=110)
print("\n".join(md))
