"""idempotency.starlette.IdempotencyMiddleware on a FastAPI app (FastAPI is Starlette underneath:
the same middleware, added with app.add_middleware), over ASGI (httpx), on the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import psycopg
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from idempotency.starlette import IdempotencyMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Order(BaseModel):
    amount: Decimal
    currency: str


class Shop:
    """A FastAPI app with one phased route and one in the route's transaction; `calls` counts
    the routes' runs."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.calls = 0
        app = FastAPI()

        @app.post("/orders", status_code=201)
        async def create(order: Order) -> dict[str, str]:
            self.calls += 1
            return {"amount": str(order.amount), "currency": order.currency, "n": str(self.calls)}

        @app.post("/tx/orders")
        async def create_in_tx(order: Order, request: Request) -> JSONResponse:
            self.calls += 1
            info = request.state.idempotency
            await info.conn.execute("INSERT INTO fastapi_orders (scope, amount) VALUES (%s, %s)",
                                    (info.scope, order.amount))
            status = 201 if order.amount < 1000 else 503  # a failure the next retry runs again
            return JSONResponse({"amount": str(order.amount)}, status_code=status,
                                headers={"Location": f"/orders/{self.calls}"})

        app.add_middleware(IdempotencyMiddleware, pool=pool, tenant=lambda r: r.headers.get("x-tenant"),
                           routes={"/tx/{rest:path}": "transaction"})
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute("CREATE TABLE IF NOT EXISTS fastapi_orders (scope text, amount numeric)")
    p = AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False)
    await p.open(wait=True)
    yield p
    await p.close()


def h(scope: str, key: str | None) -> dict[str, str]:
    return {"X-Tenant": scope, **({"Idempotency-Key": key} if key else {})}


async def orders(dsn: str, scope: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        cur = await c.execute("SELECT count(*) FROM fastapi_orders WHERE scope = %s", (scope,))
        row = await cur.fetchone()
        return int(row[0]) if row else -1


async def test_fastapi_phased_route(pool: AsyncConnectionPool, scope: str) -> None:
    shop = Shop(pool)
    first = await shop.client.post("/orders", json={"amount": "10.00", "currency": "EUR"}, headers=h(scope, '"o-1"'))
    assert (first.status_code, first.json(), "idempotent-replayed" in first.headers) == (
        201, {"amount": "10.00", "currency": "EUR", "n": "1"}, False)
    # The retry (the bare token spelling, members in another order): the first answer, byte for byte.
    again = await shop.client.post("/orders", content=b'{"currency":"EUR","amount":"10.00"}',
                                   headers={**h(scope, "o-1"), "Content-Type": "application/json"})
    assert (again.status_code, again.content, again.headers["idempotent-replayed"], shop.calls) == (
        201, first.content, "true", 1)
    # 10 EUR became 100 EUR under the same key: refused, the route not run.
    changed = await shop.client.post("/orders", json={"amount": "100.00", "currency": "EUR"}, headers=h(scope, "o-1"))
    assert (changed.status_code, changed.headers["content-type"], changed.json()["code"], shop.calls) == (
        422, "application/problem+json", "idempotency_key_reused", 1)
    # FastAPI's own 422 for an invalid body is the route's 4xx: stored and replayed.
    invalid = await shop.client.post("/orders", json={"amount": "x"}, headers=h(scope, "o-2"))
    replayed = await shop.client.post("/orders", json={"amount": "x"}, headers=h(scope, "o-2"))
    assert (invalid.status_code, replayed.status_code, replayed.content, replayed.headers["idempotent-replayed"]) == (
        422, 422, invalid.content, "true")
    missing = await shop.client.post("/orders", json={"amount": "1", "currency": "EUR"}, headers=h(scope, None))
    assert (missing.status_code, missing.json()["code"], shop.calls) == (400, "idempotency_key_missing", 1)


async def test_fastapi_route_in_the_layers_transaction(pool: AsyncConnectionPool, dsn: str, scope: str) -> None:
    shop = Shop(pool)
    r = await shop.client.post("/tx/orders", json={"amount": "5", "currency": "EUR"}, headers=h(scope, "t-1"))
    assert (r.status_code, r.headers["location"], await orders(dsn, scope)) == (201, "/orders/1", 1)
    r = await shop.client.post("/tx/orders", json={"amount": "5", "currency": "EUR"}, headers=h(scope, "t-1"))
    assert (r.status_code, r.headers["location"], r.headers["idempotent-replayed"], await orders(dsn, scope)) == (
        201, "/orders/1", "true", 1)
    # A 503: the route's insert rolls back with the claim, and the retry runs the route again.
    for _ in range(2):
        r = await shop.client.post("/tx/orders", json={"amount": "5000", "currency": "EUR"}, headers=h(scope, "t-2"))
        assert (r.status_code, "idempotent-replayed" in r.headers) == (503, False)
    assert (shop.calls, await orders(dsn, scope)) == (3, 1)
