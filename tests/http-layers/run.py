#!/usr/bin/env python3
"""The conformance runner of the HTTP drop-in layers (tests/http-layers/README.md).

    run.py --url URL [--capability short-ttl] [--tier core|profile]... [--only ID]...
           [--report markdown|json] [--out FILE] [PATHS...]
    run.py --self-test

PATHS are vector files or directories (default: the vectors directory beside this file).
Exit status: 0 when every applicable vector passed, 1 when one failed, 2 on usage errors
(including a vector that is not valid). --self-test validates every vector against
schema.json, starts bare.py (the fixture routes without any idempotency layer) and checks
that exactly the vectors of BARE_PASSES pass there and every other one fails.

Requests go out through http.client, one connection each, with the header names exactly as
the vector spells them. Python 3.10+; jsonschema (build/venv-clients) for the validation.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors"
SCHEMA = HERE / "schema.json"
CAPABILITIES = ("short-ttl",)
TIMEOUT = 30.0

# The vectors that hold without any idempotency layer (bare.py): a key on GET, a method that
# is not covered, and a key that expires while its route runs (a layer must then answer as if
# it were not there: the route's response, unstored; the 500 of a layer that maps IK002 to an
# error fails it). Every other vector must fail against bare.py (run.py --self-test).
BARE_PASSES = {
    "core/get-key-ignored",
    "profile/get-key-not-validated",
    "profile/put-not-covered",
    "profile/ttl-expired-during-route",
}


class UsageError(Exception):
    pass


class Mismatch(Exception):
    pass


# --- loading and validating ------------------------------------------------------------------

def vector_files(paths):
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"no such file or directory: {p}")
    return files


def load_schema_validator():
    try:
        import jsonschema
    except ImportError as e:
        raise UsageError("jsonschema is not installed (run from build/venv-clients: "
                         "bash scripts/client-venv.sh)") from e
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check_vector(vector, path, validator):
    """Every problem of one vector: the schema's, and the rules a schema cannot state."""
    problems = []
    if validator is not None:
        for err in sorted(validator.iter_errors(vector), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in err.absolute_path) or "(vector)"
            problems.append(f"{where}: {err.message[:200]}")
        if problems:
            return problems
    vid = vector.get("id", "")
    if path is not None and "/" in vid:
        tier, name = vid.split("/", 1)
        if path.stem != name or path.parent.name != tier:
            problems.append(f"id {vid} does not match its file {path.parent.name}/{path.name}")
    seen = set()
    named = set()
    for step in vector.get("steps", []):
        sid = step["id"]
        if sid in seen:
            problems.append(f"step id {sid} is used twice")
        for other in step.get("concurrentWith", []):
            if other not in seen:
                problems.append(f"step {sid}: concurrentWith names {other}, not an earlier step")
            elif other in named:
                problems.append(f"step {sid}: {other} is already in another concurrent group")
            named.add(other)
        same = step["expect"].get("bodyEquals")
        if isinstance(same, dict) and same["sameAs"] not in seen:
            problems.append(f"step {sid}: sameAs names {same['sameAs']}, not an earlier step")
        seen.add(sid)
    return problems


def load_vectors(paths, validator):
    vectors = []
    invalid = []
    ids = set()
    for f in vector_files(paths):
        try:
            v = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            invalid.append(f"{f}: not JSON: {e}")
            continue
        problems = check_vector(v, f, validator)
        if not problems and v["id"] in ids:
            problems = [f"id {v['id']} is used by another file"]
        if problems:
            invalid.extend(f"{f}: {p}" for p in problems)
            continue
        ids.add(v["id"])
        vectors.append(v)
    return vectors, invalid


# --- HTTP ------------------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value) in the order received
        self.body = body

    def header(self, name):
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


