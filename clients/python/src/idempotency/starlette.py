"""The Starlette / FastAPI integration.

`IdempotencyMiddleware` is the drop-in layer (docs/http.md, "The drop-in layer"): one line
makes the covered routes of an application idempotent, whatever they do:

    app.add_middleware(IdempotencyMiddleware, pool=pool, tenant=tenant)

It is a pure ASGI middleware (the request body is buffered and handed to the app again; the
response is captured and stored, or passed through when it streams), on `idempotency.layer`.

`Idempotency(...).one_transaction` / `.phased` are endpoint decorators for routes that do the
idempotency part with the client's helpers themselves (the example payments service): the
endpoint completes the key with a resource of its own.

    idem = Idempotency(connection=pool.connection)      # psycopg_pool.AsyncConnectionPool

    @idem.one_transaction(replay=rebuild_refund, validate=check_refund_body)
    async def create_refund(request: Request, work: Work) -> Response:
        ...                                               # writes on work.conn
        work.tx.complete(resource=f"refunds/{rid}", http_status=201)
        return JSONResponse(refund, status_code=201)

For each request, in this order: the tenant from `Authorization: Bearer` (401), the
`Idempotency-Key` (400 missing/invalid), the JSON body and the endpoint's own validation (400
`invalid_request`: before any claim, so nothing is stored), then the helper with scope = the
tenant and command = `{"method", "path", "body"}`:

- `execute`: the endpoint runs (in the open transaction, or with a committed claim for
  `phased`); a `Problem` it raises rolls the claim back and is answered as a problem;
- `replay`: a stored failure is answered with its stored problem, a stored response as is, a
  stored resource through `replay(request, conn, begin)`; all with `Idempotent-Replayed: true`;
- `in_progress`: 409 `request_in_progress` with `Retry-After` (seconds to the holder's lease
  end), or 202 with `Location` under `Prefer: respond-async`; `Prefer: wait=N` (at most 10)
  waits for the holder first (`layer.Poll`: `idem_begin`'s own wait, then 25 ms doubling to 500 ms);
- IK001: 422 `idempotency_key_reused`; the other errors as `idempotency.http` maps them.

Works on FastAPI too: the decorated endpoint takes the `Request` only.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import aio, layer
from ._model import JSON, Begin, Outcome
from .errors import IdempotencyError
from .http import (
    IDEMPOTENT_REPLAYED,
    INVALID_REQUEST,
    Answer,
    Prefer,
    Problem,
    answer_for_begin,
    command,
    parse_bearer_tenant,
    parse_idempotency_key,
    parse_prefer,
    problem_for_error,
)

Connect = layer.Connect
Replay = Callable[[Request, psycopg.AsyncConnection[Any], Begin], Awaitable[Response]]
Validate = Callable[[JSON], None]


@dataclass
class Work:
    """What a one-transaction endpoint gets: `tx.complete(...)` or `tx.fail(...)` before it
    returns; write on `conn` (the transaction is open)."""

    request: Request
    tenant: str
    key: str
    body: JSON
    conn: psycopg.AsyncConnection[Any]
    tx: aio.Transaction


@dataclass
class PhasedWork:
    """What a phased endpoint gets: a committed claim (`claim.attempt` is the fencing token,
    `claim.recovery_point` where an earlier attempt got to)."""

    request: Request
    tenant: str
    key: str
    body: JSON
    conn: psycopg.AsyncConnection[Any]
    claim: aio.Claim


def reply_response(reply: layer.Reply) -> Response:
    """A `layer.Reply` as a Starlette response (headers in order, repeated names kept,
    Content-Length Starlette's)."""
    r = Response(reply.body, status_code=reply.status)
    own = [h for h in r.raw_headers if h[0] == b"content-length"]
    r.raw_headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers
                     if n.lower() != "content-length"] + own
    return r


def problem_response(p: Problem) -> Response:
    return reply_response(layer.problem_reply(p))


def answer_response(a: Answer) -> Response:
    return JSONResponse(a.body, status_code=a.status, headers=a.headers, media_type=a.media_type) \
        if a.body is not None else Response(status_code=a.status, headers=a.headers)


# --- The drop-in layer ------------------------------------------------------------------

_DROPPED_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy")


