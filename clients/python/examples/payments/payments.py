"""The example payments service in Python: the routes of the reference service's HTTP
contract on Starlette, with the `idempotency` client doing the idempotency part.

    python payments.py serve --database-url URL --listen 127.0.0.1:8081 [--lease 30s]

- `POST /v1/payments` is phased (the card charge is outside the database): a claim under a
  lease, the charge with the processor-side key `<tenant>/<key>`, the checkpoint `charged`,
  then the payment row and the completion in one transaction. A takeover that finds
  `charged` does not charge again.
- `POST /v1/payments/{id}/refunds` is one transaction: claim, lock the payment, check what
  remains, insert the refund, complete; too much is a stored final failure (409).
- `GET /v1/payments/{id}`, `GET /v1/refunds/{id}`, `GET /v1/idempotency-keys/{key}`,
  `GET /healthz`.

The card processor is a mock inside the process (`tok_visa` succeeds, `tok_declined` is
declined, `tok_flaky` fails with 503 on its first call per key, `tok_slow` answers after 2 s).
Authorization is a demo: the Bearer token names the tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import uvicorn
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idempotency import Begin, State, aio
from idempotency.http import (
    CARD_DECLINED,
    IDEMPOTENCY_KEY_INVALID,
    INVALID_REQUEST,
    NOT_FOUND,
    PROCESSOR_UNAVAILABLE,
    REFUND_EXCEEDS_PAYMENT,
    Problem,
    parse_bearer_tenant,
)
from idempotency.starlette import Idempotency, PhasedWork, Work, problem_response

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS idempotency;
CREATE TABLE IF NOT EXISTS payments (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    amount numeric(18, 2) NOT NULL,
    currency text NOT NULL,
    card text NOT NULL,
    description text,
    status text NOT NULL,
    charge_id text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    payment_id text NOT NULL REFERENCES payments (id),
    amount numeric(18, 2) NOT NULL,
    created_at timestamptz NOT NULL
);
"""

AMOUNT = re.compile(r"(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?")
CURRENCY = re.compile(r"[A-Z]{3}")


# --- The mock card processor ------------------------------------------------------------


@dataclass
class Processor:
    """Charges keyed by the processor-side idempotency key: the same key, the same charge."""

    charges: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    async def charge(self, key: str, card: str) -> tuple[int, str | None]:
        """(status, charge id): 200 and the charge, 402 declined, 503 unavailable."""
        self.calls[key] = self.calls.get(key, 0) + 1
        if card == "tok_declined":
            return 402, None
        if card == "tok_flaky" and self.calls[key] == 1:
            return 503, None
        if card == "tok_slow":
            await asyncio.sleep(2)
        if key not in self.charges:
            self.charges[key] = "ch_" + uuid.uuid4().hex[:24]
        return 200, self.charges[key]


# --- Validation (before any claim: an invalid body stores nothing) ----------------------


def _invalid(detail: str) -> Problem:
    return Problem(400, INVALID_REQUEST, detail)


def _amount(body: Any) -> Decimal:
    amount = body.get("amount") if isinstance(body, dict) else None
    if not isinstance(amount, str) or not AMOUNT.fullmatch(amount) or Decimal(amount) <= 0:
        raise _invalid('"amount" must be a decimal string > 0 with at most 2 decimals')
    return Decimal(amount)


def _members(body: Any, allowed: set[str]) -> None:
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(f"unknown member {unknown[0]!r}")


def validate_payment(body: Any) -> None:
    _members(body, {"amount", "currency", "card", "description"})
    _amount(body)
    if not isinstance(body.get("currency"), str) or not CURRENCY.fullmatch(body["currency"]):
        raise _invalid('"currency" must be 3 upper-case letters')
    if not isinstance(body.get("card"), str) or not body["card"]:
        raise _invalid('"card" must be a non-empty token')
    if "description" in body and not isinstance(body["description"], str):
        raise _invalid('"description" must be a string')


def validate_refund(body: Any) -> None:
    _members(body, {"amount"})
    _amount(body)


