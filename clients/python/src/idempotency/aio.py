"""The asynchronous client on a `psycopg.AsyncConnection`: the same surface as
`idempotency.sync`, with `async`/`await` (`idempotency.sync` is generated from
this module by tools/async_to_sync.py).

Plain calls (`begin`, `complete`, ...) run one statement on the connection as it is (inside
the caller's transaction, if one is open). The helpers own their transactions:

- `transaction(...)`: the one-transaction way. Begin, the caller's work and the completion
  commit together or not at all.
- `claim(...)`: the phased way. A committed claim under a lease, checkpoints, and a completion
  fenced by the claim's attempt.

Both use psycopg's pipeline mode (libpq 14 or later), so that statements whose results are
not needed yet travel together: see docs/clients.md for the round trips of each flow.
"""

from __future__ import annotations

import logging
import random
import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from . import _model as m
from ._model import JSON, Begin, Check, Lease, Outcome
from .errors import FOLLOW_UP_SQL, IdempotencyError, SerializationFailure, translate

T = TypeVar("T")
log = logging.getLogger("idempotency")


# --- Plain calls ------------------------------------------------------------------------


async def _one(conn: psycopg.AsyncConnection[Any], sql: str, params: tuple[Any, ...], scope: str | None = None,
         key: str | None = None, *, command: JSON = None, attempt: int | None = None) -> tuple[Any, ...] | None:
    try:
        return await (await conn.execute(sql, params)).fetchone()
    except psycopg.Error as e:
        raise await _refusal(conn, e, scope, key, command=command, attempt=attempt) from e


# --- The data of a refusal (IK001, IK002, IK003) ----------------------------------------


async def _load(conn: psycopg.AsyncConnection[Any], error: IdempotencyError) -> bool:
    """The follow-up read of a refusal (`IdempotencyError.load`): one statement, with binary
    results, its columns read by name. Raises what psycopg raises."""
    params = error._follow_up_params()
    if params is None:
        return error.loaded
    status = conn.info.transaction_status
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise psycopg.ProgrammingError(
            "the refusal's data cannot be read in an aborted transaction: roll it back first"
        )
    switch = status == TransactionStatus.IDLE and not conn.autocommit
    if switch:  # no transaction is left open behind the read
        await conn.set_autocommit(True)  # sync: conn.autocommit = True
    try:
        # A cursor of psycopg's own class (not the connection's factory: Django's makes
        # client-side cursors, which have no binary results), rows as dicts by column name.
        async with psycopg.AsyncCursor(conn, row_factory=dict_row) as cur:
            await cur.execute(FOLLOW_UP_SQL, params, binary=True)
            row = await cur.fetchone()
    finally:
        if switch and not conn.closed:
            await conn.set_autocommit(False)  # sync: conn.autocommit = False
    if row is None:
        raise RuntimeError("idem_check returned no row")
    error._apply(row)
    error.loaded = True
    return True


async def _load_quietly(conn: psycopg.AsyncConnection[Any], error: BaseException) -> None:
    """The follow-up read when the connection can run it (idle, out of any transaction); a
    failure of the read leaves the fields empty: the refusal stays the error to report."""
    if not isinstance(error, IdempotencyError) or error.loaded or error._follow_up_params() is None:
        return
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        return
    try:
        await _load(conn, error)
    except Exception as e:
        log.debug("the follow-up read of %s failed (its data stays empty): %r", error.sqlstate, e)


async def _refusal(
    conn: psycopg.AsyncConnection[Any], e: psycopg.Error, scope: str | None, key: str | None, *,
    command: JSON = None, attempt: int | None = None,
) -> Exception:
    """The error translated, its data read by the follow-up when the connection is idle: a
    statement in autocommit mode, or after a helper rolled back its own transaction (inside
    the caller's transaction the fields stay empty: `error.load(conn)` after the rollback)."""
    error = translate(e, scope, key, command=command, attempt=attempt)
    await _load_quietly(conn, error)
    return error


async def begin(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    key: str,
    command: JSON,
    *,
    ttl: timedelta | None = None,
    lease: timedelta | None = None,
    wait: timedelta | None = None,
) -> Begin:
    """`idem_begin`: claim the key, or learn that it is stored or held."""
    params = m.begin_params(scope, key, command, ttl, lease, wait)
    return m.begin_row(await _one(conn, m.BEGIN_SQL, params, scope, key, command=command))


