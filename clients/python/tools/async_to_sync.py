#!/usr/bin/env python3
"""Generates the sync modules of the Python client from their async originals.

    python3 tools/async_to_sync.py              # (in clients/python) rewrite the generated files
    python3 tools/async_to_sync.py --check      # exit 1, with a diff, if one is not up to date
    python3 tools/async_to_sync.py --self-test  # every rule on a sample, and the refusals

`src/idempotency/sync.py` is generated from `src/idempotency/aio.py` (TARGETS below) and
committed: users install the package without running this. `make test-client-python`
(scripts/client-python-test.sh) runs `--self-test` and `--check`.

How: the source is parsed with `ast`, and each node that differs in the sync module is
rewritten in place in the source text, at the position `ast` gives for it (so that comments
and the layout are kept: the generated module reads like the original, and the two differ
only where they must):

- `async def`, `async with`, `async for`: the word `async` goes; `await x`: the word `await`
  goes, and the parentheses of `(await x).y` with it.
- names, attributes, imported names and defined names: the table NAMES (`AsyncConnection` ->
  `Connection`, `__aenter__` -> `__enter__`, ...); DOTTED for dotted names (`asyncio.sleep`
  -> `time.sleep`) and MODULES for imported modules (`import asyncio` -> `import time`);
  UNWRAP for generic types that vanish (`Awaitable[T]` -> `T`, and the import of
  `Awaitable` is dropped). An import statement that changes is written again by
  `ast.unparse`.
- docstrings and comments: code in backquotes is changed like code (`async with x` -> `with
  x`, `psycopg.AsyncConnection` -> `psycopg.Connection`), the names of NAMES elsewhere too;
  then the target's own replacements (Target.text: each must be used, so that a stale one
  is noticed).
- where the two modules truly differ, a directive in the async source: a statement whose
  line ends with `# sync: CODE` is replaced by CODE (one line; `pass` where nothing is
  needed), and the directive comment goes with it.

The output starts with a header saying it is generated, is parsed again, and is refused if
anything async is left in it (`await`, `async`, a name beginning with `Async`, `asyncio`,
`Awaitable`, `__aenter__`, ...): a new construct in the source needs a new entry in a table
or a directive, not an edit of the output.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # clients/python

# --- The tables ---------------------------------------------------------------------------

NAMES = {
    "AsyncConnection": "Connection",
    "AsyncPipeline": "Pipeline",
    "AsyncCursor": "Cursor",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}
"""Identifiers renamed wherever they appear: names, attributes, imports, definitions."""

DOTTED = {
    "asyncio.sleep": "time.sleep",
}
"""Dotted names renamed as a whole (the module of an async function and its sync twin)."""

MODULES = {
    "asyncio": "time",
}
"""`import X` becomes `import Y` (only the dotted names of DOTTED may then use it)."""

UNWRAP = {
    "Awaitable",
}
"""Generic types that vanish: `Awaitable[T]` is `T`; their imports are dropped."""


@dataclass(frozen=True)
class Target:
    source: str
    """The async module, relative to clients/python."""
    output: str
    """The generated module, relative to clients/python."""
    text: list[tuple[str, str]] = field(default_factory=list)
    """Replacements in the docstrings and comments of the source (exact text, before the
    other changes); each must match at least once."""


TARGETS = [
    Target(
        source="src/idempotency/aio.py",
        output="src/idempotency/sync.py",
        text=[
            (
                "The asynchronous client on a `psycopg.AsyncConnection`: the same surface as\n"
                "`idempotency.sync`, with `async`/`await` (`idempotency.sync` is generated from\n"
                "this module by tools/async_to_sync.py).",
                "The synchronous client on a `psycopg.Connection`.",
            ),
        ],
    ),
]

# --- The transformation -------------------------------------------------------------------

DIRECTIVE = re.compile(r"#\s*sync:\s*(?P<code>.*?)\s*$")
ASYNC_NODES = (ast.AsyncFunctionDef, ast.AsyncWith, ast.AsyncFor)
PRIMARY = (ast.Call, ast.Attribute, ast.Name, ast.Subscript)


class GenerateError(Exception):
    pass


def header(target: Target) -> str:
    source = Path(target.source).name
    return (
        f"# Generated from {source} by tools/async_to_sync.py: do not edit. Change {source} (or the\n"
        f"# generator's tables) and run `python3 tools/async_to_sync.py` in clients/python.\n"
    )


def rename_words(text: str) -> str:
    for old, new in NAMES.items():
        text = re.sub(rf"(?<!\w){re.escape(old)}\b", new, text)
    return text


def code_span(code: str) -> str:
    """Code quoted in prose (between backquotes), changed like code."""
    code = re.sub(r"\basync\s+(?=(with|for|def)\b)", "", code)
    code = re.sub(r"\bawait\s+", "", code)
    for old, new in DOTTED.items():
        code = re.sub(rf"\b{re.escape(old)}\b", new, code)
    return rename_words(code)


def prose(text: str) -> str:
    """A docstring or a comment: code spans like code, the names of NAMES everywhere."""
    parts = re.split(r"(`[^`\n]*`)", text)
    return "".join(code_span(p) if p.startswith("`") and p.endswith("`") and len(p) > 1 else rename_words(p)
                   for p in parts)


class Generator:
    def __init__(self, target: Target, source: str):
        self.target = target
        self.source = source
        self.data = source.encode("utf-8")
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line.encode("utf-8")))
        self.edits: list[tuple[int, int, bytes]] = []
        self.replaced: list[tuple[int, int]] = []  # spans replaced by a directive
        self.text_used = [0] * len(target.text)

    # positions: ast gives UTF-8 byte columns; tokenize gives character columns.
    def at(self, lineno: int, col: int) -> int:
        return self.starts[lineno - 1] + col

    def start(self, node: ast.AST) -> int:
        return self.at(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.at(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def where(self, node: ast.AST) -> str:
        return f"{self.target.source}:{getattr(node, 'lineno', '?')}"

    def edit(self, start: int, end: int, new: str) -> None:
        self.edits.append((start, end, new.encode("utf-8")))

    def drop_word(self, node: ast.AST, word: bytes) -> None:
        """Remove `word` (async, await) and the blanks after it, at the node's start."""
        s = self.start(node)
        m = re.compile(rb"%s[ \t]+" % word).match(self.data, s)
        if m is None:
            raise GenerateError(f"{self.where(node)}: expected {word.decode()!r} here")
        self.edit(s, m.end(), "")

    def skip_blank(self, i: int, step: int) -> int:
        while 0 <= i < len(self.data) and self.data[i : i + 1] in (b" ", b"\t", b"\n", b"\r"):
            i += step
        return i

    def run(self) -> str:
        tree = ast.parse(self.source, filename=self.target.source)
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                child.parent = parent  # type: ignore[attr-defined]
        self.directives(tree)
        skip: set[int] = set()  # ids of nodes handled as part of their parent
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ASYNC_NODES):
                self.drop_word(node, b"async")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.definition(node)
            elif isinstance(node, ast.Await):
                self.await_(node)
            elif isinstance(node, ast.Attribute):
                dotted = dotted_name(node)
                if dotted in DOTTED:
                    self.edit(self.start(node), self.end(node), DOTTED[dotted])
                    skip.update(id(n) for n in ast.walk(node))
                elif node.attr in NAMES:
                    e = self.end(node)
                    s = e - len(node.attr.encode())
                    if self.data[s:e] != node.attr.encode():
                        raise GenerateError(f"{self.where(node)}: cannot find the attribute {node.attr}")
                    self.edit(s, e, NAMES[node.attr])
            elif isinstance(node, ast.Name):
                self.name(node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                self.import_(node)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                self.prose_at(self.start(node.value), self.end(node.value))
            elif isinstance(node, ast.comprehension) and node.is_async:
                raise GenerateError(f"{self.where(node.iter)}: async comprehensions are not handled")
        self.comments()
        for i, (old, _) in enumerate(self.target.text):
            if not self.text_used[i]:
                raise GenerateError(f"{self.target.source}: the replacement of {old[:40]!r}... matches nothing")
        return header(self.target) + self.apply()

    def definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        if node.name not in NAMES:
            return
        kw = rb"class" if isinstance(node, ast.ClassDef) else rb"(?:async[ \t]+)?def"
        m = re.compile(rb"%s[ \t]+(%s)\b" % (kw, re.escape(node.name.encode()))).match(self.data, self.start(node))
        if m is None:
            raise GenerateError(f"{self.where(node)}: cannot find the name of {node.name}")
        self.edit(m.start(1), m.end(1), NAMES[node.name])

    def await_(self, node: ast.Await) -> None:
        self.drop_word(node, b"await")
        parent = getattr(node, "parent", None)
        primary = (
            (isinstance(parent, ast.Attribute) and parent.value is node)
            or (isinstance(parent, ast.Call) and parent.func is node)
            or (isinstance(parent, ast.Subscript) and parent.value is node)
        )
        if primary and isinstance(node.value, PRIMARY):
            # `(await x).y`: without `await` the parentheses are noise.
            before = self.skip_blank(self.start(node) - 1, -1)
            after = self.skip_blank(self.end(node), 1)
            if self.data[before : before + 1] == b"(" and self.data[after : after + 1] == b")":
                self.edit(before, before + 1, "")
                self.edit(after, after + 1, "")

    def name(self, node: ast.Name) -> None:
        if node.id in NAMES:
            self.edit(self.start(node), self.end(node), NAMES[node.id])
        elif node.id in UNWRAP:
            parent = getattr(node, "parent", None)
            if not (isinstance(parent, ast.Subscript) and parent.value is node):
                raise GenerateError(f"{self.where(node)}: {node.id} is unwrapped only as {node.id}[T]")
            # Awaitable[T] -> T: drop `Awaitable[` and `]`, keep T (and its own changes).
            self.edit(self.start(parent), self.start(parent.slice), "")
            self.edit(self.end(parent.slice), self.end(parent), "")

    def import_(self, node: ast.Import | ast.ImportFrom) -> None:
        new = []
        for alias in node.names:
            if isinstance(node, ast.Import) and alias.name in MODULES:
                new.append(ast.alias(MODULES[alias.name], alias.asname))
            elif isinstance(node, ast.ImportFrom) and alias.name in UNWRAP:
                continue
            elif isinstance(node, ast.ImportFrom) and alias.name in NAMES:
                new.append(ast.alias(NAMES[alias.name], alias.asname))
            else:
                new.append(alias)
        if [(a.name, a.asname) for a in new] == [(a.name, a.asname) for a in node.names]:
            return
        s, e = self.start(node), self.end(node)
        if not new:  # the whole line goes
            line_start = self.starts[node.lineno - 1]
            line_end = self.starts[node.end_lineno] if node.end_lineno else e
            if self.data[line_start:s].strip() or self.data[e:line_end].strip():
                raise GenerateError(f"{self.where(node)}: an import to drop must be alone on its lines")
            self.edit(line_start, line_end, "")
            return
        stmt: ast.Import | ast.ImportFrom
        if isinstance(node, ast.Import):
            stmt = ast.Import(names=new)
        else:
            stmt = ast.ImportFrom(module=node.module, names=new, level=node.level)
        self.edit(s, e, ast.unparse(stmt))

    def prose_at(self, s: int, e: int) -> None:
        text = self.data[s:e].decode("utf-8")
        for i, (old, new) in enumerate(self.target.text):
            if old in text:
                self.text_used[i] += text.count(old)
                text = text.replace(old, new)
        changed = prose(text)
        if changed != self.data[s:e].decode("utf-8"):
            self.edit(s, e, changed)

    def comment_tokens(self) -> list[tuple[int, int, str]]:
        """(start, end, text) of every comment, in bytes."""
        out = []
        for tok in tokenize.generate_tokens(io.StringIO(self.source).readline):
            if tok.type == tokenize.COMMENT:
                (row, col), (erow, ecol) = tok.start, tok.end
                line = self.lines[row - 1]
                s = self.at(row, len(line[:col].encode("utf-8")))
                e = self.at(erow, len(self.lines[erow - 1][:ecol].encode("utf-8")))
                out.append((s, e, tok.string))
        return out

    def directives(self, tree: ast.Module) -> None:
        """`STATEMENT  # sync: CODE`: CODE replaces the statement that ends on the line."""
        simple = [n for n in ast.walk(tree) if isinstance(n, ast.stmt) and not hasattr(n, "body")]
        for s, e, text in self.comment_tokens():
            m = DIRECTIVE.match(text)
            if m is None:
                continue
            row = self.data[:s].count(b"\n") + 1
            stmts = [n for n in simple if n.end_lineno == row and self.end(n) <= s]
            if len(stmts) != 1:
                raise GenerateError(f"{self.target.source}:{row}: a `# sync:` directive ends the line of one statement")
            code = m.group("code")
            try:
                ast.parse(code)
            except SyntaxError as err:
                raise GenerateError(f"{self.target.source}:{row}: the directive's code does not parse: {err}") from err
            start = self.start(stmts[0])
            self.edit(start, e, code)
            self.replaced.append((start, e))

    def comments(self) -> None:
        for s, e, text in self.comment_tokens():
            if DIRECTIVE.match(text) is None:
                self.prose_at(s, e)

    def apply(self) -> str:
        def inside_directive(start: int, end: int) -> bool:
            return any(rs <= start and end <= re_ and (start, end) != (rs, re_) for rs, re_ in self.replaced)

        edits = sorted((ed for ed in self.edits if not inside_directive(ed[0], ed[1])), key=lambda ed: ed[:2])
        out = bytearray()
        pos = 0
        for s, e, new in edits:
            if s < pos:
                raise GenerateError(f"{self.target.source}: two changes overlap at byte {s}")
            out += self.data[pos:s] + new
            pos = e
        out += self.data[pos:]
        return out.decode("utf-8")


def dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted_name(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def verify(target: Target, text: str) -> None:
    """The output parses, and nothing async is left in it."""
    try:
        tree = ast.parse(text, filename=target.output)
    except SyntaxError as err:
        raise GenerateError(f"the generated {target.output} does not parse: {err}") from err
    left = set(NAMES) | set(MODULES) | set(UNWRAP) | {d.split(".")[0] for d in DOTTED}

    def bad(name: str) -> bool:
        return name in left or name.startswith("Async") or name.startswith("async")

    for node in ast.walk(tree):
        problem = None
        if isinstance(node, (*ASYNC_NODES, ast.Await)):
            problem = type(node).__name__
        elif isinstance(node, ast.comprehension) and node.is_async:
            problem = "an async comprehension"
        elif isinstance(node, ast.Name) and bad(node.id):
            problem = node.id
        elif isinstance(node, ast.Attribute) and bad(node.attr):
            problem = node.attr
        elif isinstance(node, ast.alias) and any(bad(part) for part in node.name.split(".")):
            problem = node.name
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and bad(node.name):
            problem = node.name
        if problem is not None:
            raise GenerateError(
                f"{target.output}:{getattr(node, 'lineno', '?')}: {problem} is left in the sync output "
                f"(add it to a table of tools/async_to_sync.py, or use a `# sync:` directive in {target.source})"
            )


def generate(target: Target, source: str | None = None) -> str:
    if source is None:
        source = (ROOT / target.source).read_text(encoding="utf-8")
    text = Generator(target, source).run()
    verify(target, text)
    return text


# --- The self-test: every rule on a sample, and the refusals ------------------------------

SAMPLE_TARGET = Target("sample_aio.py", "sample_sync.py", text=[("An async sample.", "A sync sample.")])
SAMPLE = """\
\"\"\"An async sample.\"\"\"
import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import psycopg


class Unit:
    async def __aenter__(self) -> Unit:  # enters `psycopg.AsyncConnection`
        return self


async def run(conn: psycopg.AsyncConnection[Any], fn: Callable[[], Awaitable[int]],
              cm: AbstractAsyncContextManager[psycopg.AsyncPipeline]) -> int:
    \"\"\"Run `await fn()` inside `async with cm`.\"\"\"
    await conn.set_autocommit(True)  # sync: conn.autocommit = True
    async with cm:
        row = await (await conn.execute("SELECT 1")).fetchone()
    async for x in (await conn.cursor().stream("SELECT 1")):
        pass
    await asyncio.sleep(0.1)
    return await fn() + (await cm.__aenter__()).x
"""
EXPECTED = """\
# Generated from sample_aio.py by tools/async_to_sync.py: do not edit. Change sample_aio.py (or the
# generator's tables) and run `python3 tools/async_to_sync.py` in clients/python.
\"\"\"A sync sample.\"\"\"
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg


class Unit:
    def __enter__(self) -> Unit:  # enters `psycopg.Connection`
        return self


def run(conn: psycopg.Connection[Any], fn: Callable[[], int],
              cm: AbstractContextManager[psycopg.Pipeline]) -> int:
    \"\"\"Run `fn()` inside `with cm`.\"\"\"
    conn.autocommit = True
    with cm:
        row = conn.execute("SELECT 1").fetchone()
    for x in (conn.cursor().stream("SELECT 1")):
        pass
    time.sleep(0.1)
    return fn() + cm.__enter__().x
"""
REFUSED = [
    ("class AsyncThing: pass\n", "AsyncThing is left"),
    ("import asyncio.locks\n", "asyncio.locks is left"),
    ("async def f(xs):\n    return [x async for x in xs]\n", "async comprehensions"),
    ("x = 1; y = 2  # sync: x = 2\n", "a `# sync:` directive ends the line of one statement"),
    ("x = 1  # sync: x = (\n", "does not parse"),
]


def self_test() -> int:
    failures = []
    got = generate(SAMPLE_TARGET, SAMPLE)
    if got != EXPECTED:
        failures.append("the sample:\n" + "".join(difflib.unified_diff(
            EXPECTED.splitlines(keepends=True), got.splitlines(keepends=True), "expected", "generated")))
    for source, message in REFUSED:
        try:
            generate(Target("refused_aio.py", "refused_sync.py"), source)
            failures.append(f"not refused: {source!r}")
        except GenerateError as err:
            if message not in str(err):
                failures.append(f"{source!r} refused with {err}, expected {message!r}")
    try:
        generate(SAMPLE_TARGET, SAMPLE.replace("An async sample.", "A sample."))
        failures.append("an unused text replacement was not noticed")
    except GenerateError as err:
        if "matches nothing" not in str(err):
            failures.append(f"an unused text replacement: {err}")
    for f in failures:
        print(f"async_to_sync self-test: {f}", file=sys.stderr)
    if not failures:
        print(f"async_to_sync self-test: the sample and {len(REFUSED) + 1} refusals as expected")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Generate the sync modules from the async ones.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 with a diff when a generated file is not up to date")
    parser.add_argument("--self-test", action="store_true", help="check the generator itself on a sample")
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test()
    stale = 0
    for target in TARGETS:
        try:
            text = generate(target)
        except GenerateError as err:
            print(f"async_to_sync: {err}", file=sys.stderr)
            return 2
        path = ROOT / target.output
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            print(f"async_to_sync: {target.output} is up to date with {target.source}")
            continue
        if args.check:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                f"{target.output} (as it is)", f"{target.output} (generated from {target.source})"))
            print(f"async_to_sync: {target.output} is not what {target.source} generates: run "
                  f"`python3 tools/async_to_sync.py` in clients/python (and do not edit {target.output})",
                  file=sys.stderr)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"async_to_sync: wrote {target.output} from {target.source}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
