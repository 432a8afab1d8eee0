#!/usr/bin/env python3
r"""The upgrade scripts name the blocks of an install script they take instead of copying them.

A line of an upgrade script's source (sql/idempotency--A--B.sql)

    \include_block releases/idempotency--0.3.0.sql "scale-out on Citus"

stands for the block of that install script (a path under sql/) from its line
`-- BEGIN scale-out on Citus ...` to its line `-- END scale-out on Citus`, both included. The
block comes from the FROZEN install script of the upgrade's target version: for 0.2.0 -> 0.3.0
sql/releases/idempotency--0.3.0.sql, for an upgrade to the version being made the current
sql/idempotency.sql (which becomes sql/releases/idempotency--B.sql at the release; its
includes then move there). Expanding an old upgrade from the current install script would
create the newer version's objects.

A source with an include is not valid SQL (a backslash line is a syntax error in an extension
script), so an unexpanded copy fails at ALTER EXTENSION instead of doing half an upgrade. Every
place that ships SQL writes the expanded files: the one install step (scripts/lib.sh install),
`make package`, scripts/deb.sh; the PGXN archive ships the sources and this script and installs
through the Makefile, hence scripts/lib.sh.

    python3 scripts/sql-include.py expand FILE...        each expanded file to stdout, in order
    python3 scripts/sql-include.py install DIR           every upgrade script, expanded, into DIR
    python3 scripts/sql-include.py check                 every include names one block that exists
    python3 scripts/sql-include.py --self-test           check, and that it catches what it should

`make test-meta` runs --self-test. Standard library only.
"""
import glob
import os
import re
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = re.compile(r'^\\include_block\s+(\S+)\s+"([^"]+)"\s*$')


class Error(Exception):
    pass


def upgrade_scripts(root):
    return sorted(glob.glob(os.path.join(root, "sql", "idempotency--*--*.sql")))


def block(root, rel, name):
    """The lines of block `name` of the install script sql/`rel`, BEGIN and END lines included."""
    path = os.path.join(root, "sql", rel)
    if not os.path.isfile(path):
        raise Error(f"no file sql/{rel}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    begin = re.compile(r"^-- BEGIN " + re.escape(name) + r"(\s*$|\s+\()")
    end = re.compile(r"^-- END " + re.escape(name) + r"\s*$")
    starts = [i for i, line in enumerate(lines) if begin.match(line)]
    if len(starts) != 1:
        raise Error(f'sql/{rel} has {len(starts)} lines "-- BEGIN {name}", not one')
    ends = [i for i, line in enumerate(lines) if end.match(line) and i > starts[0]]
    if not ends:
        raise Error(f'sql/{rel} has no line "-- END {name}" after its BEGIN')
    body = lines[starts[0]:ends[0] + 1]
    if any(INCLUDE.match(line) for line in body):
        raise Error(f"block {name!r} of sql/{rel} holds an include itself")
    return body


def expand(root, path):
    """The text of the upgrade script at `path` with every include replaced by its block."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = INCLUDE.match(line.rstrip("\n"))
            if line.startswith("\\") and not m:
                raise Error(f"{os.path.relpath(path, root)}:{n}: not an include: {line.rstrip()}")
            if not m:
                out.append(line)
                continue
            try:
                out.extend(block(root, m.group(1), m.group(2)))
            except Error as e:
                raise Error(f"{os.path.relpath(path, root)}:{n}: {e}") from None
    text = "".join(out)
    if not text.endswith("\n"):
        text += "\n"
    return text


def check(root):
    """Every include of every upgrade script names a block that exists; returns the count."""
    count = 0
    for path in upgrade_scripts(root):
        with open(path, encoding="utf-8") as f:
            count += sum(1 for line in f if INCLUDE.match(line.rstrip("\n")))
        expand(root, path)
    return count


def install(root, target):
    for path in upgrade_scripts(root):
        dest = os.path.join(target, os.path.basename(path))
        text = expand(root, path)
        tmp = dest + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)


def self_test():
    n = check(ROOT)
    print(f"sql-include: {n} include(s) in {len(upgrade_scripts(ROOT))} upgrade script(s), every one names a block that exists")
    cases = {
        "a block that does not exist": lambda s: s.replace('"', '"no such ', 1),
        "a file that does not exist": lambda s: re.sub(r"^\\include_block\s+\S+", r"\\include_block releases/idempotency--9.9.9.sql", s, count=1, flags=re.M),
        "a misspelt directive": lambda s: re.sub(r"^\\include_block", r"\\include_blok", s, count=1, flags=re.M),
    }
    with_include = [p for p in upgrade_scripts(ROOT) if any(INCLUDE.match(l.rstrip("\n")) for l in open(p, encoding="utf-8"))]
    if not with_include:
        raise Error("no upgrade script has an include: nothing to test against")
    failures = 0
    for what, breaker in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(ROOT, "sql"), os.path.join(tmp, "sql"))
            target = os.path.join(tmp, "sql", os.path.basename(with_include[0]))
            with open(target, encoding="utf-8") as f:
                src = f.read()
            broken = breaker(src)
            assert broken != src, what
            with open(target, "w", encoding="utf-8") as f:
                f.write(broken)
            try:
                check(tmp)
            except Error as e:
                print(f"sql-include --self-test: {what}: caught ({e})")
                continue
            print(f"sql-include --self-test: {what}: NOT caught", file=sys.stderr)
            failures += 1
    # A block with two BEGIN lines is ambiguous.
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "sql"))
        with open(os.path.join(tmp, "sql", "a.sql"), "w") as f:
            f.write("-- BEGIN x\nSELECT 1;\n-- END x\n-- BEGIN x (again)\n-- END x\n")
        with open(os.path.join(tmp, "sql", "idempotency--1--2.sql"), "w") as f:
            f.write('\\include_block a.sql "x"\n')
        try:
            check(tmp)
            print("sql-include --self-test: a block named twice: NOT caught", file=sys.stderr)
            failures += 1
        except Error as e:
            print(f"sql-include --self-test: a block named twice: caught ({e})")
        with open(os.path.join(tmp, "sql", "a.sql"), "w") as f:
            f.write("-- keep\n-- BEGIN x (1.0)\nSELECT 1;\n-- END x\nSELECT 2;\n")
        got = expand(tmp, os.path.join(tmp, "sql", "idempotency--1--2.sql"))
        if got != "-- BEGIN x (1.0)\nSELECT 1;\n-- END x\n":
            print(f"sql-include --self-test: expansion is {got!r}", file=sys.stderr)
            failures += 1
    if failures:
        raise Error(f"{failures} self-test case(s) failed")
    print("sql-include --self-test: passed")


def main(argv):
    try:
        if argv == ["--self-test"]:
            self_test()
        elif argv == ["check"]:
            n = check(ROOT)
            print(f"sql-include: {n} include(s), every one names a block that exists")
        elif len(argv) == 2 and argv[0] == "install":
            install(ROOT, argv[1])
        elif len(argv) >= 2 and argv[0] == "expand":
            for path in argv[1:]:
                sys.stdout.write(expand(ROOT, path))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Error as e:
        print(f"sql-include: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