async def complete(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    key: str,
    *,
    response: JSON = None,
    resource: str | None = None,
    http_status: int = 200,
    attempt: int | None = None,
) -> None:
    """`idem_complete`: store the final outcome of a key in progress."""
    await _one(conn, m.COMPLETE_SQL, m.complete_params(scope, key, response, resource, http_status, attempt), scope, key, attempt=attempt)


async def fail(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    key: str,
    *,
    error: JSON = None,
    retryable: bool = True,
    http_status: int = 500,
    attempt: int | None = None,
) -> None:
    """`idem_fail`: store a failure; a retryable one is executed again by the next request."""
    await _one(conn, m.FAIL_SQL, m.fail_params(scope, key, error, retryable, http_status, attempt), scope, key, attempt=attempt)


async def checkpoint(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    key: str,
    recovery_point: str,
    data: JSON = None,
    *,
    attempt: int | None = None,
) -> datetime:
    """`idem_checkpoint`: record progress and renew the lease; returns the new lease end."""
    row = await _one(conn, m.CHECKPOINT_SQL, (scope, key, recovery_point, m.jsonb(data), attempt), scope, key, attempt=attempt)
    assert row is not None
    result: datetime = row[0]
    return result


async def check(conn: psycopg.AsyncConnection[Any], scope: str, key: str, command: JSON = None) -> Check:
    """`idem_check`: the key's committed state; read-only, works on a hot standby."""
    return m.check_row(await _one(conn, m.CHECK_SQL, (scope, key, m.jsonb(command)), scope, key))


async def lease(conn: psycopg.AsyncConnection[Any], scope: str, key: str) -> Lease:
    """When the key's lease ends, with the database's clock (for `Retry-After`)."""
    return m.lease_row(await _one(conn, m.LEASE_SQL, (scope, key), scope, key))


async def fingerprint(conn: psycopg.AsyncConnection[Any], command: JSON) -> bytes:
    """`idem_fingerprint`: the 32-byte SHA-256 of the canonical command."""
    row = await _one(conn, m.FINGERPRINT_SQL, (m.jsonb(command),))
    assert row is not None
    return bytes(row[0])


async def canonical(conn: psycopg.AsyncConnection[Any], command: JSON) -> str:
    """`idem_canonical`: the exact text that is hashed."""
    row = await _one(conn, m.CANONICAL_SQL, (m.jsonb(command),))
    assert row is not None
    result: str = row[0]
    return result


async def purge(conn: psycopg.AsyncConnection[Any], max_rows: int = 10000) -> int:
    """`idem_purge`: delete up to `max_rows` expired records."""
    row = await _one(conn, m.PURGE_SQL, (max_rows,))
    assert row is not None
    result: int = row[0]
    return result


async def forget(conn: psycopg.AsyncConnection[Any], scope: str, key: str) -> bool:
    """`idem_forget`: an operator's eviction of one live key."""
    row = await _one(conn, m.FORGET_SQL, (scope, key), scope, key)
    assert row is not None
    result: bool = row[0]
    return result


async def retry_serialization(
    fn: Callable[[], Awaitable[T]], *, attempts: int = 5, base_delay: float = 0.01
) -> T:
    """Run `fn` again when it fails with 40001, up to `attempts` times in all.

    `fn` must run a whole transaction (for example one `async with transaction(...)` block): a
    serialization failure aborts the transaction, and only running it again from the start
    can succeed. Waits between runs grow exponentially, with jitter.
    """
    for i in range(attempts):
        try:
            return await fn()
        except SerializationFailure:
            if i == attempts - 1:
                raise
        except psycopg.errors.SerializationFailure:
            if i == attempts - 1:
                raise
        await asyncio.sleep(base_delay * (2**i) * (0.5 + random.random()))
    raise AssertionError("unreachable")


# --- Helpers that own their transactions ------------------------------------------------


def _require_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise psycopg.ProgrammingError(
            "the idempotency helpers start their own transaction: the connection must be idle"
        )


