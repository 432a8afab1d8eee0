"""The async client: the same flows as the sync tests, on psycopg's AsyncConnection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest

from idempotency import KeyReused, LeaseLost, NotInProgress, NotOwner, Outcome, SerializationFailure, State
from idempotency import aio as idem
from records import first_used

CMD = {"method": "POST", "path": "/v1/payments", "body": {"amount": "10.00", "currency": "EUR"}}
OTHER = {"method": "POST", "path": "/v1/payments", "body": {"amount": "100.00", "currency": "EUR"}}

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aconn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        yield c


@pytest.fixture
async def aconn2(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        yield c


async def effects(conn: psycopg.AsyncConnection, scope: str) -> list[str]:
    await conn.execute("CREATE TABLE IF NOT EXISTS effects (scope text, key text, note text)")
    await conn.commit()
    cur = await conn.execute("SELECT key FROM effects WHERE scope = %s ORDER BY key", (scope,))
    rows = await cur.fetchall()
    await conn.commit()
    return [r[0] for r in rows]


async def write_effect(conn: psycopg.AsyncConnection, scope: str, key: str) -> None:
    await conn.execute("INSERT INTO effects VALUES (%s, %s, 'done')", (scope, key))


async def wait_for_waiter(dsn: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as w:
        while not await (await w.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' AND query LIKE %s",
            (pid, "%idem_begin%"),
        )).fetchone():
            await asyncio.sleep(0.01)


async def test_plain_calls(aconn: psycopg.AsyncConnection, scope: str) -> None:
    b = await idem.begin(aconn, scope, "k", CMD)
    assert (b.outcome, b.attempt) == (Outcome.EXECUTE, 1)
    await idem.complete(aconn, scope, "k", resource="payments/1", http_status=201, attempt=1)
    await aconn.commit()
    r = await idem.begin(aconn, scope, "k", CMD)
    assert (r.outcome, r.http_status, r.resource) == (Outcome.REPLAY, 201, "payments/1")
    await aconn.commit()
    c = await idem.check(aconn, scope, "k", OTHER)
    assert (c.state, c.matches) == (State.COMPLETED, False)
    assert await idem.canonical(aconn, {"b": 1, "a": 2.0}) == '{"a":2,"b":1}'
    assert await idem.fingerprint(aconn, CMD) == b.fingerprint
    assert await idem.forget(aconn, scope, "k") is True
    assert await idem.purge(aconn, 1) >= 0
    await aconn.commit()


async def test_refusals_reworded_in_a_sql_dmy_session(dsn: str, reworded_dsn: str, scope: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        await idem.begin(c, scope, "k", CMD, lease=timedelta(seconds=30))
        await c.commit()
    created, stored = first_used(dsn, scope, "k")
    async with await psycopg.AsyncConnection.connect(reworded_dsn) as conn:
        await conn.execute("SET DateStyle = 'SQL, DMY'")
        await conn.execute("SET TimeZone = 'Asia/Kolkata'")
        await conn.commit()
        with pytest.raises(KeyReused) as e:
            await idem.claim(conn, scope, "k", OTHER)
        assert e.value.message.startswith("Reworded:")
        assert (e.value.loaded, e.value.first_used_at, e.value.given_fingerprint) == (
            True, created, await idem.fingerprint(conn, OTHER))
        assert e.value.stored_fingerprint == stored == await idem.fingerprint(conn, CMD)  # idem_check's own
        await conn.rollback()
        await conn.set_autocommit(True)
        with pytest.raises(LeaseLost) as e2:
            await idem.complete(conn, scope, "k", attempt=4)
        assert (e2.value.message[:9], e2.value.current_attempt, e2.value.given_attempt) == ("Reworded:", 1, 4)
        with pytest.raises(NotInProgress) as e3:
            await idem.complete(conn, scope, "nothing")
        assert (e3.value.message[:9], e3.value.found) == ("Reworded:", State.ABSENT)


async def test_errors_by_sqlstate(aconn: psycopg.AsyncConnection, dsn: str, scope: str) -> None:
    async with idem.transaction(aconn, scope, "k", CMD) as tx:
        tx.complete(resource="payments/1", http_status=201)
    with pytest.raises(KeyReused) as e:
        async with idem.transaction(aconn, scope, "k", OTHER):
            pytest.fail("the block must not run")
    created, stored = first_used(dsn, scope, "k")
    assert (e.value.scope, e.value.key, e.value.loaded, e.value.first_used_at) == (scope, "k", True, created)
    assert e.value.given_fingerprint == await idem.fingerprint(aconn, OTHER)
    assert e.value.stored_fingerprint == stored == await idem.fingerprint(aconn, CMD)
    await aconn.rollback()
    with pytest.raises(NotInProgress) as e2:
        await idem.complete(aconn, scope, "k")  # in the caller's transaction: loaded later
    assert (e2.value.loaded, e2.value.found) == (False, None)
    await aconn.rollback()
    assert await e2.value.load(aconn) is True and e2.value.found is State.COMPLETED
    assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not aconn.autocommit
    async with await psycopg.AsyncConnection.connect(dsn.replace("user=postgres", "user=idem_other_role")) as other:
        with pytest.raises(NotOwner):
            await idem.check(other, scope, "k")


@pytest.mark.parametrize("autocommit", [False, True])
async def test_transaction_every_outcome(dsn: str, aconn2: psycopg.AsyncConnection, scope: str, autocommit: bool) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as conn:
        await effects(conn, scope)
        holder = idem.transaction(aconn2, scope, "k", CMD)
        htx = await holder.__aenter__()
        assert htx.outcome is Outcome.EXECUTE
        async with idem.transaction(conn, scope, "k", CMD) as tx:
            assert tx.outcome is Outcome.IN_PROGRESS
        assert tx.lease is not None and tx.lease.retry_after == 1
        await write_effect(aconn2, scope, "k")
        htx.complete(resource="effects/k", http_status=201)
        await holder.__aexit__(None, None, None)
        async with idem.transaction(conn, scope, "k", CMD) as tx:
            assert (tx.outcome, tx.begin.resource) == (Outcome.REPLAY, "effects/k")
        async with idem.transaction(conn, scope, "f", CMD) as tx:
            await write_effect(conn, scope, "f")
            tx.fail(error={"code": "card_declined"}, http_status=402, retryable=False)
        async with idem.transaction(conn, scope, "f", CMD) as tx:
            assert (tx.outcome, tx.begin.state, tx.begin.response) == (Outcome.REPLAY, State.FAILED, {"code": "card_declined"})
        with pytest.raises(RuntimeError):
            async with idem.transaction(conn, scope, "boom", CMD):
                raise RuntimeError("the work failed")
        assert (await idem.check(conn, scope, "boom")).state is State.ABSENT
        await conn.rollback()
        assert conn.autocommit is autocommit
        assert await effects(conn, scope) == ["k"]


async def test_racing_tasks_execute_once(dsn: str, scope: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        await effects(c, scope)

    async def worker() -> Outcome:
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            async with idem.transaction(c, scope, "hot", CMD, wait=timedelta(seconds=30)) as tx:
                if tx.outcome is Outcome.EXECUTE:
                    await write_effect(c, scope, "hot")
                    tx.complete(resource="effects/hot", http_status=201)
                return tx.outcome

    outcomes = await asyncio.gather(*(worker() for _ in range(8)))
    assert sorted(o.value for o in outcomes) == ["execute"] + ["replay"] * 7
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        assert await effects(c, scope) == ["hot"]


async def test_serialization_failure_is_retried(dsn: str, aconn: psycopg.AsyncConnection, scope: str) -> None:
    holder = idem.transaction(aconn, scope, "k", CMD)
    (await holder.__aenter__()).complete(http_status=201)
    runs: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn) as rr:
        await rr.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)

        async def run() -> Outcome:
            try:
                async with idem.transaction(rr, scope, "k", CMD, wait=timedelta(seconds=30)) as tx:
                    runs.append(tx.outcome.value)
                    return tx.outcome
            except SerializationFailure as e:
                runs.append(e.sqlstate)
                raise

        task = asyncio.create_task(idem.retry_serialization(run))
        await wait_for_waiter(dsn, rr.info.backend_pid)
        await holder.__aexit__(None, None, None)
        assert await task is Outcome.REPLAY
    assert runs == ["40001", "replay"]


async def test_phased_takeover_fences_the_stale_holder(aconn: psycopg.AsyncConnection, aconn2: psycopg.AsyncConnection, scope: str) -> None:
    await effects(aconn, scope)
    stale = await idem.claim(aconn, scope, "k", CMD, lease=timedelta(milliseconds=200))
    await stale.checkpoint("charged", {"charge_id": "ch_1"})
    await asyncio.sleep(0.5)
    new = await idem.claim(aconn2, scope, "k", CMD, lease=timedelta(seconds=30))
    assert (new.outcome, new.attempt, new.recovery_point, new.recovery_data) == (Outcome.EXECUTE, 2, "charged", {"charge_id": "ch_1"})
    with pytest.raises(LeaseLost) as e:
        async with stale.finish() as f:
            await write_effect(aconn, scope, "stale")
            f.complete(resource="effects/stale", http_status=201)
    assert (e.value.current_attempt, e.value.given_attempt) == (2, 1)
    async with new.finish() as f:
        await write_effect(aconn2, scope, "new")
        f.complete(resource="effects/new", http_status=201)
    again = await idem.claim(aconn, scope, "k", CMD)
    assert (again.outcome, again.begin.resource) == (Outcome.REPLAY, "effects/new")
    assert await effects(aconn, scope) == ["new"]


async def test_round_trips_per_flow(counted_dsn: str, proxy: object, aconn2: psycopg.AsyncConnection, scope: str) -> None:
    await effects(aconn2, scope)
    held = await idem.claim(aconn2, scope, "held", CMD, lease=timedelta(seconds=30))
    got: dict[str, int] = {}
    async with await psycopg.AsyncConnection.connect(counted_dsn) as conn:

        async def measure(name: str, flow) -> None:  # type: ignore[no-untyped-def]
            proxy.reset()  # type: ignore[attr-defined]
            await flow()
            got[name] = proxy.count  # type: ignore[attr-defined]

        async def new() -> None:
            async with idem.transaction(conn, scope, "k", CMD) as tx:
                await write_effect(conn, scope, "k")
                tx.complete(resource="effects/k", http_status=201)

        async def replay() -> None:
            async with idem.transaction(conn, scope, "k", CMD) as tx:
                assert tx.outcome is Outcome.REPLAY

        async def in_progress() -> None:
            async with idem.transaction(conn, scope, "held", CMD) as tx:
                assert tx.outcome is Outcome.IN_PROGRESS

        async def ik001() -> None:
            with pytest.raises(KeyReused):
                async with idem.transaction(conn, scope, "k", OTHER):
                    pass

        claims: list[idem.Claim] = []

        async def claim() -> None:
            claims.append(await idem.claim(conn, scope, "p", CMD, lease=timedelta(seconds=30)))

        async def checkpoint() -> None:
            await claims[0].checkpoint("charged", {"charge_id": "ch_1"})

        async def finish() -> None:
            async with claims[0].finish() as f:
                await write_effect(conn, scope, "p")
                f.complete(resource="effects/p", http_status=201)

        for name, flow in [("new", new), ("replay", replay), ("in_progress", in_progress), ("ik001", ik001),
                           ("claim", claim), ("checkpoint", checkpoint), ("finish", finish)]:
            await measure(name, flow)
    await held.complete()
    assert got == {"new": 2, "replay": 2, "in_progress": 2, "ik001": 3, "claim": 1, "checkpoint": 1, "finish": 1}
