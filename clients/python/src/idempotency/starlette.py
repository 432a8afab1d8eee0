"""The Starlette / FastAPI integration: an endpoint decorator that does the idempotency part
of a request, so that the endpoint only does its work.

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
  waits for the holder first (see `_wait_step`);
- IK001: 422 `idempotency_key_reused`; the other errors as `idempotency.http` maps them.

Works on FastAPI too: the decorated endpoint takes the `Request` only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import aio
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

Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]
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


def problem_response(p: Problem) -> Response:
    return JSONResponse(p.body(), status_code=p.status, headers=p.headers, media_type="application/problem+json")


def answer_response(a: Answer) -> Response:
    return JSONResponse(a.body, status_code=a.status, headers=a.headers, media_type=a.media_type) \
        if a.body is not None else Response(status_code=a.status, headers=a.headers)


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
                    deadline = time.monotonic() + (prefer.wait or 0)
                    while True:
                        async with self.connection() as conn:
                            async with aio.transaction(conn, tenant, key, cmd, ttl=self.ttl, wait=_remaining(deadline)) as tx:
                                if tx.outcome is Outcome.EXECUTE:
                                    return await handler(request, Work(request, tenant, key, body, conn, tx))
                                if tx.outcome is Outcome.REPLAY:
                                    return await _replay(request, conn, tx.begin, replay)
                        if not await _wait_step(deadline):
                            break
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
                    deadline = time.monotonic() + (prefer.wait or 0)
                    async with self.connection() as conn:
                        while True:
                            claim = await aio.claim(conn, tenant, key, cmd, lease=lease, ttl=self.ttl, wait=_remaining(deadline))
                            if claim.outcome is Outcome.EXECUTE:
                                return await handler(request, PhasedWork(request, tenant, key, body, conn, claim))
                            if claim.outcome is Outcome.REPLAY:
                                async with conn.transaction():
                                    return await _replay(request, conn, claim.begin, replay)
                            if not await _wait_step(deadline):
                                break
                        answer = answer_for_begin(claim.begin, lease=await claim.lease(), key=key, prefer=prefer)
                    assert answer is not None
                    return answer_response(answer)
                except (Problem, IdempotencyError) as e:
                    return problem_response(problem_for_error(e))

            endpoint.__name__ = getattr(handler, "__name__", "endpoint")
            return endpoint

        return decorate


def _remaining(deadline: float) -> timedelta | None:
    left = deadline - time.monotonic()
    return timedelta(seconds=left) if left > 0 else None


async def _wait_step(deadline: float) -> bool:
    """`Prefer: wait`: after `in_progress`, poll again in 200 ms while the deadline allows.

    `idem_begin`'s own `wait` (the time left) already waits, without polling, for a holder
    whose claim is not committed (a one-transaction holder); a committed claim under a lease
    is polled: each poll is one more `idem_begin` (two round trips, no write when the holder
    still holds the key).
    """
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    await asyncio.sleep(min(0.2, left))
    return True




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