class _Unit:
    """A transaction that a helper owns, in pipeline mode when libpq has it.

    Round trips are spent only where a result is needed: statements are queued, and `_sync()`
    sends them with a Sync (which, inside the explicit transaction, does not end it, and after
    an error brings the server back at once, so that the ROLLBACK that follows is queued too).
    Ending the unit queues COMMIT or ROLLBACK and leaves the pipeline: one Sync for both.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], scope: str, key: str, pipeline: bool):
        self.conn = conn
        self.scope = scope
        self.key = key
        self._use_pipeline = pipeline and psycopg.AsyncPipeline.is_supported()
        self._pipe: psycopg.AsyncPipeline | None = None
        self._pipe_cm: AbstractAsyncContextManager[psycopg.AsyncPipeline] | None = None
        self._was_autocommit = conn.autocommit
        self._command: JSON = None
        """The command and the attempt of the unit's calls, for the data of a refusal."""
        self._attempt: int | None = None

    async def _start(self) -> None:
        _require_idle(self.conn)
        if self._use_pipeline:
            # psycopg's own implicit BEGIN is sent with a Sync of its own in pipeline mode (a
            # round trip): the helper sends BEGIN itself, in autocommit mode for the duration.
            if not self._was_autocommit:
                await self.conn.set_autocommit(True)  # sync: self.conn.autocommit = True
            self._pipe_cm = self.conn.pipeline()
            self._pipe = await self._pipe_cm.__aenter__()
        # Without autocommit psycopg itself starts the transaction before the first statement.
        if self.conn.autocommit:
            await self.conn.execute(m.begin_command(self.conn.isolation_level, self.conn.read_only, self.conn.deferrable))

    async def _sync(self) -> None:
        if self._pipe is not None:
            await self._pipe.sync()

    async def _end(self, command: str) -> None:
        """Queue COMMIT or ROLLBACK and send everything still queued; on an error, roll back
        and raise the error (translated)."""
        try:
            if self._pipe is not None:
                await self.conn.execute(command)
                await self._leave_pipeline()
            elif command == "COMMIT":
                await self.conn.commit()
            else:
                await self.conn.rollback()
            await self._restore()
        except psycopg.Error as e:
            await self._abort()
            raise await self._refused(e) from e
        except BaseException:
            await self._abort()
            raise

    async def _refused(self, e: psycopg.Error) -> Exception:
        """The error translated; after `_abort()` the connection is idle, and a refusal's data
        is read (`_refusal`)."""
        return await _refusal(self.conn, e, self.scope, self.key, command=self._command, attempt=self._attempt)

    async def _leave_pipeline(self) -> None:
        """Send what is queued with a Sync and leave pipeline mode (raises a queued error)."""
        cm, self._pipe, self._pipe_cm = self._pipe_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def _abort(self) -> None:
        """Roll back whatever state the connection is in (the error itself is the caller's).

        In a pipeline the ROLLBACK is queued behind what is there: after a Sync that reported
        the error it runs at once (no extra round trip); if the server is still skipping to
        the next Sync, it is skipped too and a plain ROLLBACK follows.
        """
        try:
            if self._pipe is not None:
                try:
                    await self.conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass
                try:
                    await self._leave_pipeline()
                except psycopg.Error:
                    pass  # the error of a statement queued behind the first error
        finally:
            if not self.conn.closed:
                if self.conn.info.transaction_status != TransactionStatus.IDLE:
                    await self.conn.rollback()
                await self._restore()

    async def _restore(self) -> None:
        if self.conn.autocommit != self._was_autocommit and not self.conn.closed:
            await self.conn.set_autocommit(self._was_autocommit)  # sync: self.conn.autocommit = self._was_autocommit