class Target:
    def __init__(self, url):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UsageError(f"--url must be an http(s) URL, got {url!r}")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port
        self.prefix = u.path.rstrip("/")

    def send(self, method, path, headers=None, body=None):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=TIMEOUT)
        try:
            data = body.encode("utf-8") if body is not None else None
            conn.putrequest(method, self.prefix + path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value.encode("latin-1"))
            if data is not None or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(data or b"")))
            conn.endheaders(data)
            r = conn.getresponse()
            body = r.read()
            return Response(r.status, r.getheaders(), body)
        finally:
            conn.close()

    def counter(self):
        r = self.send("GET", "/counter")
        if r.status != 200:
            raise Mismatch(f"GET /counter answered {r.status}")
        try:
            return json.loads(r.body)["count"]
        except (ValueError, KeyError, TypeError) as e:
            raise Mismatch(f"GET /counter answered {r.body[:80]!r}") from e


class Pending:
    """A request sent on a thread and left pending."""

    def __init__(self, target, request):
        self.response = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(target, request), daemon=True)
        self.thread.start()

    def _run(self, target, request):
        try:
            self.response = target.send(request["method"], request["path"],
                                        request.get("headers"), request.get("body"))
        except Exception as e:  # reported when the group is checked
            self.error = e

    def wait(self):
        self.thread.join(TIMEOUT + 5)
        if self.thread.is_alive():
            raise Mismatch("no answer in time")
        if self.error is not None:
            raise Mismatch(f"request failed: {self.error}")
        return self.response


# --- checking --------------------------------------------------------------------------------

def short(b, n=80):
    s = b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
    return repr(s if len(s) <= n else s[:n] + f"...({len(s)} chars)")


def same_json(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if a is None or b is None:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def check_response(step, r, bodies):
    e = step["expect"]
    if r.status != e["status"]:
        raise Mismatch(f"status {r.status}, expected {e['status']} (body {short(r.body)})")
    for name, want in e.get("headers", {}).items():
        got = r.header(name)
        if isinstance(want, str):
            if got != want:
                raise Mismatch(f"header {name}: {got!r}, expected {want!r}")
        elif want.get("present"):
            if got is None:
                raise Mismatch(f"header {name} absent, expected present")
        elif want.get("absent"):
            if got is not None:
                raise Mismatch(f"header {name}: {got!r}, expected absent")
        else:
            if got is None or not re.fullmatch(want["regex"], got):
                raise Mismatch(f"header {name}: {got!r}, expected to match /{want['regex']}/")
    if "bodyEquals" in e:
        want = e["bodyEquals"]
        want = bodies[want["sameAs"]] if isinstance(want, dict) else want.encode("utf-8")
        if r.body != want:
            raise Mismatch(f"body {short(r.body)}, expected {short(want)}")
    if "bodyJson" in e:
        try:
            doc = json.loads(r.body)
        except ValueError:
            raise Mismatch(f"body is not JSON: {short(r.body)}") from None
        if not isinstance(doc, dict):
            raise Mismatch(f"body is not a JSON object: {short(r.body)}")
        for member, want in e["bodyJson"].items():
            if member not in doc:
                raise Mismatch(f"body has no member {member!r}: {short(r.body)}")
            if not same_json(doc[member], want):
                raise Mismatch(f"body member {member!r} is {doc[member]!r}, expected {want!r}")
    if "bodyBytes" in e and len(r.body) != e["bodyBytes"]:
        raise Mismatch(f"body of {len(r.body)} bytes, expected {e['bodyBytes']}")


def run_vector(target, vector):
    """None when the vector passed, else the first mismatch as text."""
    started = []
    try:
        return _run_vector(target, vector, started)
    finally:
        # A vector that stopped early leaves no request behind to count in the next one.
        for p in started:
            p.thread.join(TIMEOUT + 5)


def _run_vector(target, vector, started):
    r = target.send("POST", "/reset")
    if r.status != 204:
        return f"POST /reset answered {r.status}, expected 204"
    steps = vector["steps"]
    deferred = {o for s in steps for o in s.get("concurrentWith", [])}
    pending = {}
    bodies = {}
    for step in steps:
        sid = step["id"]
        try:
            if step.get("delayMs"):
                time.sleep(step["delayMs"] / 1000)
            req = step["request"]
            if sid in deferred:
                pending[sid] = Pending(target, req)
                started.append(pending[sid])
                continue
            group = [s for s in steps if s["id"] in step.get("concurrentWith", [])] + [step]
            responses = {}
            this = Pending(target, req) if len(group) > 1 else None
            if this is not None:
                started.append(this)
            for s in group:
                p = pending.pop(s["id"], None) if s is not step else this
                responses[s["id"]] = p.wait() if p is not None else target.send(
                    req["method"], req["path"], req.get("headers"), req.get("body"))
        except Mismatch as m:
            return f"step {sid}: {m}"
        except (OSError, http.client.HTTPException) as e:
            return f"step {sid}: request failed: {e!r}"
        for s in group:
            try:
                check_response(s, responses[s["id"]], bodies)
            except Mismatch as m:
                return f"step {s['id']}: {m}"
            bodies[s["id"]] = responses[s["id"]].body
        wants = [s["expect"]["handlerInvocations"] for s in group
                 if "handlerInvocations" in s["expect"]]
        if wants:
            try:
                count = target.counter()
            except (Mismatch, OSError, http.client.HTTPException) as e:
                return f"step {sid}: {e}"
            for s in group:
                want = s["expect"].get("handlerInvocations")
                if want is not None and count != want:
                    return f"step {s['id']}: handler invocations {count}, expected {want}"
    if pending:
        return f"steps {sorted(pending)} were left pending: no later step names them"
    return None


def run_all(target, vectors, capabilities, out=sys.stdout):
    results = []
    for v in vectors:
        missing = [c for c in v.get("requires", []) if c not in capabilities]
        started = time.monotonic()
        if missing:
            outcome, detail = "not-applicable", "requires " + ", ".join(missing)
        else:
            try:
                detail = run_vector(target, v)
            except (OSError, http.client.HTTPException) as e:
                detail = f"request failed: {e!r}"
            outcome = "passed" if detail is None else "failed"
        ms = int((time.monotonic() - started) * 1000)
        results.append({"id": v["id"], "tier": v["tier"], "outcome": outcome,
                        "detail": detail, "ms": ms})
        label = {"passed": "PASS", "failed": "FAIL", "not-applicable": "N/A "}[outcome]
        print(f"{label} {v['id']}" + (f": {detail}" if detail else "") + f" ({ms} ms)",
              file=out, flush=True)
    return results


def summary(results):
    n = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "not-applicable")}
    return n


