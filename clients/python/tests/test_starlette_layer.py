"""idempotency.starlette.IdempotencyMiddleware over ASGI (httpx), on the test database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from idempotency import State
from idempotency import aio as idem
from idempotency.http import Problem
from idempotency.layer import ConfigurationError
from idempotency.starlette import IdempotencyMiddleware
from records import first_used

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class App:
    """A small app behind the middleware; `calls` counts the route's runs, `seen` keeps what
    the routes found in request.state.idempotency and the body they read."""

    def __init__(self, pool: AsyncConnectionPool, **options: Any) -> None:
        self.calls = 0
        self.seen: list[Any] = []

        async def echo(request: Request) -> Response:
            self.calls += 1
            body = await request.body()
            self.seen.append((getattr(request.state, "idempotency", None), body))
            r = Response(body, status_code=int(request.query_params.get("status", "201")),
                         media_type=request.headers.get("content-type", "application/octet-stream"),
                         headers={"Location": "/x/1", "X-Extra": "no"})
            r.set_cookie("c", "1")
            return r

        async def rows(request: Request) -> Response:
            self.calls += 1
            info = request.state.idempotency
            self.seen.append(info)
            await info.conn.execute("INSERT INTO layer_rows (scope, key) VALUES (%s, %s)", (info.scope, info.key))
            status = int(request.query_params.get("status", "201"))
            if "bytes" in request.query_params:
                return Response(b"y" * int(request.query_params["bytes"]), status_code=status, media_type="text/plain")
            return JSONResponse({"ok": True}, status_code=status)

        async def slow_rows(request: Request) -> Response:
            self.calls += 1
            info = request.state.idempotency
            await info.conn.execute("INSERT INTO layer_rows (scope, key) VALUES (%s, %s)", (info.scope, info.key))
            await asyncio.sleep(float(request.query_params["s"]))
            return JSONResponse({"ok": True}, status_code=201)

        async def xids(request: Request) -> Response:
            # The transactionid locks the transaction holds: 1 without a savepoint under the
            # route (a write under one takes a second xid).
            self.calls += 1
            info = request.state.idempotency
            await info.conn.execute("INSERT INTO layer_rows (scope, key) VALUES (%s, %s)", (info.scope, info.key))
            cur = await info.conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                                          " AND pid = pg_backend_pid()")
            row = await cur.fetchone()
            return Response(str(row[0] if row else -1), media_type="text/plain")

        async def boom(request: Request) -> Response:
            self.calls += 1
            raise RuntimeError("boom")

        async def bad_sql(request: Request) -> Response:
            self.calls += 1
            await request.state.idempotency.conn.execute("SELECT 1 / 0")
            return Response("unreachable")

        async def stream(request: Request) -> Response:
            self.calls += 1

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield f"c{i}\n".encode()

            return StreamingResponse(chunks(), media_type="text/plain")

        async def slow(request: Request) -> Response:
            self.calls += 1
            await asyncio.sleep(float(request.query_params["s"]))
            return Response("slept", media_type="text/plain")

        app = Starlette(routes=[Route("/echo", echo, methods=["POST", "PATCH", "PUT"]),
                                Route("/tx/rows", rows, methods=["POST"]),
                                Route("/tx/bad", bad_sql, methods=["POST"]),
                                Route("/tx/xids", xids, methods=["POST"]),
                                Route("/tx/slow", slow_rows, methods=["POST"]),
                                Route("/boom", boom, methods=["POST"]),
                                Route("/stream", stream, methods=["POST"]),
                                Route("/slow", slow, methods=["POST"]),
                                Route("/free", echo, methods=["POST"])])
        options.setdefault("tenant", lambda r: r.headers.get("x-tenant"))
        options.setdefault("routes", {"/tx/{rest:path}": "transaction", "/free": None})
        app.add_middleware(IdempotencyMiddleware, pool=pool, **options)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                        base_url="http://test")


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute("CREATE TABLE IF NOT EXISTS layer_rows (scope text, key text)")
    p = AsyncConnectionPool(dsn, min_size=1, max_size=8, open=False)
    await p.open(wait=True)
    yield p
    await p.close()


def h(scope: str, key: str | None = None, **more: str) -> dict[str, str]:
    headers = {"X-Tenant": scope, **{k.replace("_", "-"): v for k, v in more.items()}}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def rows(dsn: str, scope: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        cur = await c.execute("SELECT count(*) FROM layer_rows WHERE scope = %s", (scope,))
        row = await cur.fetchone()
        return int(row[0]) if row else -1


async def test_phased_stores_and_replays_exactly(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    app = App(pool, replay_headers=["X-Replayed-Too"])
    body = b'{"b": 2.0, "a": [1]}'
    r = await app.client.post("/echo?x=1", content=body, headers=h(scope, '"k-1"', content_type="application/json"))
    assert (r.status_code, r.content, r.headers["location"], r.headers["set-cookie"].split(";")[0]) == (
        201, body, "/x/1", "c=1")
    assert "idempotent-replayed" not in r.headers
    info, seen_body = app.seen[0]
    assert (info.key, info.scope, info.attempt, info.mode, info.conn, seen_body) == (
        "k-1", scope, 1, "phased", None, body)
    # The same command (member order, whitespace, 2.0 and 2): the stored response.
    r = await app.client.post("/echo?x=1", content=b'{"a":[1],"b":2}', headers=h(scope, "k-1", content_type="application/json"))
    assert (r.status_code, r.content, r.headers["idempotent-replayed"], app.calls) == (201, body, "true", 1)
    assert [(k, v) for k, v in r.headers.items() if k not in ("content-length",)] == [  # the route's order
        ("location", "/x/1"), ("content-type", "application/json"), ("idempotent-replayed", "true")]
    assert r.headers["content-length"] == str(len(body))
    # Another query, route or body: 422, the record untouched.
    for path, content in (("/echo?x=2", body), ("/echo", body), ("/echo?x=1", b"{}")):
        r = await app.client.post(path, content=content, headers=h(scope, "k-1", content_type="application/json"))
        assert (r.status_code, r.headers["content-type"], r.json()["code"]) == (
            422, "application/problem+json", "idempotency_key_reused")
        assert r.json()["first_used_at"] == first_used(dsn, scope, "k-1")[0].isoformat()
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        assert (await idem.check(c, scope, "k-1")).state is State.COMPLETED
    # Not covered: PUT, a key on GET, an exempt route.
    r = await app.client.put("/echo", content=b"p", headers=h(scope, "k-1"))
    r2 = await app.client.post("/free", content=b"f", headers=h(scope, "k-1"))
    assert (r.status_code, r2.status_code, app.calls) == (201, 201, 3)


async def test_request_problems(pool: AsyncConnectionPool, scope: str) -> None:
    app = App(pool, max_body_bytes=10)
    r = await app.client.post("/echo", content=b"x", headers=h(scope))
    assert (r.status_code, r.json()["code"]) == (400, "idempotency_key_missing")
    r = await app.client.post("/echo", content=b"x", headers=h(scope, "a b"))
    assert (r.status_code, r.json()["code"]) == (400, "idempotency_key_invalid")
    r = await app.client.post("/echo", content=b"x", headers={"Idempotency-Key": "k"})
    assert (r.status_code, r.headers["content-type"], r.json()["code"]) == (401, "application/problem+json", "unauthorized")
    r = await app.client.post("/echo", content=b"x" * 11, headers=h(scope, "k"))
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(3):
            yield b"xxxx"

    r = await app.client.post("/echo", content=chunked(), headers=h(scope, "k"))
    assert (r.status_code, r.json()["code"], app.calls) == (413, "payload_too_large", 0)
    r = await app.client.post("/echo", content=b"x" * 10, headers=h(scope, "k"))
    assert (r.status_code, app.calls) == (201, 1)

    async def refuse(request: Request) -> str:  # an async tenant function answering its own problem
        raise Problem(403, "forbidden_tenant", "not this one")

    r = await App(pool, tenant=refuse).client.post("/echo", content=b"x", headers=h(scope, "k"))
    assert (r.status_code, r.headers["content-type"], r.json()["code"]) == (403, "application/problem+json",
                                                                           "forbidden_tenant")


async def test_failures_execute_again(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    app = App(pool)
    for status, expected_calls in ((503, 1), (429, 2)):
        r = await app.client.post(f"/echo?status={status}", content=b"x", headers=h(scope, f"s{status}"))
        assert r.status_code == status
        r = await app.client.post(f"/echo?status={status}", content=b"x", headers=h(scope, f"s{status}"))
        assert ("idempotent-replayed" in r.headers, app.seen[-1][0].attempt) == (False, 2)
    r = await app.client.post("/boom", headers=h(scope, "b"))
    assert r.status_code == 500
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        check = await idem.check(c, scope, "b")
        assert (check.state, check.attempt, check.http_status) == (State.FAILED, 1, 500)
    await app.client.post("/boom", headers=h(scope, "b"))
    assert app.calls == 6
    # 404 is stored and replayed.
    r = await app.client.post("/echo?status=404", content=b"n", headers=h(scope, "n"))
    r = await app.client.post("/echo?status=404", content=b"n", headers=h(scope, "n"))
    assert (r.status_code, r.content, r.headers["idempotent-replayed"], app.calls) == (404, b"n", "true", 7)


async def test_stream_passes_through_and_releases(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    app = App(pool)
    for attempt in (1, 2):
        r = await app.client.post("/stream", headers=h(scope, "st"))
        assert (r.status_code, r.content, "content-length" in r.headers) == (200, b"c0\nc1\nc2\n", False)
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            check = await idem.check(c, scope, "st")
            assert (check.state, check.attempt, check.http_status) == (State.FAILED, attempt, 200)


async def test_transaction_mode(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    app = App(pool)
    r = await app.client.post("/tx/rows", headers=h(scope, "t1"))
    assert (r.status_code, r.json(), await rows(dsn, scope)) == (201, {"ok": True}, 1)
    info = app.seen[-1]
    assert (info.mode, info.attempt, isinstance(info.conn, psycopg.AsyncConnection)) == ("transaction", 1, True)
    r = await app.client.post("/tx/rows", headers=h(scope, "t1"))
    assert (r.status_code, r.headers["idempotent-replayed"], app.calls, await rows(dsn, scope)) == (201, "true", 1, 1)
    # Another command: 422 with the first use, read after the layer's transaction rolled back.
    r = await app.client.post("/tx/rows?other=1", headers=h(scope, "t1"))
    assert (r.status_code, r.json()["code"], r.json()["first_used_at"], app.calls) == (
        422, "idempotency_key_reused", first_used(dsn, scope, "t1")[0].isoformat(), 1)
    # 500 and 429: the route's row and the claim roll back; the retry executes (attempt 1 again).
    for status in (500, 429):
        r = await app.client.post(f"/tx/rows?status={status}", headers=h(scope, f"t{status}"))
        assert (r.status_code, await rows(dsn, scope)) == (status, 1)
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            assert (await idem.check(c, scope, f"t{status}")).state is State.ABSENT
    # The route's own database error is the route's exception (the framework's 500), not a
    # problem of the layer; everything rolls back.
    r = await app.client.post("/tx/bad", headers=h(scope, "bad"))
    assert (r.status_code, r.headers["content-type"], r.text) == (500, "text/plain; charset=utf-8", "Internal Server Error")
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        assert (await idem.check(c, scope, "bad")).state is State.ABSENT
    # 409 is the route's answer: its row and the stored response commit together.
    r = await app.client.post("/tx/rows?status=409", headers=h(scope, "t409"))
    r = await app.client.post("/tx/rows?status=409", headers=h(scope, "t409"))
    assert (r.status_code, r.headers["idempotent-replayed"], await rows(dsn, scope)) == (409, "true", 2)


async def test_key_expired_while_the_route_ran(
        pool: AsyncConnectionPool, dsn: str, scope: str, caplog: pytest.LogCaptureFixture) -> None:
    # Storing meets IK002 (the 1 s ttl ran out). Phased: the route's response is sent unstored.
    # Transaction mode: the whole transaction rolls back (the route's row too), the answer is
    # 503 with Retry-After: 1. Either way the same request executes again.
    app = App(pool, ttl=timedelta(seconds=1))
    with caplog.at_level(logging.WARNING, logger="idempotency.layer"):
        for n in (1, 2):
            r = await app.client.post("/slow?s=1.5", headers=h(scope, "exp"))
            assert (r.status_code, r.text, r.headers.get("idempotent-replayed")) == (200, "slept", None)
            r = await app.client.post("/tx/slow?s=1.5", headers=h(scope, "exp-tx"))
            assert (r.status_code, r.headers["content-type"], r.headers["retry-after"], r.json()["code"],
                    await rows(dsn, scope)) == (503, "application/problem+json", "1", "service_unavailable", 0)
            assert app.calls == 2 * n
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        assert (await idem.check(c, scope, "exp-tx")).state is State.ABSENT
    warned = [r.getMessage() for r in caplog.records if r.name == "idempotency.layer"]
    assert len(warned) == 4 and all("no longer in progress" in m for m in warned), warned
    assert sum("rolled back" in m for m in warned) == 2, warned


async def test_response_over_the_extension_limit_is_stored_omitted(dsn: str, scope: str) -> None:
    # idempotency.max_response_size lowered to 1 kB (a superuser's session setting): the server
    # stores the omitted form, in the same statement, in both modes.
    small = AsyncConnectionPool(dsn + " options='-c idempotency.max_response_size=1kB'", min_size=1, open=False)
    await small.open(wait=True)
    try:
        app = App(small)
        body = b"y" * 2000
        for url, key in (("/echo", "big"), ("/tx/rows?bytes=2000", "big-tx")):
            r = await app.client.post(url, content=body, headers=h(scope, key, content_type="text/plain"))
            assert (r.status_code, r.content, r.headers.get("idempotent-replayed")) == (201, body, None)
            r = await app.client.post(url, content=body, headers=h(scope, key, content_type="text/plain"))
            assert (r.status_code, r.content, r.headers["idempotent-replay-body"], r.headers["content-type"]) == (
                201, b"", "omitted", "text/plain; charset=utf-8")
        assert (app.calls, await rows(dsn, scope)) == (2, 1)
        # A small response still fits and is stored whole.
        r = await app.client.post("/tx/rows?bytes=10", headers=h(scope, "small-tx"))
        r = await app.client.post("/tx/rows?bytes=10", headers=h(scope, "small-tx"))
        assert (r.status_code, r.content, r.headers["idempotent-replayed"], app.calls) == (201, b"y" * 10, "true", 3)
    finally:
        await small.close()


async def test_round_trips_of_a_stored_request(proxy: Any, counted_dsn: str, scope: str) -> None:
    # Transaction mode: BEGIN, idem_begin, the route's INSERT, then idem_complete and COMMIT in
    # one flight, no savepoint: 4. Phased: the claim (BEGIN, idem_begin, COMMIT pipelined) and
    # the store (the same): 2. And the route's write takes no second xid.
    async with await psycopg.AsyncConnection.connect(counted_dsn, autocommit=True) as c:
        await c.execute("CREATE TABLE IF NOT EXISTS layer_rows (scope text, key text)")
    counted = AsyncConnectionPool(counted_dsn, min_size=1, max_size=1, open=False)
    await counted.open(wait=True)
    try:
        app = App(counted)
        proxy.reset()
        r = await app.client.post("/tx/rows", headers=h(scope, "rt-tx"))
        assert (r.status_code, proxy.count) == (201, 4)
        proxy.reset()
        r = await app.client.post("/echo", content=b"x", headers=h(scope, "rt-ph"))
        assert (r.status_code, proxy.count) == (201, 2)
        r = await app.client.post("/tx/xids", headers=h(scope, "rt-xids"))
        assert (r.status_code, r.text) == (200, "1")
    finally:
        await counted.close()


async def test_in_progress_wait_and_async(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    app = App(pool, status_url=lambda key: f"/keys/{key}")
    cmd = {"v": 1, "method": "POST", "path": "/slow", "query": {"s": ["0"]}, "headers": {}, "body": None}
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        claim = await idem.claim(holder, scope, "held", cmd, lease=timedelta(seconds=30))
        r = await app.client.post("/slow?s=0", headers=h(scope, "held"))
        assert (r.status_code, r.json()["code"], 29 <= int(r.headers["retry-after"]) <= 30) == (
            409, "request_in_progress", True)
        r = await app.client.post("/slow?s=0", headers=h(scope, "held", prefer="respond-async"))
        assert (r.status_code, r.headers["location"], r.json()["code"]) == (202, "/keys/held", "request_in_progress")

        async def finish_later() -> None:
            await asyncio.sleep(0.3)
            await claim.complete(response={"v": 1, "headers": [["content-type", "text/plain"]], "body": "ZG9uZQ=="},
                                 http_status=200)

        task = asyncio.create_task(finish_later())
        r = await app.client.post("/slow?s=0", headers=h(scope, "held", prefer="wait=5"))
        await task
        assert (r.status_code, r.content, r.headers["idempotent-replayed"], app.calls) == (200, b"done", "true", 0)


async def test_lease_lost_answers_409(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    app = App(pool, lease=timedelta(seconds=1))
    slow = asyncio.create_task(app.client.post("/slow?s=1.6", headers=h(scope, "ls")))
    await asyncio.sleep(1.2)  # the first holder's lease has run out: a retry takes the key over
    r = await app.client.post("/slow?s=0.01", headers=h(scope, "ls"))
    assert r.status_code == 422  # another command (s): the taker must repeat it exactly
    r = await app.client.post("/slow?s=1.6", headers=h(scope, "ls"))
    first = await slow
    assert (r.status_code, first.status_code, first.json()["code"]) == (200, 409, "request_in_progress")
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        check = await idem.check(c, scope, "ls")
        assert (check.state, check.attempt) == (State.COMPLETED, 2)


async def test_configuration_refused(pool: AsyncConnectionPool) -> None:
    with pytest.raises(ConfigurationError, match="tenant function"):
        IdempotencyMiddleware(Starlette(), pool=pool)
    with pytest.raises(ConfigurationError, match="never stored"):
        IdempotencyMiddleware(Starlette(), pool=pool, global_keys=True, replay_headers=["set-cookie"])
    with pytest.raises(ConfigurationError, match="pool"):
        IdempotencyMiddleware(Starlette(), global_keys=True)
    with pytest.raises(ConfigurationError, match="mode"):
        IdempotencyMiddleware(Starlette(), pool=pool, global_keys=True, routes={"/a": "later"})


async def wait_for_waiter(dsn: str) -> None:
    """Until a backend of the test database is inside idem_begin (waiting for a holder)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher:
        for _ in range(1000):
            cur = await watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                " AND pid <> pg_backend_pid() AND query LIKE %s", ("%idem_begin%",))
            if await cur.fetchone():
                return
            await asyncio.sleep(0.01)
    raise AssertionError("no request waited in idem_begin")


async def test_claim_meeting_a_commit_under_repeatable_read_is_run_again(dsn: str, scope: str) -> None:
    # Under REPEATABLE READ a claim that waited for an uncommitted holder meets its commit
    # with 40001: the layer claims again (the route has not run) and replays the holder's answer.
    async def repeatable_read(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)

    rr = AsyncConnectionPool(dsn, min_size=1, max_size=4, configure=repeatable_read, open=False)
    await rr.open(wait=True)
    try:
        app = App(rr)
        cmd = {"v": 1, "method": "POST", "path": "/tx/rows", "query": {}, "headers": {}, "body": None}
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            tx = idem.transaction(holder, scope, "rr", cmd)
            await tx.__aenter__()
            tx.complete(response={"v": 1, "headers": [["content-type", "text/plain"]], "body": "aGVsZA=="},
                        http_status=201)
            request = asyncio.create_task(app.client.post("/tx/rows", headers=h(scope, "rr", prefer="wait=5")))
            await wait_for_waiter(dsn)
            await tx.__aexit__(None, None, None)  # commits
            r = await request
        assert (r.status_code, r.content, r.headers["idempotent-replayed"], app.calls) == (201, b"held", "true", 0)
    finally:
        await rr.close()
