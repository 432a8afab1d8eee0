"""The drop-in layer's framework-neutral part (docs/http.md, "The drop-in layer"), written once
for `idempotency.starlette` (async, on `idempotency.aio`) and `idempotency.django` (sync, on
`idempotency.sync`).

- `Options`: the settings, checked when the layer is built (a tenant function or
  `global_keys=True`; `Set-Cookie` never named in `replay_headers`; ...).
- `prepare(...)`: what a request means to the layer: covered or not, the key, the scope and
  the command (`{"v": 1, "method", "path", "query", "headers", "body"}`), or the problem that
  answers it (400, 401, 413) before anything is claimed.
- `stores(...)`, `stored_response(...)`, `replay_reply(...)`: what is kept of a response and
  how a replay answers it; `in_progress_reply(...)` and `problem_reply(...)` the layer's own
  answers (`Reply`: status, headers, body bytes).
- `run_async(...)` and `run_sync(...)`: the claim / route / store flow of both modes, with
  `Prefer: wait` and `respond-async`; the framework gives them the route as a function that
  runs it and says what it answered (`Captured`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from . import aio, sync
from ._model import JSON, Begin, Lease, Outcome
from .errors import IdempotencyError, NotInProgress, SerializationFailure
from .http import (
    IDEMPOTENT_REPLAYED,
    PROBLEM_JSON,
    REQUEST_IN_PROGRESS,
    RETRY_AFTER,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    Prefer,
    Problem,
    parse_idempotency_key,
    parse_prefer,
    problem,
    problem_for_error,
)

log = logging.getLogger("idempotency.layer")

PHASED = "phased"
TRANSACTION = "transaction"
MODES = (PHASED, TRANSACTION)
GLOBAL_SCOPE = "global"
PAYLOAD_TOO_LARGE = "payload_too_large"
REPLAY_BODY = "Idempotent-Replay-Body"
COMMAND_VERSION = 1
STORED_VERSION = 1

DESCRIBING_HEADERS = (
    "content-type",
    "content-language",
    "content-encoding",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "vary",
)
"""The response headers that describe the body: always stored with it."""
NEVER_STORED = frozenset({"set-cookie", "set-cookie2"})


class ConfigurationError(ValueError):
    """The layer was built with settings it refuses (raised at start, not per request)."""


def _seconds(value: Any, name: str) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        td = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        td = timedelta(seconds=value)
    else:
        raise ConfigurationError(f"{name} must be a timedelta or a number of seconds, not {value!r}")
    if td is not None and td <= timedelta(0):
        raise ConfigurationError(f"{name} must be positive")
    return td


@dataclass(frozen=True)
class Options:
    """The layer's settings (docs/http.md, in Python's spelling).

    `tenant(request)` names the scope (sync, or async for Starlette; None or "" is 401; it may
    raise `idempotency.http.Problem`); without it `global_keys=True` is required. `mode` is
    `"phased"`, `"transaction"` or a function of the request giving one of them.
    """

    tenant: Callable[[Any], Any] | None = None
    global_keys: bool = False
    methods: Iterable[str] = ("POST", "PATCH")
    required: bool = True
    ttl: timedelta | None = None
    """A timedelta (a number of seconds is taken too)."""
    lease: timedelta | None = None
    command_headers: Iterable[str] = ()
    replay_headers: Iterable[str] = ()
    max_body_bytes: int = 1 << 20
    max_stored_body: int = 512 << 10
    max_wait: int = 10
    status_url: Callable[[str], str] | None = None
    mode: str | Callable[[Any], str] = PHASED

    def __post_init__(self) -> None:
        if self.tenant is None and not self.global_keys:
            raise ConfigurationError(
                "the layer needs a tenant function (the key's scope); global_keys=True makes "
                "every request share the scope 'global' instead"
            )
        if self.tenant is not None and self.global_keys:
            raise ConfigurationError("give either a tenant function or global_keys=True, not both")
        if self.tenant is not None and not callable(self.tenant):
            raise ConfigurationError("tenant must be a function of the request")
        methods = frozenset(str(m).upper() for m in self.methods)
        replay = tuple(str(h).lower() for h in self.replay_headers)
        refused = sorted(NEVER_STORED.intersection(replay))
        if refused:
            raise ConfigurationError(f"{refused[0]} is never stored: it cannot be named in replay_headers")
        for name in ("max_body_bytes", "max_stored_body"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigurationError(f"{name} must be a number of bytes (an int >= 0)")
        if not isinstance(self.max_wait, int) or isinstance(self.max_wait, bool) or self.max_wait < 0:
            raise ConfigurationError("max_wait must be a number of seconds (an int >= 0)")
        if not callable(self.mode) and self.mode not in MODES:
            raise ConfigurationError(f"mode must be 'phased', 'transaction' or a function, not {self.mode!r}")
        if self.status_url is not None and not callable(self.status_url):
            raise ConfigurationError("status_url must be a function of the key")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "command_headers", tuple(str(h).lower() for h in self.command_headers))
        object.__setattr__(self, "replay_headers", replay)
        object.__setattr__(self, "ttl", _seconds(self.ttl, "ttl"))
        object.__setattr__(self, "lease", _seconds(self.lease, "lease"))


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"a mode is 'phased' or 'transaction', not {mode!r}")
    return str(mode)


# --- The request side -------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """A request as the layer reads it: `headers(name)` gives a (lower-case) header's values
    in the order sent, one per header field as the server hands them over."""

    method: str
    path: str
    query_string: str
    headers: Callable[[str], list[str]]


@dataclass(frozen=True)
class Prepared:
    """A covered request with a valid key: what the flows need."""

    scope: str
    key: str
    command: Jsonb
    prefer: Prefer
    mode: str


def covered(options: Options, method: str) -> bool:
    return method.upper() in options.methods


def key_of(options: Options, incoming: Incoming) -> str | None:
    """The key, or None when the request passes through (no header, `required=False`);
    a missing or invalid key raises the 400 `Problem`."""
    values = incoming.headers("idempotency-key")
    if not values and not options.required:
        return None
    return parse_idempotency_key(values)


def scope_of(tenant: Any) -> str:
    """The scope from what the tenant function answered (None or empty: 401)."""
    if tenant is None or tenant == "":
        raise Problem(401, UNAUTHORIZED, "the request names no tenant")
    if not isinstance(tenant, str):
        raise TypeError(f"the tenant function must answer a string or None, not {type(tenant).__name__}")
    return tenant


def too_large(options: Options) -> Problem:
    return too_large_for(options.max_body_bytes)


def too_large_for(limit: int) -> Problem:
    return Problem(413, PAYLOAD_TOO_LARGE, f"the request body is over {limit} bytes")


DRAIN_LIMIT = 64 << 20
"""Before a 413, the rest of a body is read and dropped, up to this many bytes more, so that a
client still writing it gets the answer rather than a reset connection."""


def check_content_length(options: Options, incoming: Incoming) -> None:
    """413 at once when the declared length is over `max_body_bytes` (nothing is read)."""
    for value in incoming.headers("content-length"):
        try:
            n = int(value.strip())
        except ValueError:
            continue
        if n > options.max_body_bytes:
            raise too_large(options)


def check_body(options: Options, body: bytes) -> None:
    if len(body) > options.max_body_bytes:
        raise too_large(options)


def media_type(content_type: str | None) -> str | None:
    """`type/subtype` of a Content-Type, lower-cased (None without one)."""
    if content_type is None:
        return None
    mt = content_type.split(";", 1)[0].strip().lower()
    return mt or None


def is_json_type(mt: str | None) -> bool:
    return mt is not None and (mt == "application/json" or (mt.endswith("+json") and "/" in mt))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(value: Any) -> bool:
    """Whether PostgreSQL's jsonb takes the value: no NUL and no lone surrogate in a string."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return False
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def parse_json(body: bytes) -> tuple[bool, Any]:
    """(True, value) when the bytes are one JSON value (UTF-8) that jsonb takes; numbers are
    kept exact (Decimal), so that only jsonb's numeric equality decides `1.0` against `1`."""
    try:
        value = json.loads(body.decode("utf-8"), parse_float=Decimal, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False, None
    return (True, value) if _storable(value) else (False, None)


def body_member(content_type: str | None, body: bytes) -> JSON:
    """The command's `body`: null, `{media_type, json}` or `{media_type, sha256}`."""
    if not body:
        return None
    mt = media_type(content_type)
    if is_json_type(mt):
        ok, value = parse_json(body)
        if ok:
            return {"media_type": mt, "json": value}
    return {"media_type": mt, "sha256": hashlib.sha256(body).hexdigest()}


def query_member(query_string: str) -> dict[str, list[str]]:
    """Every query parameter decoded (`+` is a space), name -> its values in order."""
    out: dict[str, list[str]] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True, errors="surrogateescape"):
        out.setdefault(name, []).append(value)
    return out