class IdempotencyMiddleware:
    """The drop-in layer as a pure ASGI middleware (docs/http.md, "The drop-in layer").

        app.add_middleware(IdempotencyMiddleware, pool=pool, tenant=tenant)

    `pool`: a `psycopg_pool.AsyncConnectionPool` (or `connection=`, a function giving an async
    context manager of an `AsyncConnection`). The settings are `layer.Options`' (`tenant`, a
    function of the `Request` (headers only; sync or async), or `global_keys=True`;
    `methods`, `required`, `ttl`, `lease`, `command_headers`, `replay_headers`,
    `max_body_bytes`, `max_stored_body`, `max_wait`, `status_url`, `mode`). `routes` maps
    Starlette path patterns (`"/orders/{id}"`, `"/tx/{rest:path}"`) to a mode, or to None for
    a route the layer leaves alone; the first pattern that matches the path wins, else `mode`.

    The route finds `request.state.idempotency` (`layer.Info`: `key`, `scope`, `attempt`,
    `mode`, and in transaction mode `conn`, the connection in the claim's transaction).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        pool: Any = None,
        connection: layer.Connect | None = None,
        routes: Mapping[str, str | None] | None = None,
        **options: Any,
    ) -> None:
        if (pool is None) == (connection is None):
            raise layer.ConfigurationError("give pool= (a psycopg_pool.AsyncConnectionPool) or connection=")
        self.app = app
        self.connect: layer.Connect = connection if connection is not None else pool.connection
        self.options = layer.Options(**options)
        self.routes: list[tuple[re.Pattern[str], str | None]] = [
            (compile_path(pattern)[0], None if mode is None else layer.check_mode(mode))
            for pattern, mode in (routes or {}).items()
        ]

    def _route_mode(self, path: str) -> tuple[bool, str | None]:
        """(covered, the route's own mode) from `routes`."""
        for regex, mode in self.routes:
            if regex.match(path):
                return mode is not None, mode
        return True, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not layer.covered(self.options, scope["method"]):
            await self.app(scope, receive, send)
            return
        on, route_mode = self._route_mode(scope["path"])
        if not on:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        incoming = layer.Incoming(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=request.headers.getlist,
        )
        try:
            key = layer.key_of(self.options, incoming)
            if key is None:
                await self.app(scope, receive, send)
                return
            tenant = None
            if self.options.tenant is not None:
                tenant = self.options.tenant(request)
                if inspect.isawaitable(tenant):
                    tenant = await tenant
            if not self.options.global_keys:
                layer.scope_of(tenant)  # 401 before the body is read
            try:
                layer.check_content_length(self.options, incoming)
            except Problem:
                await _drain(receive, layer.DRAIN_LIMIT)
                raise
            body = await _read_body(receive, self.options.max_body_bytes)
            if body is None:
                return  # the client went away
            mode = layer.mode_of(self.options, request, route_mode)
            p = layer.prepare(self.options, incoming, key, tenant, request.headers.get("content-type"), body, mode)
        except Problem as e:
            await _send(scope, receive, send, layer.problem_reply(e))
            return

        async def route(info: layer.Info) -> layer.Captured:
            inner = dict(scope)
            inner["state"] = dict(scope.get("state") or {})
            inner["state"]["idempotency"] = info
            if scope.get("extensions"):
                inner["extensions"] = {k: v for k, v in scope["extensions"].items() if k not in _DROPPED_EXTENSIONS}
            capture = _Capture(send, passthrough=info.mode == layer.PHASED)
            await self.app(inner, _replaying(body, receive), capture.send)
            return capture.result()

        reply = await layer.run_async(self.options, self.connect, p, route)
        if reply is not None:
            await _send(scope, receive, send, reply)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body (413 `Problem` past `limit` bytes); None if the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            if message.get("more_body", False):
                await _drain(receive, layer.DRAIN_LIMIT)
            raise layer.too_large_for(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(receive: Receive, budget: int) -> None:
    """Read the rest of the request body and drop it (at most `budget` bytes)."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The app's `receive`: the buffered body once, then the server's own (disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Capture:
    """The app's `send`: a response with a length (or in one message) is kept whole; a
    streamed one (no Content-Length, the first body message with `more_body`) is passed
    through as it comes in phased mode, and kept whole in transaction mode (nothing is sent
    before the COMMIT)."""

    def __init__(self, send: Send, passthrough: bool) -> None:
        self.downstream = send
        self.passthrough = passthrough
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.streamed = False
        self.sent = False
        self.started_body = False

    async def send(self, message: Message) -> None:
        if self.sent:
            await self.downstream(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            return
        if kind != "http.response.body":
            raise RuntimeError(f"the idempotency layer cannot capture {kind!r} messages")
        more = bool(message.get("more_body", False))
        if not self.started_body:
            self.started_body = True
            self.streamed = more and not any(n.lower() == b"content-length" for n, _ in self._raw_headers())
            if self.streamed and self.passthrough:
                self.sent = True
                assert self.start is not None
                await self.downstream(self.start)
                await self.downstream(message)
                return
        self.chunks.append(message.get("body", b""))

    def _raw_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.start.get("headers", [])) if self.start is not None else []

    def result(self) -> layer.Captured:
        if self.start is None:
            raise RuntimeError("the route sent no response")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._raw_headers()]
        return layer.Captured(int(self.start["status"]), headers, b"".join(self.chunks), self.streamed, self.sent,
                              original=self.start)


async def _send(scope: Scope, receive: Receive, send: Send, reply: layer.Reply) -> None:
    if reply.original is not None:  # the route's own response: its start message as it was
        await send(reply.original)
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
    else:
        await reply_response(reply)(scope, receive, send)


class Idempotency:
    """The integration's settings: how to get a connection (an async context manager such
    as `psycopg_pool.AsyncConnectionPool.connection`), how to find the tenant (default: the
    Bearer token), and the key's `ttl`."""

    def __init__(
        self,
        connection: Connect,
        *,
        tenant: Callable[[Request], str] | None = None,
        ttl: timedelta | None = None,
    ) -> None:
        self.connection = connection
        self.tenant = tenant or (lambda r: parse_bearer_tenant(r.headers.get("authorization")))
        self.ttl = ttl

    async def _prepare(self, request: Request, validate: Validate | None) -> tuple[str, str, JSON, Prefer]:
        tenant = self.tenant(request)
        key = parse_idempotency_key(request.headers.getlist("idempotency-key"))
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise Problem(400, INVALID_REQUEST, "the body must be JSON") from None
        if validate is not None:
            validate(body)
        return tenant, key, body, parse_prefer(request.headers.getlist("prefer"))

    def one_transaction(
        self, *, replay: Replay | None = None, validate: Validate | None = None
    ) -> Callable[[Callable[[Request, Work], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
        """The endpoint runs inside the transaction of `idem_begin` and its completion."""

        def decorate(handler: Callable[[Request, Work], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    tenant, key, body, prefer = await self._prepare(request, validate)
                    cmd = command(request.method, request.url.path, body)
                    poll = layer.Poll(prefer)
                    while True:
                        async with self.connection() as conn:
                            async with aio.transaction(conn, tenant, key, cmd, ttl=self.ttl, wait=poll.server_wait()) as tx:
                                if tx.outcome is Outcome.EXECUTE:
                                    return await handler(request, Work(request, tenant, key, body, conn, tx))
                                if tx.outcome is Outcome.REPLAY:
                                    return await _replay(request, conn, tx.begin, replay)
                        pause = poll.pause()
                        if pause is None:
                            break
                        await asyncio.sleep(pause)
                    answer = answer_for_begin(tx.begin, lease=tx.lease, key=key, prefer=prefer)
                    assert answer is not None
                    return answer_response(answer)
                except (Problem, IdempotencyError) as e:
                    return problem_response(problem_for_error(e))

            endpoint.__name__ = getattr(handler, "__name__", "endpoint")
            return endpoint

        return decorate

    def phased(
        self,
        *,
        replay: Replay | None = None,
        validate: Validate | None = None,
        lease: timedelta | None = None,
    ) -> Callable[[Callable[[Request, PhasedWork], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
        """The endpoint gets a committed claim under `lease`, for work outside the database."""

        def decorate(handler: Callable[[Request, PhasedWork], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    tenant, key, body, prefer = await self._prepare(request, validate)
                    cmd = command(request.method, request.url.path, body)
                    poll = layer.Poll(prefer)
                    async with self.connection() as conn:
                        while True:
                            claim = await aio.claim(conn, tenant, key, cmd, lease=lease, ttl=self.ttl, wait=poll.server_wait())
                            if claim.outcome is Outcome.EXECUTE:
                                return await handler(request, PhasedWork(request, tenant, key, body, conn, claim))
                            if claim.outcome is Outcome.REPLAY:
                                async with conn.transaction():
                                    return await _replay(request, conn, claim.begin, replay)
                            pause = poll.pause()
                            if pause is None:
                                break
                            await asyncio.sleep(pause)
                        answer = answer_for_begin(claim.begin, lease=await claim.lease(), key=key, prefer=prefer)
                    assert answer is not None
                    return answer_response(answer)
                except (Problem, IdempotencyError) as e:
                    return problem_response(problem_for_error(e))

            endpoint.__name__ = getattr(handler, "__name__", "endpoint")
            return endpoint

        return decorate


async def _replay(request: Request, conn: psycopg.AsyncConnection[Any], begin: Begin, replay: Replay | None) -> Response:
    answer = answer_for_begin(begin)
    assert answer is not None
    if answer.body is not None or begin.resource is None:
        return answer_response(answer)
    if replay is None:
        raise RuntimeError(f"no replay function to rebuild {begin.resource!r}")
    response = await replay(request, conn, begin)
    response.status_code = answer.status
    response.headers[IDEMPOTENT_REPLAYED] = "true"
    return response