class _Finish(_Unit):
    """The end of a unit of work: the completion or failure it records is written with the
    commit. Used by `Transaction` and by `Claim.finish()`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], scope: str, key: str, pipeline: bool):
        super().__init__(conn, scope, key, pipeline)
        self._final: tuple[str, tuple[Any, ...]] | None = None
        self._executing = True

    def complete(
        self, *, resource: str | None = None, response: JSON = None, http_status: int = 200
    ) -> None:
        """Store this outcome when the block ends (with the commit, in one round trip)."""
        self._record("complete", m.complete_params(self.scope, self.key, response, resource, http_status, self._attempt))

    def fail(self, *, error: JSON = None, http_status: int = 500, retryable: bool = True) -> None:
        """Store a failure when the block ends: the block's own writes are rolled back to the
        savepoint taken after the claim; the failure commits."""
        self._record("fail", m.fail_params(self.scope, self.key, error, retryable, http_status, self._attempt))

    def _record(self, kind: str, params: tuple[Any, ...]) -> None:
        if not self._executing:
            raise psycopg.ProgrammingError("only a request that executes may complete or fail the key")
        if self._final is not None:
            raise psycopg.ProgrammingError(f"the key was already marked to {self._final[0]}")
        self._final = (kind, params)

    async def _finish(self, exc: BaseException | None) -> None:
        if exc is not None:
            await self._abort()
            return
        if not self._executing:
            await self._end_not_executing()
            return
        if self._final is None:
            await self._abort()
            raise psycopg.ProgrammingError(
                "the block ended without complete() or fail(): nothing was stored"
            )
        kind, params = self._final
        try:
            if kind == "fail":
                await self.conn.execute(m.ROLLBACK_TO_SAVEPOINT_SQL)
                await self.conn.execute(m.FAIL_SQL, params)
            else:
                await self.conn.execute(m.COMPLETE_SQL, params)
        except psycopg.Error as e:
            await self._abort()
            raise await self._refused(e) from e
        await self._end("COMMIT")

    async def _end_not_executing(self) -> None:
        await self._end("ROLLBACK")


class Transaction(_Finish):
    """The one-transaction way: see `transaction()`."""

    begin: Begin
    lease: Lease | None
    """For `in_progress`: when the holder's lease ends (read at the end of the block)."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        scope: str,
        key: str,
        command: JSON,
        *,
        ttl: timedelta | None,
        wait: timedelta | None,
        pipeline: bool,
    ):
        super().__init__(conn, scope, key, pipeline)
        self._params = m.begin_params(scope, key, command, ttl, None, wait)
        self._command = command
        self.lease = None

    @property
    def outcome(self) -> Outcome:
        return self.begin.outcome

    @property
    def attempt(self) -> int | None:
        return self.begin.attempt

    async def __aenter__(self) -> Transaction:
        conn = self.conn
        await self._start()
        try:
            cur = await conn.execute(m.BEGIN_SQL, self._params)
            await conn.execute(m.SAVEPOINT_SQL)
            await self._sync()
            self.begin = m.begin_row(await cur.fetchone())
        except psycopg.Error as e:
            await self._abort()
            raise await self._refused(e) from e
        except BaseException:
            await self._abort()
            raise
        self._executing = self.begin.outcome is Outcome.EXECUTE
        self._attempt = self.begin.attempt
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._finish(ev)

    async def _end_not_executing(self) -> None:
        if self.begin.outcome is Outcome.IN_PROGRESS:
            try:
                cur = await self.conn.execute(m.LEASE_SQL, (self.scope, self.key))
            except psycopg.Error as e:
                await self._abort()
                raise await self._refused(e) from e
            await self._end("ROLLBACK")
            self.lease = m.lease_row(await cur.fetchone())
        else:
            await self._end("ROLLBACK")


def transaction(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    key: str,
    command: JSON,
    *,
    ttl: timedelta | None = None,
    wait: timedelta | None = None,
    pipeline: bool = True,
) -> Transaction:
    """The one-transaction helper, a context manager on an idle connection.

    On entry: BEGIN, `idem_begin`, a savepoint (one round trip). In the block, look at
    `tx.outcome`; on `execute` do the work on `tx.conn` and call `tx.complete(...)` or
    `tx.fail(...)`. On exit: the completion (or the rollback to the savepoint and the failure)
    and COMMIT, in one round trip. On `replay` and `in_progress` the transaction is rolled
    back (for `in_progress`, `tx.lease` tells when the holder's lease ends). An exception out
    of the block rolls everything back, the claim included, and propagates: a retry then
    starts afresh. IK001 and the other SQLSTATEs are raised as `idempotency.errors` classes
    (a refusal's data read after the rollback).

    With `pipeline=True` (the default) the block runs in psycopg's pipeline mode: statements
    whose results the block does not read are sent with the completion and the commit.
    """
    return Transaction(conn, scope, key, command, ttl=ttl, wait=wait, pipeline=pipeline)


async def _commit_one(
    conn: psycopg.AsyncConnection[Any], sql: str, params: tuple[Any, ...], scope: str, key: str,
    pipeline: bool, *, command: JSON = None, attempt: int | None = None,
) -> tuple[Any, ...] | None:
    """One statement in a transaction of its own, committed: one round trip in autocommit
    mode or with a pipeline (the statement and COMMIT under one Sync). `command` and `attempt`
    are the statement's, for the data of a refusal."""
    _require_idle(conn)
    if conn.autocommit:
        return await _one(conn, sql, params, scope, key, command=command, attempt=attempt)
    unit = _Unit(conn, scope, key, pipeline)
    unit._command, unit._attempt = command, attempt
    await unit._start()
    try:
        cur = await conn.execute(sql, params)
        if unit._pipe is None:
            row = await cur.fetchone()
            await unit._end("COMMIT")
            return row
    except psycopg.Error as e:
        await unit._abort()
        raise await unit._refused(e) from e
    await unit._end("COMMIT")
    return await cur.fetchone()


