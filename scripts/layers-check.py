#!/usr/bin/env python3
"""Fails when the modules of src/ do not import one way: down the layers, with no circle.

The extension's modules are in four layers (docs/design.md, "The layers"), each importing only
its own layer and the ones below:

  1. values and errors   datum, signature, errors, entry (the guard), compat
  2. what the functions stand on: settings, counters, the key lock, Citus placement, the store
  3. the SQL functions   their arguments and results (fmgr), their protocol (api)
  4. the ways in         the SQL functions' entry points, _PG_init, the planner hook, the workers

An import is a path `crate::m`, `super::m` or a child module's name used in its parent. The
check fails on an import that points to a higher layer, on a circle of imports (even inside
one layer), and on a module that LAYERS does not place (a new module is given its layer here).

    python3 scripts/layers-check.py [SRC_DIR]    check (default: src/ beside this script)
    python3 scripts/layers-check.py --self-test  check the checker against samples, then src/
    python3 scripts/layers-check.py --graph      print every module's imports, by layer
"""

import os
import re
import sys
import tempfile

LAYERS = [
    ("values and errors", ["datum", "signature", "errors", "entry", "compat"]),
    ("settings, counters, lock, placement, store",
     ["settings", "stats", "lock", "store", "store::columns", "store::record", "store::shape",
      "store::sql", "store::direct", "store::placement"]),
    ("SQL functions", ["fmgr", "api"]),
    ("ways in", ["functions", "citus", "worker", "lib"]),
]
# Test code is not part of the library's shape.
SKIP = {"tests"}


def strip(text):
    """The text without comments and string literals (so that prose naming a module is not an
    import), and without the `#[cfg(test)]`/`pg_test` modules at the end of a file."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    m = re.search(r"#\[cfg\((?:any\()?test", text)
    return text[: m.start()] if m else text


def modules(src):
    """{module path: file} for every .rs file under src (lib.rs is `lib`)."""
    found = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            name = "::".join(rel)
            if name not in SKIP:
                found[name] = os.path.join(root, f)
    return found


def imports(name, text, known):
    """The modules `name` imports (other than itself)."""
    code = strip(text)
    out = set()
    for path in re.findall(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", code):
        parts = path.split("::")
        for n in range(len(parts), 0, -1):
            cand = "::".join(parts[:n])
            if cand in known:
                out.add(cand)
                break
    parent = name.rsplit("::", 1)[0] if "::" in name else None
    if parent:
        for path in re.findall(r"\bsuper::([A-Za-z_][A-Za-z0-9_]*|\{)", code):
            sib = parent + "::" + path.split("::")[0]
            out.add(sib if sib in known else parent)
    prefix = "" if name == "lib" else name + "::"
    for child in re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", code, re.M):
        c = prefix + child
        if c in known and re.search(r"\b" + child + r"::", code):
            out.add(c)
    # A bare `use x::...` of a module declared in lib.rs (2018 paths inside lib.rs).
    if name == "lib":
        for m in known:
            if "::" not in m and re.search(r"\b" + m + r"::", code):
                out.add(m)
    out.discard(name)
    return out


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def check(src, layers=None):
    layers = layers or LAYERS
    level = {m: i for i, (_, ms) in enumerate(layers) for m in ms}
    known = modules(src)
    edges = {m: imports(m, open(f, encoding="utf-8").read(), known) for m, f in known.items()}
    problems = []
    for m in sorted(known):
        if m not in level:
            problems.append(f"{m} is in no layer (give it one in scripts/layers-check.py)")
    for m in sorted(edges):
        for d in sorted(edges[m]):
            if m in level and d in level and level[d] > level[m]:
                problems.append(
                    f"{m} ({layers[level[m]][0]}) imports {d}, which is above it ({layers[level[d]][0]})"
                )
    for c in cycles(edges):
        problems.append("a circle of imports: " + ", ".join(c))
    return problems, edges, level


def self_test():
    samples = {
        # a leaf, a module above it, and the top: fine
        "ok": {"datum.rs": "pub fn f() {}", "store/mod.rs": "mod sql;\nuse crate::datum::f; fn g() { sql::h() }",
               "store/sql.rs": "use crate::datum::f;", "api.rs": "use crate::store::Records;",
               "functions.rs": "use crate::api;", "lib.rs": "mod api; mod datum; mod store; mod functions;"},
        "up": {"datum.rs": "use crate::api::x; // crate::store in a comment is no import", "api.rs": "",
               "lib.rs": ""},
        "circle": {"store/mod.rs": "mod sql;\nfn g() { sql::h() }", "store/sql.rs": "use super::Row;",
                   "lib.rs": ""},
        "unplaced": {"novel.rs": "", "lib.rs": ""},
    }
    expect = {"ok": [], "up": ["datum (values and errors) imports api"],
              "circle": ["a circle of imports: store, store::sql"], "unplaced": ["novel is in no layer"]}
    layers = [("values and errors", ["datum"]), ("store", ["store", "store::sql"]),
              ("SQL functions", ["api"]), ("ways in", ["functions", "lib"])]
    for name, files in samples.items():
        with tempfile.TemporaryDirectory() as d:
            for path, text in files.items():
                os.makedirs(os.path.dirname(os.path.join(d, path)), exist_ok=True)
                open(os.path.join(d, path), "w").write(text)
            problems, _, _ = check(d, layers)
            want = expect[name]
            assert len(problems) == len(want) and all(
                p.startswith(w) for p, w in zip(problems, want)
            ), (name, problems)
    print("layers-check: self-test passed")


def main():
    args = sys.argv[1:]
    graph = "--graph" in args
    args = [a for a in args if a != "--graph"]
    if args and args[0] == "--self-test":
        self_test()
        args = args[1:]
    src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    problems, edges, level = check(src)
    if graph:
        for i, (title, _) in enumerate(LAYERS):
            print(f"{i + 1}. {title}")
            for m in sorted(m for m in edges if level.get(m) == i):
                print(f"   {m} -> {', '.join(sorted(edges[m])) or '(nothing)'}")
    for p in problems:
        print("layers-check: " + p, file=sys.stderr)
    if problems:
        sys.exit(f"layers-check: {len(problems)} problems in {len(edges)} modules")
    arrows = sum(len(e) for e in edges.values())
    print(f"layers-check: {len(edges)} modules, {arrows} imports, all downward, no circle")


if __name__ == "__main__":
    main()
