#!/usr/bin/env python3
"""Fails when a function in src/ is exported to C without the guard of every way in.

Every function that PostgreSQL can call (an `extern "C"` or `extern "C-unwind"` function
defined in src/: SQL functions, hooks, callbacks, GUC hooks, workers, _PG_init) must run its
work through `entry::enter` (src/entry.rs), or through `functions::call`, which does. A panic or a
PostgreSQL error unwinding out of such a function into C aborts the server process and
restarts the cluster. The one exception is the `pg_finfo_` record of a SQL function, which
returns a constant.

    python3 scripts/guard-check.py [SRC_DIR]   check (default: src/ beside this script)
    python3 scripts/guard-check.py --self-test check the checker against samples, then src/
"""

import os
import re
import sys
import tempfile

DEFINITION = re.compile(
    r'\bextern\s+"C(?:-unwind)?"\s+fn\s+(\$?[A-Za-z_][A-Za-z0-9_]*)\s*(?:<[^>]*>)?\s*\('
)
GUARDS = ("entry::enter(", "super::call(")
EXEMPT = re.compile(r"^(finfo|pg_finfo_\w+)$")


def strip(text):
    """The text with comments, strings and char literals blanked (lengths kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"' + " " * (j - i - 1) + '"')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i : i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i : i + 4])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def bodies(text):
    """(name, line, body or None for a declaration) of each extern "C" function."""
    code = strip(text)
    for m in DEFINITION.finditer(text):
        if code[m.start()] != "e":  # inside a comment or a string
            continue
        i, depth = m.end() - 1, 0
        # Past the parameter list, then to the body's brace or the declaration's semicolon.
        while i < len(code):
            ch = code[i]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch in "{;":
                break
            i += 1
        line = code.count("\n", 0, m.start()) + 1
        if i >= len(code) or code[i] == ";":
            yield m.group(1), line, None
            continue
        start, depth = i, 0
        while i < len(code):
            if code[i] == "{":
                depth += 1
            elif code[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        yield m.group(1), line, text[start : i + 1]


def check(src):
    problems, seen = [], 0
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            text = open(path, encoding="utf-8").read()
            for name, line, body in bodies(text):
                if body is None or EXEMPT.match(name):
                    continue
                seen += 1
                if not any(g in strip(body) for g in GUARDS):
                    problems.append(f"{path}:{line}: {name} is exported to C without entry::enter")
            # functions::call counts as a guard only while it goes through entry::enter.
            m = re.search(r"unsafe fn call\(.*?\n}\n", text, re.S)
            if f == "functions.rs" and (m is None or "entry::enter(" not in m.group(0)):
                problems.append(f"{path}: functions::call does not go through entry::enter")
    return problems, seen


def self_test():
    bad = '''
unsafe extern "C-unwind" fn hook(a: i32) -> bool { let s = "entry::enter("; a > 0 }
extern "C-unwind" { fn declared(x: i32); }
'''
    good = '''
unsafe extern "C-unwind" fn hook<const I: usize>(a: *mut [u8; 2]) -> bool {
    // SAFETY: ...
    unsafe { crate::entry::enter(c"x", || Ok(a.is_null())) }
}
pub extern "C" fn pg_finfo_f() -> &'static R { &V1 }
extern "C-unwind" { fn declared(x: i32) -> i32; }
'''
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "a.rs"), "w").write(bad)
        problems, seen = check(d)
        assert seen == 1 and len(problems) == 1 and "hook" in problems[0], (seen, problems)
        open(os.path.join(d, "a.rs"), "w").write(good)
        problems, seen = check(d)
        assert seen == 1 and not problems, (seen, problems)
    print("guard-check: self-test passed")


def main():
    args = sys.argv[1:]
    if args and args[0] == "--self-test":
        self_test()
        args = args[1:]
    src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    problems, seen = check(src)
    for p in problems:
        print("guard-check: " + p, file=sys.stderr)
    if problems or seen == 0:
        sys.exit(f"guard-check: {len(problems)} unguarded of {seen} ways in")
    print(f"guard-check: all {seen} ways in from PostgreSQL go through entry::enter")


if __name__ == "__main__":
    main()