class Claim:
    """A committed claim of the phased way: see `claim()`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], scope: str, key: str, begin: Begin, pipeline: bool):
        self.conn = conn
        self.scope = scope
        self.key = key
        self.begin = begin
        self._pipeline = pipeline

    @property
    def outcome(self) -> Outcome:
        return self.begin.outcome

    @property
    def attempt(self) -> int | None:
        return self.begin.attempt

    @property
    def recovery_point(self) -> str | None:
        return self.begin.recovery_point

    @property
    def recovery_data(self) -> JSON:
        return self.begin.recovery_data

    def _require_execute(self) -> int:
        if self.begin.outcome is not Outcome.EXECUTE or self.begin.attempt is None:
            raise psycopg.ProgrammingError("only a claim that executes holds the key")
        return self.begin.attempt

    async def checkpoint(self, recovery_point: str, data: JSON = None) -> datetime:
        """Commit a recovery point (fenced by this claim's attempt); renews the lease."""
        attempt = self._require_execute()
        row = await _commit_one(self.conn, m.CHECKPOINT_SQL, (self.scope, self.key, recovery_point, m.jsonb(data), attempt), self.scope, self.key, self._pipeline, attempt=attempt)
        assert row is not None
        result: datetime = row[0]
        return result

    async def complete(self, *, resource: str | None = None, response: JSON = None, http_status: int = 200) -> None:
        """Complete in a transaction of its own (when no business write goes with it)."""
        attempt = self._require_execute()
        await _commit_one(self.conn, m.COMPLETE_SQL, m.complete_params(self.scope, self.key, response, resource, http_status, attempt), self.scope, self.key, self._pipeline, attempt=attempt)

    async def fail(self, *, error: JSON = None, retryable: bool = True, http_status: int = 500) -> None:
        """Fail in a transaction of its own; a retryable failure is executed again (attempt + 1)."""
        attempt = self._require_execute()
        await _commit_one(self.conn, m.FAIL_SQL, m.fail_params(self.scope, self.key, error, retryable, http_status, attempt), self.scope, self.key, self._pipeline, attempt=attempt)

    async def lease(self) -> Lease:
        """When the holder's lease ends (for an `in_progress` claim's `Retry-After`)."""
        return m.lease_row(await _commit_one(self.conn, m.LEASE_SQL, (self.scope, self.key), self.scope, self.key, self._pipeline))

    def finish(self) -> Finish:
        """A transaction for the business write that goes with the completion: in the block,
        write on `f.conn` and call `f.complete(...)` (or `f.fail(...)`); on exit both commit
        together, fenced by this claim's attempt (IK003 if another request took over)."""
        attempt = self._require_execute()
        return Finish(self.conn, self.scope, self.key, attempt, self._pipeline)


class Finish(_Finish):
    """The last phase of a claim: see `Claim.finish()`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], scope: str, key: str, attempt: int, pipeline: bool):
        super().__init__(conn, scope, key, pipeline)
        self._attempt = attempt

    async def __aenter__(self) -> Finish:
        await self._start()
        try:
            await self.conn.execute(m.SAVEPOINT_SQL)
        except psycopg.Error as e:
            await self._abort()
            raise await self._refused(e) from e
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._finish(ev)


async def claim(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    key: str,
    command: JSON,
    *,
    lease: timedelta | None = None,
    ttl: timedelta | None = None,
    wait: timedelta | None = None,
    pipeline: bool = True,
) -> Claim:
    """The phased helper: `idem_begin` in a transaction of its own, committed, so that the
    claim holds a lease while the caller works outside the database.

    On `execute`, `claim.attempt` is the fencing token and `claim.recovery_point` /
    `claim.recovery_data` the last checkpoint of an earlier attempt (resume from there).
    Then `claim.checkpoint(...)`, and `claim.finish()` (business write + completion in one
    transaction) or `claim.complete(...)` / `claim.fail(...)`. A claim whose lease was taken
    over gets `LeaseLost` (IK003) from all of them.
    """
    params = m.begin_params(scope, key, command, ttl, lease, wait)
    row = await _commit_one(conn, m.BEGIN_SQL, params, scope, key, pipeline, command=command)
    return Claim(conn, scope, key, m.begin_row(row), pipeline)