# --- Resources --------------------------------------------------------------------------


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def payment_json(row: tuple[Any, ...]) -> dict[str, Any]:
    pid, amount, currency, status, charge_id, created_at = row
    return {
        "id": pid,
        "amount": f"{amount:.2f}",
        "currency": currency,
        "status": status,
        "charge_id": charge_id,
        "created_at": rfc3339(created_at),
    }


def refund_json(row: tuple[Any, ...]) -> dict[str, Any]:
    rid, payment_id, amount, created_at = row
    return {"id": rid, "payment_id": payment_id, "amount": f"{amount:.2f}", "created_at": rfc3339(created_at)}


async def load_payment(conn: psycopg.AsyncConnection[Any], tenant: str, pid: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT id, amount, currency, status, charge_id, created_at FROM payments WHERE id = %s AND tenant = %s",
        (pid, tenant),
    )
    row = await cur.fetchone()
    return payment_json(row) if row else None


async def load_refund(conn: psycopg.AsyncConnection[Any], tenant: str, rid: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT id, payment_id, amount, created_at FROM refunds WHERE id = %s AND tenant = %s", (rid, tenant)
    )
    row = await cur.fetchone()
    return refund_json(row) if row else None


def not_found() -> Response:
    return problem_response(Problem(404, NOT_FOUND, "no such resource"))


# --- The service ------------------------------------------------------------------------