def report(results, kind, url, capabilities):
    n = summary(results)
    if kind == "json":
        return json.dumps({
            "target": url, "capabilities": sorted(capabilities),
            "generatedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "summary": {"passed": n["passed"], "failed": n["failed"],
                        "notApplicable": n["not-applicable"], "total": len(results)},
            "vectors": results}, indent=2) + "\n"
    lines = [f"# HTTP layer conformance: {url}", "",
             f"{n['passed']} passed, {n['failed']} failed, {n['not-applicable']} not applicable"
             f" (capabilities: {', '.join(sorted(capabilities)) or 'none'})", "",
             "| vector | tier | result | detail |", "|---|---|---|---|"]
    for r in results:
        detail = (r["detail"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{r['id']}` | {r['tier']} | {r['outcome']} | {detail} |")
    return "\n".join(lines) + "\n"


# --- the self-test ---------------------------------------------------------------------------

def vector_keys(vector):
    """The Idempotency-Key values a vector sends, an sf-string's quotes removed."""
    keys = set()
    for step in vector["steps"]:
        for name, value in step["request"].get("headers", {}).items():
            if name.lower() == "idempotency-key":
                keys.add(value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value)
    return keys


def self_test(paths):
    validator = load_schema_validator()
    vectors, invalid = load_vectors(paths, validator)
    for line in invalid:
        print(f"INVALID {line}")
    if invalid:
        print(f"self-test: {len(invalid)} problems in the vectors")
        return 1
    print(f"self-test: {len(vectors)} vectors valid against {SCHEMA.name}")
    owners = {}
    for v in vectors:
        for key in vector_keys(v):
            owners.setdefault(key, set()).add(v["id"])
    shared = {k: sorted(ids) for k, ids in owners.items() if len(ids) > 1}
    for key, ids in sorted(shared.items()):
        print(f"self-test: the key {key!r} is used by more than one vector: {', '.join(ids)}")
    if shared:
        return 1
    ids = {v["id"] for v in vectors}
    unknown = sorted(BARE_PASSES - ids)
    if unknown:
        print(f"self-test: BARE_PASSES names vectors that do not exist: {unknown}")
        return 1
    proc = subprocess.Popen([sys.executable, str(HERE / "bare.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            print(f"self-test: bare.py did not start (said {line!r})")
            return 1
        url = f"http://127.0.0.1:{m.group(1)}"
        print(f"self-test: running every vector against bare.py ({url}), which has no layer")
        results = run_all(Target(url), vectors, set(CAPABILITIES))
    finally:
        proc.terminate()
        proc.wait(10)
    wrong = []
    for r in results:
        should_pass = r["id"] in BARE_PASSES
        if should_pass and r["outcome"] != "passed":
            wrong.append(f"{r['id']} should pass without a layer but: {r['detail']}")
        if not should_pass and r["outcome"] != "failed":
            wrong.append(f"{r['id']} passes without any idempotency layer: it cannot catch a broken layer")
    for w in wrong:
        print(f"self-test: WRONG {w}")
    good = len(results) - len(wrong)
    print(f"self-test: {len(BARE_PASSES)} vectors must pass without a layer, every other one must fail")
    print(f"self-test: {good} passed, {len(wrong)} failed")
    return 1 if wrong else 0


# --- the command line ------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="run.py", description="Run the HTTP layer conformance vectors against a URL.")
    parser.add_argument("--url", help="the fixture's base URL, e.g. http://127.0.0.1:18100")
    parser.add_argument("--capability", action="append", default=[], choices=CAPABILITIES,
                        help="declare a capability of the target (short-ttl: ttl <= 2000 ms)")
    parser.add_argument("--tier", action="append", default=[], choices=("core", "profile"),
                        help="run only this tier (repeatable; default both)")
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run only this vector id (repeatable)")
    parser.add_argument("--report", choices=("markdown", "json"))
    parser.add_argument("--out", help="write the report here (default: stdout)")
    parser.add_argument("--self-test", action="store_true",
                        help="validate the vectors and prove they fail without a layer")
    parser.add_argument("paths", nargs="*", default=[str(VECTORS)], metavar="PATHS")
    args = parser.parse_args(argv)
    try:
        if args.self_test:
            if args.url or args.only or args.capability or args.tier or args.report or args.out:
                raise UsageError("--self-test takes no other option")
            return self_test(args.paths)
        if not args.url:
            raise UsageError("--url is required")
        if args.out and not args.report:
            raise UsageError("--out needs --report")
        target = Target(args.url)
        try:
            validator = load_schema_validator()
        except UsageError:
            validator = None
            print("run.py: jsonschema is missing: the vectors are not validated", file=sys.stderr)
        vectors, invalid = load_vectors(args.paths, validator)
        if invalid:
            raise UsageError("invalid vectors:\n  " + "\n  ".join(invalid))
        if not vectors:
            raise UsageError(f"no vectors in {' '.join(args.paths)}")
        ids = {v["id"] for v in vectors}
        unknown = [i for i in args.only if i not in ids]
        if unknown:
            raise UsageError(f"--only names no vector: {', '.join(unknown)}")
        if args.only:
            vectors = [v for v in vectors if v["id"] in args.only]
        if args.tier:
            vectors = [v for v in vectors if v["tier"] in args.tier]
        if not vectors:
            raise UsageError("the options leave no vector to run")
    except UsageError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    capabilities = set(args.capability)
    results = run_all(target, vectors, capabilities)
    n = summary(results)
    print(f"vectors: {n['passed']} passed, {n['failed']} failed, {n['not-applicable']} skipped")
    if args.report:
        text = report(results, args.report, args.url, capabilities)
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
    return 1 if n["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