def headers_member(options: Options, incoming: Incoming) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in options.command_headers:
        values = incoming.headers(name)
        if values:
            out[name] = list(values)
    return out


def command_of(options: Options, incoming: Incoming, content_type: str | None, body: bytes) -> dict[str, Any]:
    """The command as docs/http.md gives it (a plain dict; `json_text` writes it)."""
    return {
        "v": COMMAND_VERSION,
        "method": incoming.method.upper(),
        "path": incoming.path,
        "query": query_member(incoming.query_string),
        "headers": headers_member(options, incoming),
        "body": body_member(content_type, body),
    }


def json_text(value: Any) -> str:
    """JSON text of a value whose numbers may be Decimal (written as they are, exactly)."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + json_text(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


def command_jsonb(command: dict[str, Any]) -> Jsonb:
    return Jsonb(command, dumps=json_text)


def prepare(options: Options, incoming: Incoming, key: str, tenant: Any, content_type: str | None,
            body: bytes, mode: str) -> Prepared:
    """The scope (from the tenant function's answer, or `global`), the body's size and the
    command: what `run_async` / `run_sync` take. Raises the 401 or 413 `Problem`."""
    scope = GLOBAL_SCOPE if options.global_keys else scope_of(tenant)
    check_body(options, body)
    cmd = command_jsonb(command_of(options, incoming, content_type, body))
    return Prepared(scope, key, cmd, prefer_of(options, incoming), mode)


def mode_of(options: Options, request: Any, route_mode: str | None = None) -> str:
    if route_mode is not None:
        return check_mode(route_mode)
    if callable(options.mode):
        return check_mode(options.mode(request))
    return options.mode


def prefer_of(options: Options, incoming: Incoming) -> Prefer:
    return parse_prefer(incoming.headers("prefer"), options.max_wait)


# --- The response side ------------------------------------------------------------------


@dataclass
class Reply:
    """An answer to send: status, headers in order (no Content-Length: the framework's), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    original: Any = None
    """The route's own response (see `Captured.original`), None for the layer's answers."""


@dataclass
class Captured:
    """What the route answered. `streamed`: its length was not known before the body;
    `sent`: it has gone to the client already (a streamed response passed through)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    streamed: bool = False
    sent: bool = False
    original: Any = None
    """The framework's own response object, sent as it is when the layer lets it through."""


def stores(status: int, streamed: bool = False) -> bool:
    """True: `idem_complete` with the response; False: `idem_fail(retryable => true)`."""
    return not streamed and status < 500 and status != 429


def kept_headers(options: Options, headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    keep = set(DESCRIBING_HEADERS).union(options.replay_headers)
    return [[n.lower(), v] for n, v in headers if n.lower() in keep and n.lower() not in NEVER_STORED]


def stored_response(options: Options, headers: Iterable[tuple[str, str]], body: bytes, omit: bool = False) -> dict[str, Any]:
    """`{"v": 1, "headers": [[name, value], ...], "body": <base64>}`, or `"omitted": true`
    instead of the body when it is over `max_stored_body` (or `omit`)."""
    doc: dict[str, Any] = {"v": STORED_VERSION, "headers": kept_headers(options, headers)}
    if omit or len(body) > options.max_stored_body:
        doc["omitted"] = True
    else:
        doc["body"] = base64.b64encode(body).decode("ascii")
    return doc


def omitted(doc: dict[str, Any]) -> dict[str, Any]:
    return {"v": doc["v"], "headers": doc["headers"], "omitted": True}


STORE_SQL = (
    "SELECT idem_complete(%s, %s, response => CASE"
    " WHEN pg_column_size(r.doc) - 4 <= pg_size_bytes(current_setting('idempotency.max_response_size'))"
    " THEN r.doc ELSE %s::jsonb END, http_status => %s, attempt => %s)"
    " FROM (SELECT %s::jsonb AS doc) AS r"
)
"""The one statement that stores a route's response, in both modes: the server decides in
the same statement whether the stored document fits `idempotency.max_response_size` (the
extension's own measure: the jsonb's size without its 4-byte header) and stores it, or its
omitted form (`{"v": 1, "headers": [...], "omitted": true}`). The document is sent once."""


def store_params(p: Prepared, doc: dict[str, Any], http_status: int, attempt: int | None) -> tuple[Any, ...]:
    return (p.scope, p.key, Jsonb(omitted(doc)), http_status, attempt, Jsonb(doc))


def decode_stored(response: JSON) -> tuple[list[tuple[str, str]], bytes | None]:
    """(headers, body) of a stored response; body None when it was omitted. A response that
    is not the layer's format (stored by other code with the same scope) answers no header
    and an empty body. jsonb read as text (Django's loader) is parsed first."""
    if isinstance(response, (str, bytes)):
        try:
            response = json.loads(response)
        except ValueError:
            return [], b""
    if not isinstance(response, dict) or response.get("v") != STORED_VERSION:
        return [], b""
    headers = [(str(h[0]), str(h[1])) for h in response.get("headers") or []
               if isinstance(h, list) and len(h) == 2]
    if response.get("omitted") is True:
        return headers, None
    try:
        return headers, base64.b64decode(str(response.get("body") or ""), validate=True)
    except (binascii.Error, ValueError):
        return headers, b""


def replay_reply(begin: Begin) -> Reply:
    """The stored status, headers in order and body bytes, with `Idempotent-Replayed: true`
    (and `Idempotent-Replay-Body: omitted` for a body that was not stored)."""
    headers, body = decode_stored(begin.response)
    headers.append((IDEMPOTENT_REPLAYED.lower(), "true"))
    if body is None:
        headers.append((REPLAY_BODY.lower(), "omitted"))
    return Reply(begin.http_status or 200, headers, body or b"")


def problem_reply(p: Problem) -> Reply:
    headers = [("content-type", PROBLEM_JSON)] + [(k.lower(), v) for k, v in p.headers.items()]
    return Reply(p.status, headers, json.dumps(p.body()).encode("utf-8"))


def in_progress_reply(options: Options, lease: Lease | None, prefer: Prefer, key: str) -> Reply:
    """409 `request_in_progress` with `Retry-After` (seconds to the holder's lease end, at
    least 1); 202 with the same document (and `Location` from `status_url`) under
    `Prefer: respond-async`."""
    retry = lease.retry_after if lease is not None else 1
    doc = problem(409, REQUEST_IN_PROGRESS,
                  "another request with this Idempotency-Key is being processed; retry after Retry-After seconds")
    headers = [("content-type", PROBLEM_JSON), (RETRY_AFTER.lower(), str(retry))]
    status = 409
    if prefer.respond_async:
        status = 202
        if options.status_url is not None:
            headers.append(("location", options.status_url(key)))
    return Reply(status, headers, json.dumps(doc).encode("utf-8"))


def error_reply(error: BaseException) -> Reply:
    """The problem for a database or client error met by the layer (422, 409, 503, 500...)."""
    return problem_reply(problem_for_error(error))


def warn_unstored(p: Prepared, error: NotInProgress) -> None:
    """IK002 when the route's outcome is stored: the key is no longer in progress (its ttl ran
    out, or `idem_forget`, while the route ran). The route's response is sent unstored; a retry
    executes again."""
    log.warning("the key %r (scope %r) was no longer in progress when the route's outcome was "
                "stored (%s); the route's response is sent unstored, and a retry executes again",
                p.key, p.scope, error.found.value if error.found else error)


def expired_reply(p: Prepared, error: NotInProgress) -> Reply:
    """Transaction mode, IK002 when the outcome is stored (the key's ttl ran out during the
    transaction): the whole transaction rolled back, nothing happened, so the answer is 503
    with `Retry-After: 1`, and the retry executes."""
    log.warning("the key %r (scope %r) was no longer in progress when the route's outcome was "
                "stored (%s); the transaction is rolled back and the answer is 503: a retry executes",
                p.key, p.scope, error.found.value if error.found else error)
    return problem_reply(Problem(503, SERVICE_UNAVAILABLE,
                                 "the idempotency key expired while the request ran; nothing was done; "
                                 "retry after Retry-After seconds", headers={RETRY_AFTER: "1"}))


def captured_reply(c: Captured) -> Reply:
    return Reply(c.status, c.headers, c.body, c.original)


def transaction_keeps(c: Captured) -> bool:
    """Transaction mode: whether the route's writes commit (not after a 5xx or 429)."""
    return c.status < 500 and c.status != 429


# --- Waiting (Prefer: wait) -------------------------------------------------------------

POLL_FIRST = 0.025
POLL_MAX = 0.5
SERVER_WAIT = 1.0


class Poll:
    """The schedule of `Prefer: wait=N`: each `idem_begin` may wait up to 1 s in the server
    (an uncommitted holder); between calls, 25 ms doubling to 500 ms, until N seconds."""

    def __init__(self, prefer: Prefer) -> None:
        self.deadline = time.monotonic() + (prefer.wait or 0)
        self.delay = POLL_FIRST

    def server_wait(self) -> timedelta | None:
        left = self.deadline - time.monotonic()
        return timedelta(seconds=min(SERVER_WAIT, left)) if left > 0.001 else None

    def pause(self) -> float | None:
        """Seconds to sleep before the next poll, or None when the wait is over."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        d = min(self.delay, left)
        self.delay = min(self.delay * 2, POLL_MAX)
        return d


SERIALIZATION_ATTEMPTS = 5
"""A claim (or a phased store) that fails with 40001 is run again, up to this many times in
all, before the layer answers 503. The route itself is never run again."""


def serialization_pause(attempt: int) -> float:
    return 0.01 * (1 << attempt)


@dataclass
class Info:
    """What the route gets (`request.state.idempotency`, Django's `request.idempotency`):
    the key, the scope, the claim's attempt, and in transaction mode `conn`, the connection
    whose transaction holds the claim (write through it; do not commit)."""

    key: str
    scope: str
    attempt: int | None
    mode: str
    conn: Any = None


# --- The async flows (Starlette) --------------------------------------------------------

Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]
AsyncRoute = Callable[[Info], Awaitable[Captured]]


async def run_async(options: Options, connect: Connect, p: Prepared, route: AsyncRoute) -> Reply | None:
    """Claim, run the route or answer without it, store the outcome. Returns the reply to
    send, or None when the route's response has gone to the client already (streamed).
    An exception of the route propagates (after the key is released or rolled back), even a
    database error of its own: only the layer's own are answered with a problem."""
    raised: list[BaseException] = []

    async def watched(info: Info) -> Captured:
        try:
            return await route(info)
        except BaseException as e:
            raised.append(e)
            raise

    try:
        if p.mode == TRANSACTION:
            return await _transaction_async(options, connect, p, watched)
        return await _phased_async(options, connect, p, watched)
    except (IdempotencyError, psycopg.Error) as e:
        if e in raised:
            raise
        return error_reply(e)


class _Hold(Exception):
    """Leaves the claim's transaction (rolled back): another request holds or stored the key."""

    def __init__(self, begin: Begin) -> None:
        self.begin = begin


async def _lease_async(connect: Connect, p: Prepared, begin: Begin) -> Lease:
    async with connect() as conn:
        return await aio.Claim(conn, p.scope, p.key, begin, True).lease()


async def _phased_async(options: Options, connect: Connect, p: Prepared, route: AsyncRoute) -> Reply | None:
    poll = Poll(p.prefer)

    async def claim_once() -> aio.Claim:
        async with connect() as conn:
            return await aio.claim(conn, p.scope, p.key, p.command, lease=options.lease,
                                   ttl=options.ttl, wait=poll.server_wait())

    while True:
        claim = await aio.retry_serialization(claim_once, attempts=SERIALIZATION_ATTEMPTS)
        begin = claim.begin
        if begin.outcome is Outcome.REPLAY:
            return replay_reply(begin)
        if begin.outcome is Outcome.EXECUTE:
            break
        pause = poll.pause()
        if pause is None:
            return in_progress_reply(options, await _lease_async(connect, p, begin), p.prefer, p.key)
        await asyncio.sleep(pause)
    try:
        captured = await route(Info(p.key, p.scope, begin.attempt, PHASED))
    except BaseException:
        try:
            async with connect() as conn:
                await aio.Claim(conn, p.scope, p.key, begin, True).fail(retryable=True, http_status=500)
        except Exception as e:  # the route's exception is the one to report
            log.warning("could not release the key after the route raised: %s", e)
        raise

    async def store_once() -> None:
        async with connect() as conn:
            c = aio.Claim(conn, p.scope, p.key, begin, True)
            if stores(captured.status, captured.streamed):
                doc = stored_response(options, captured.headers, captured.body)
                await aio._commit_one(conn, STORE_SQL, store_params(p, doc, captured.status, begin.attempt),
                                      p.scope, p.key, True, attempt=begin.attempt)
            else:
                await c.fail(retryable=True, http_status=captured.status)

    try:
        await aio.retry_serialization(store_once, attempts=SERIALIZATION_ATTEMPTS)
    except NotInProgress as e:
        warn_unstored(p, e)
    except (IdempotencyError, psycopg.Error) as e:
        if captured.sent:
            log.warning("could not release the key after a streamed response: %s", e)
            return None
        return error_reply(e)
    return None if captured.sent else captured_reply(captured)


def _failed_statement(error: psycopg.Error) -> psycopg.Error:
    """The error of the statement that failed in a pipeline: psycopg may report the COMMIT
    queued behind it ("pipeline aborted") with the statement's error as its context."""
    while isinstance(error, psycopg.errors.PipelineAborted) and isinstance(error.__context__, psycopg.Error):
        error = error.__context__
    return error


async def _transaction_async(options: Options, connect: Connect, p: Prepared, route: AsyncRoute) -> Reply | None:
    poll = Poll(p.prefer)
    tries = 0
    while True:
        claimed = False
        storing = False
        try:
            async with connect() as conn:
                try:
                    # The pipeline entered to store the outcome is left after the transaction
                    # block: idem_complete and the block's COMMIT travel together (one flight).
                    async with AsyncExitStack() as flight:
                        async with conn.transaction():
                            begin = await aio.begin(conn, p.scope, p.key, p.command, ttl=options.ttl,
                                                    wait=poll.server_wait())
                            claimed = True
                            if begin.outcome is not Outcome.EXECUTE:
                                raise _Hold(begin)
                            captured = await route(Info(p.key, p.scope, begin.attempt, TRANSACTION, conn))
                            if not transaction_keeps(captured):
                                raise psycopg.Rollback()  # nothing stored: the next retry executes
                            if captured.streamed:  # the route's writes commit, the key failed retryably
                                await aio.fail(conn, p.scope, p.key, retryable=True, http_status=captured.status,
                                               attempt=begin.attempt)
                            else:
                                doc = stored_response(options, captured.headers, captured.body)
                                storing = True
                                if psycopg.AsyncPipeline.is_supported():
                                    await flight.enter_async_context(conn.pipeline())
                                await conn.execute(STORE_SQL, store_params(p, doc, captured.status, begin.attempt))
                    return captured_reply(captured)  # committed (or rolled back: 5xx, 429)
                except _Hold as h:
                    begin = h.begin
                except psycopg.Error as e:
                    if not storing:
                        raise
                    # idem_complete or the COMMIT failed: the whole transaction is rolled back.
                    if not conn.closed and conn.info.transaction_status == TransactionStatus.INERROR:
                        await conn.rollback()
                    error = await aio._refusal(conn, _failed_statement(e), p.scope, p.key, attempt=begin.attempt)
                    if isinstance(error, NotInProgress):
                        return expired_reply(p, error)
                    return error_reply(error)
                except IdempotencyError as e:
                    # A refusal inside the layer's transaction (IK001 of idem_begin): rolled
                    # back by now, so the refusal's data can be read (the 422's first_used_at).
                    await aio._load_quietly(conn, e)
                    raise
        except SerializationFailure:
            tries += 1
            if claimed or tries >= SERIALIZATION_ATTEMPTS:
                raise
            await asyncio.sleep(serialization_pause(tries))  # the claim met a commit it cannot see
            continue
        if begin.outcome is Outcome.REPLAY:
            return replay_reply(begin)
        pause = poll.pause()
        if pause is None:
            return in_progress_reply(options, await _lease_async(connect, p, begin), p.prefer, p.key)
        await asyncio.sleep(pause)


# --- The sync flows (Django) ------------------------------------------------------------


@dataclass
class SyncDatabase:
    """The framework's database for the sync flows: `connection()` the psycopg connection,
    idle and ready; `atomic()` a transaction (or, inside one, a savepoint) as the framework
    opens it; `set_rollback()` marks the innermost one to roll back when it ends."""

    connection: Callable[[], psycopg.Connection[Any]]
    atomic: Callable[[], AbstractContextManager[Any]]
    set_rollback: Callable[[], None]


SyncRoute = Callable[[Info, Callable[[int], None]], Captured]
"""Runs the route. Its second argument, `release(status)`, is for a streamed phased response:
the framework calls it once the stream has ended (or was abandoned)."""


def run_sync(options: Options, db: SyncDatabase, p: Prepared, route: SyncRoute) -> Reply | None:
    """The sync twin of `run_async`; a streamed phased response is returned at once, and
    released (`idem_fail(retryable => true)`) by the framework when its stream ends."""
    raised: list[BaseException] = []

    def watched(info: Info, release: Callable[[int], None]) -> Captured:
        try:
            return route(info, release)
        except BaseException as e:
            raised.append(e)
            raise

    try:
        if p.mode == TRANSACTION:
            return _transaction_sync(options, db, p, watched)
        return _phased_sync(options, db, p, watched)
    except (IdempotencyError, psycopg.Error) as e:
        if e in raised:
            raise
        return error_reply(e)


def _lease_sync(db: SyncDatabase, p: Prepared, begin: Begin) -> Lease:
    return sync.Claim(db.connection(), p.scope, p.key, begin, True).lease()


def _release_sync(db: SyncDatabase, p: Prepared, begin: Begin, http_status: int) -> None:
    """`idem_fail(retryable => true)` for the claim; errors are logged (the response is the
    route's, or it raised)."""
    try:
        sync.Claim(db.connection(), p.scope, p.key, begin, True).fail(retryable=True, http_status=http_status)
    except Exception as e:
        log.warning("could not release the key: %s", e)


def _no_release(status: int) -> None:
    raise RuntimeError("only a streamed phased response is released by the framework")


def _phased_sync(options: Options, db: SyncDatabase, p: Prepared, route: SyncRoute) -> Reply | None:
    poll = Poll(p.prefer)

    def claim_once() -> sync.Claim:
        return sync.claim(db.connection(), p.scope, p.key, p.command, lease=options.lease,
                          ttl=options.ttl, wait=poll.server_wait())

    while True:
        claim = sync.retry_serialization(claim_once, attempts=SERIALIZATION_ATTEMPTS)
        begin = claim.begin
        if begin.outcome is Outcome.REPLAY:
            return replay_reply(begin)
        if begin.outcome is Outcome.EXECUTE:
            break
        pause = poll.pause()
        if pause is None:
            return in_progress_reply(options, _lease_sync(db, p, begin), p.prefer, p.key)
        time.sleep(pause)

    def release(status: int) -> None:
        _release_sync(db, p, begin, status)

    try:
        captured = route(Info(p.key, p.scope, begin.attempt, PHASED), release)
    except BaseException:
        release(500)
        raise
    if captured.streamed:
        return captured_reply(captured)  # released when the stream ends

    def store_once() -> None:
        c = sync.Claim(db.connection(), p.scope, p.key, begin, True)
        if stores(captured.status):
            doc = stored_response(options, captured.headers, captured.body)
            sync._commit_one(c.conn, STORE_SQL, store_params(p, doc, captured.status, begin.attempt),
                             p.scope, p.key, True, attempt=begin.attempt)
        else:
            c.fail(retryable=True, http_status=captured.status)

    try:
        sync.retry_serialization(store_once, attempts=SERIALIZATION_ATTEMPTS)
    except NotInProgress as e:
        warn_unstored(p, e)
    return captured_reply(captured)


def _transaction_sync(options: Options, db: SyncDatabase, p: Prepared, route: SyncRoute) -> Reply | None:
    poll = Poll(p.prefer)
    tries = 0
    while True:
        claimed = False
        expired: NotInProgress | None = None
        try:
            with db.atomic():
                begin = sync.begin(db.connection(), p.scope, p.key, p.command, ttl=options.ttl,
                                   wait=poll.server_wait())
                claimed = True
                if begin.outcome is Outcome.EXECUTE:
                    captured = route(Info(p.key, p.scope, begin.attempt, TRANSACTION), _no_release)
                    if not transaction_keeps(captured):
                        db.set_rollback()  # 5xx, 429: nothing of the route stays, nothing stored
                    elif captured.streamed:  # the route's writes commit, the key failed retryably
                        sync.fail(db.connection(), p.scope, p.key, retryable=True, http_status=captured.status,
                                  attempt=begin.attempt)
                    else:  # in the block itself: no savepoint
                        doc = stored_response(options, captured.headers, captured.body)
                        try:
                            sync._one(db.connection(), STORE_SQL, store_params(p, doc, captured.status, begin.attempt),
                                      p.scope, p.key, attempt=begin.attempt)
                        except NotInProgress as e:  # the ttl ran out: nothing of the request stays
                            db.set_rollback()
                            expired = e
                else:
                    db.set_rollback()
        except SerializationFailure:
            tries += 1
            if claimed or tries >= SERIALIZATION_ATTEMPTS:
                raise
            time.sleep(serialization_pause(tries))  # the claim met a commit it cannot see
            continue
        except IdempotencyError as e:
            # A refusal inside the layer's transaction (IK001 of idem_begin): rolled back by
            # now, so the refusal's data can be read (the 422's first_used_at).
            sync._load_quietly(db.connection(), e)
            raise
        if expired is not None:
            sync._load_quietly(db.connection(), expired)
            return expired_reply(p, expired)
        if begin.outcome is Outcome.EXECUTE:
            return captured_reply(captured)
        if begin.outcome is Outcome.REPLAY:
            return replay_reply(begin)
        pause = poll.pause()
        if pause is None:
            return in_progress_reply(options, _lease_sync(db, p, begin), p.prefer, p.key)
        time.sleep(pause)