def make_app(database_url: str, lease: timedelta) -> Starlette:
    pool = AsyncConnectionPool(database_url, min_size=2, max_size=10, open=False)
    idem = Idempotency(connection=pool.connection)
    processor = Processor()

    async def rebuild(request: Request, conn: psycopg.AsyncConnection[Any], begin: Begin) -> Response:
        tenant = parse_bearer_tenant(request.headers.get("authorization"))
        kind, _, rid = (begin.resource or "").partition("/")
        if kind == "payments":
            body = await load_payment(conn, tenant, rid)
            location = f"/v1/payments/{rid}"
        else:
            body = await load_refund(conn, tenant, rid)
            location = f"/v1/refunds/{rid}"
        if body is None:
            raise RuntimeError(f"the stored resource {begin.resource!r} is gone")
        return JSONResponse(body, headers={"Location": location})

    @idem.phased(replay=rebuild, validate=validate_payment, lease=lease)
    async def create_payment(request: Request, work: PhasedWork) -> Response:
        claim, body = work.claim, work.body
        if claim.recovery_point == "charged":
            charge_id = claim.recovery_data["charge_id"]  # an earlier attempt charged: resume
        else:
            status, charge = await processor.charge(f"{work.tenant}/{work.key}", body["card"])
            if status == 402:
                p = Problem(402, CARD_DECLINED, "the card was declined")
                await claim.fail(error=p.body(), retryable=False, http_status=402)
                return problem_response(p)
            if status != 200 or charge is None:
                p = Problem(503, PROCESSOR_UNAVAILABLE, "the card processor is unavailable; try again",
                            headers={"Retry-After": "1"})
                await claim.fail(error=p.body(), retryable=True, http_status=503)
                return problem_response(p)
            charge_id = charge
            await claim.checkpoint("charged", {"charge_id": charge_id})
        pid = "pay_" + uuid.uuid4().hex
        created = datetime.now(timezone.utc)
        amount = _amount(body)
        # The payment and the completion commit together, fenced by the claim's attempt.
        async with claim.finish() as f:
            await work.conn.execute(
                "INSERT INTO payments (id, tenant, amount, currency, card, description, status, charge_id, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'succeeded', %s, %s)",
                (pid, work.tenant, amount, body["currency"], body["card"], body.get("description"), charge_id, created),
            )
            f.complete(resource=f"payments/{pid}", http_status=201)
        payment = payment_json((pid, amount, body["currency"], "succeeded", charge_id, created))
        return JSONResponse(payment, status_code=201, headers={"Location": f"/v1/payments/{pid}"})

    @idem.one_transaction(replay=rebuild, validate=validate_refund)
    async def create_refund(request: Request, work: Work) -> Response:
        conn, pid = work.conn, request.path_params["id"]
        amount = _amount(work.body)
        cur = await conn.execute(
            "SELECT amount FROM payments WHERE id = %s AND tenant = %s FOR UPDATE", (pid, work.tenant)
        )
        row = await cur.fetchone()
        if row is None:
            raise Problem(404, NOT_FOUND, "no such payment")  # rolls the claim back: nothing stored
        cur = await conn.execute("SELECT coalesce(sum(amount), 0) FROM refunds WHERE payment_id = %s", (pid,))
        refunded = (await cur.fetchone() or (0,))[0]
        if refunded + amount > row[0]:
            p = Problem(409, REFUND_EXCEEDS_PAYMENT, "the refunds would exceed the payment")
            work.tx.fail(error=p.body(), retryable=False, http_status=409)
            return problem_response(p)
        rid = "re_" + uuid.uuid4().hex
        created = datetime.now(timezone.utc)
        await conn.execute(
            "INSERT INTO refunds (id, tenant, payment_id, amount, created_at) VALUES (%s, %s, %s, %s, %s)",
            (rid, work.tenant, pid, amount, created),
        )
        work.tx.complete(resource=f"refunds/{rid}", http_status=201)
        return JSONResponse(refund_json((rid, pid, amount, created)), status_code=201,
                            headers={"Location": f"/v1/refunds/{rid}"})

    async def get_payment(request: Request) -> Response:
        return await _get(request, load_payment)

    async def get_refund(request: Request) -> Response:
        return await _get(request, load_refund)

    async def _get(request: Request, load: Any) -> Response:
        try:
            tenant = parse_bearer_tenant(request.headers.get("authorization"))
        except Problem as p:
            return problem_response(p)
        async with pool.connection() as conn:
            body = await load(conn, tenant, request.path_params["id"])
        return JSONResponse(body) if body else not_found()

    async def get_key(request: Request) -> Response:
        try:
            tenant = parse_bearer_tenant(request.headers.get("authorization"))
        except Problem as p:
            return problem_response(p)
        key = request.path_params["key"]
        if not 1 <= len(key.encode()) <= 255 or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
            return problem_response(Problem(400, IDEMPOTENCY_KEY_INVALID, "a key is 1 to 255 bytes without control characters"))
        async with pool.connection() as conn:
            c = await aio.check(conn, tenant, key)
        if c.state is State.ABSENT:
            return JSONResponse({"state": "absent"})
        return JSONResponse({
            "key": key,
            "state": c.state.value,
            "attempt": c.attempt,
            "status": c.http_status,
            "resource": c.resource,
            "created_at": rfc3339(c.created_at) if c.created_at else None,
            "expires_at": rfc3339(c.expires_at) if c.expires_at else None,
            "lease_expires_at": rfc3339(c.lease_expires_at) if c.lease_expires_at else None,
        })

    async def healthz(request: Request) -> Response:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(SCHEMA)
        yield
        await pool.close()

    async def http_problem(request: Request, exc: Exception) -> Response:
        # Unknown routes and methods: problem documents too, not Starlette's plain text.
        status = getattr(exc, "status_code", 500)
        code = NOT_FOUND if status == 404 else INVALID_REQUEST  # 405 too, as the reference service answers
        return problem_response(Problem(status, code, str(getattr(exc, "detail", "")) or "error",
                                        headers=dict(getattr(exc, "headers", None) or {})))

    return Starlette(
        exception_handlers={HTTPException: http_problem},
        routes=[
            Route("/healthz", healthz),
            Route("/v1/payments", create_payment, methods=["POST"]),
            Route("/v1/payments/{id}", get_payment, methods=["GET"]),
            Route("/v1/payments/{id}/refunds", create_refund, methods=["POST"]),
            Route("/v1/refunds/{id}", get_refund, methods=["GET"]),
            Route("/v1/idempotency-keys/{key:path}", get_key, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 500ms, 2m)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return timedelta(milliseconds=value) if unit == "ms" else timedelta(seconds=value * (60 if unit == "m" else 1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="payments.py")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--database-url", required=True)
    serve.add_argument("--listen", default="127.0.0.1:8081")
    serve.add_argument("--lease", type=duration, default=timedelta(seconds=30))
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(make_app(args.database_url, args.lease), host=host or "127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
