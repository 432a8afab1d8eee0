"""The Starlette integration over ASGI (httpx), on a small app of the test's own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idempotency import Begin, State
from idempotency import aio as idem
from idempotency.http import Problem
from idempotency.starlette import Idempotency, PhasedWork, Work, problem_response

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_app(dsn: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            yield c

    idem_ = Idempotency(connection=connection)

    async def rebuild(request: Request, conn: psycopg.AsyncConnection[Any], begin: Begin) -> Response:
        cur = await conn.execute("SELECT note FROM notes WHERE id = %s", (begin.resource,))
        row = await cur.fetchone()
        return JSONResponse({"note": row[0] if row else None})

    def validate(body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("note"), str):
            raise Problem(400, "invalid_request", '"note" must be a string')

    @idem_.one_transaction(replay=rebuild, validate=validate)
    async def create(request: Request, work: Work) -> Response:
        note = work.body["note"]
        if note == "missing":
            raise Problem(404, "not_found", "nothing to attach to")
        if note == "refuse":
            p = Problem(409, "refund_exceeds_payment", "too much")
            work.tx.fail(error=p.body(), http_status=409, retryable=False)
            return problem_response(p)
        rid = f"{work.tenant}/{work.key}"
        await work.conn.execute("INSERT INTO notes VALUES (%s, %s)", (rid, note))
        work.tx.complete(resource=rid, http_status=201)
        return JSONResponse({"note": note}, status_code=201)

    @idem_.phased(replay=rebuild, validate=validate)
    async def create_phased(request: Request, work: PhasedWork) -> Response:
        rid = f"{work.tenant}/{work.key}"
        await work.claim.checkpoint("outside", {"done": True})
        async with work.claim.finish() as f:
            await work.conn.execute("INSERT INTO notes VALUES (%s, %s)", (rid, work.body["note"]))
            f.complete(resource=rid, http_status=201)
        return JSONResponse({"note": work.body["note"]}, status_code=201)

    return Starlette(routes=[Route("/notes", create, methods=["POST"]), Route("/phased", create_phased, methods=["POST"])])


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute("CREATE TABLE IF NOT EXISTS notes (id text PRIMARY KEY, note text)")
    transport = httpx.ASGITransport(app=make_app(dsn))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as cl:
        yield cl


def h(tenant: str, key: str | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {tenant}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


@pytest.mark.parametrize("path", ["/notes", "/phased"])
async def test_created_then_replayed_then_reused(client: httpx.AsyncClient, dsn: str, scope: str, path: str) -> None:
    tenant = scope.replace(":", "-")[:60]
    r = await client.post(path, json={"note": "hello"}, headers=h(tenant, '"k-1"'))
    assert (r.status_code, r.json(), r.headers.get("idempotent-replayed")) == (201, {"note": "hello"}, None)
    r = await client.post(path, json={"note": "hello"}, headers=h(tenant, "k-1"))
    assert (r.status_code, r.json(), r.headers["idempotent-replayed"]) == (201, {"note": "hello"}, "true")
    r = await client.post(path, json={"note": "other"}, headers=h(tenant, "k-1"))
    assert (r.status_code, r.headers["content-type"], r.json()["code"]) == (422, "application/problem+json", "idempotency_key_reused")
    other = "/phased" if path == "/notes" else "/notes"
    r = await client.post(other, json={"note": "hello"}, headers=h(tenant, "k-1"))
    assert (r.status_code, r.json()["code"]) == (422, "idempotency_key_reused")
    r = await client.post(path, json={"note": "hello"}, headers=h(tenant + "x", "k-1"))
    assert (r.status_code, r.headers.get("idempotent-replayed")) == (201, None)  # another tenant: another record


async def test_request_errors_store_nothing(client: httpx.AsyncClient, dsn: str, scope: str) -> None:
    tenant = scope.replace(":", "-")[:60]
    r = await client.post("/notes", json={"note": "x"}, headers={"Idempotency-Key": "k"})
    assert (r.status_code, r.json()["code"], r.headers["www-authenticate"]) == (401, "unauthorized", "Bearer")
    r = await client.post("/notes", json={"note": "x"}, headers=h(tenant, None))
    assert (r.status_code, r.json()["code"]) == (400, "idempotency_key_missing")
    r = await client.post("/notes", json={"note": "x"}, headers=h(tenant, '"bad'))
    assert (r.status_code, r.json()["code"]) == (400, "idempotency_key_invalid")
    r = await client.post("/notes", json={"note": 5}, headers=h(tenant, "v"))
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request")
    r = await client.post("/notes", content=b"{not json", headers=h(tenant, "v"))
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request")
    r = await client.post("/notes", json={"note": "missing"}, headers=h(tenant, "m"))
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        assert (await idem.check(c, tenant, "v")).state is State.ABSENT
        assert (await idem.check(c, tenant, "m")).state is State.ABSENT


async def test_stored_failure_replays(client: httpx.AsyncClient, scope: str) -> None:
    tenant = scope.replace(":", "-")[:60]
    r = await client.post("/notes", json={"note": "refuse"}, headers=h(tenant, "f"))
    assert (r.status_code, r.json()["code"], r.headers.get("idempotent-replayed")) == (409, "refund_exceeds_payment", None)
    r = await client.post("/notes", json={"note": "refuse"}, headers=h(tenant, "f"))
    assert (r.status_code, r.json()["code"], r.headers["idempotent-replayed"]) == (409, "refund_exceeds_payment", "true")


async def test_held_key_is_409_with_retry_after_or_202(client: httpx.AsyncClient, dsn: str, scope: str) -> None:
    tenant = scope.replace(":", "-")[:60]
    cmd = {"method": "POST", "path": "/notes", "body": {"note": "x"}}
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await idem.claim(holder, tenant, "held", cmd)  # committed, with the default lease (1 minute)
        r = await client.post("/notes", json={"note": "x"}, headers=h(tenant, "held"))
        assert (r.status_code, r.json()["code"]) == (409, "request_in_progress")
        assert 50 <= int(r.headers["retry-after"]) <= 60
        r = await client.post("/notes", json={"note": "x"}, headers={**h(tenant, "held"), "Prefer": "respond-async"})
        assert (r.status_code, r.headers["location"]) == (202, "/v1/idempotency-keys/held")
        tx = idem.transaction(holder, tenant, "open", cmd)
        await tx.__aenter__()  # an uncommitted holder: no lease yet
        r = await client.post("/notes", json={"note": "x"}, headers=h(tenant, "open"))
        assert (r.status_code, r.headers["retry-after"]) == (409, "1")
        await tx.__aexit__(RuntimeError, RuntimeError("abandon"), None)
