"""The sync client against a scratch PostgreSQL with the extension: every outcome, every
SQLSTATE mapped, races on one key, a phased takeover with fencing, the round trips."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from datetime import timedelta, timezone

import psycopg
import pytest

from idempotency import (
    InvalidArgument,
    KeyReused,
    LeaseLost,
    NotInProgress,
    NotOwner,
    Outcome,
    SerializationFailure,
    State,
)
from idempotency import sync as idem
from idempotency.http import answer_for_begin, problem_for_error
from records import first_used, sql_version

CMD = {"method": "POST", "path": "/v1/payments", "body": {"amount": "10.00", "currency": "EUR"}}
OTHER = {"method": "POST", "path": "/v1/payments", "body": {"amount": "100.00", "currency": "EUR"}}


def effects(conn: psycopg.Connection, scope: str) -> list[str]:
    conn.execute("CREATE TABLE IF NOT EXISTS effects (scope text, key text, note text)")
    conn.commit()
    rows = conn.execute("SELECT key FROM effects WHERE scope = %s ORDER BY key", (scope,)).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def write_effect(conn: psycopg.Connection, scope: str, key: str) -> None:
    conn.execute("INSERT INTO effects VALUES (%s, %s, 'done')", (scope, key))


def wait_for_waiter(pid: int) -> None:
    """Until backend `pid` is inside idem_begin (waiting for the holder). Polled from a
    connection of its own in autocommit: pg_stat_activity is a snapshot per transaction."""
    with psycopg.connect(DSN[0], autocommit=True) as watcher:
        while not watcher.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' AND query LIKE %s",
            (pid, "%idem_begin%"),
        ).fetchone():
            time.sleep(0.01)


DSN: list[str] = []


@pytest.fixture(autouse=True)
def _remember_dsn(dsn: str) -> None:
    DSN[:] = [dsn]


# --- Plain calls ------------------------------------------------------------------------


def test_plain_calls_execute_complete_replay_check(conn: psycopg.Connection, scope: str) -> None:
    b = idem.begin(conn, scope, "k", CMD)
    assert (b.outcome, b.state, b.attempt, b.http_status, b.resource) == (Outcome.EXECUTE, State.IN_PROGRESS, 1, None, None)
    assert b.fingerprint == idem.fingerprint(conn, CMD) and len(b.fingerprint) == 32
    idem.complete(conn, scope, "k", resource="payments/1", http_status=201, attempt=1)
    conn.commit()
    r = idem.begin(conn, scope, "k", {"body": {"currency": "EUR", "amount": "10.00"}, "path": "/v1/payments", "method": "POST"})
    assert (r.outcome, r.state, r.attempt, r.http_status, r.resource, r.response) == (Outcome.REPLAY, State.COMPLETED, 1, 201, "payments/1", None)
    conn.commit()
    c = idem.check(conn, scope, "k", CMD)
    assert (c.state, c.matches, c.attempt, c.http_status, c.resource, c.lease_expires_at) == (State.COMPLETED, True, 1, 201, "payments/1", None)
    assert idem.check(conn, scope, "k", OTHER).matches is False
    assert idem.check(conn, scope, "nope").state is State.ABSENT


def test_canonical_and_fingerprint(conn: psycopg.Connection) -> None:
    text = idem.canonical(conn, {"b": 1, "a": 2.0})
    assert text == '{"a":2,"b":1}'
    assert idem.fingerprint(conn, {"a": 2, "b": 1}) == hashlib.sha256(text.encode()).digest()


def test_forget_and_purge(conn: psycopg.Connection, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD)
    idem.complete(conn, scope, "k", response={"ok": True})
    conn.commit()
    assert idem.forget(conn, scope, "k") is True
    assert idem.forget(conn, scope, "k") is False
    # A ttl long enough for complete to find the key live even on a loaded machine.
    idem.begin(conn, scope, "short", CMD, ttl=timedelta(seconds=1))
    idem.complete(conn, scope, "short")
    conn.commit()
    time.sleep(1.1)
    assert idem.purge(conn, 100000) >= 1
    assert idem.purge(conn, 100000) == 0
    conn.commit()


def test_checkpoint_returns_the_new_lease_end(conn: psycopg.Connection, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD, lease=timedelta(seconds=30))
    conn.commit()
    end = idem.checkpoint(conn, scope, "k", "charged", {"charge_id": "ch_1"}, attempt=1)
    conn.commit()
    c = idem.check(conn, scope, "k")
    assert (c.recovery_point, c.lease_expires_at) == ("charged", end)


# --- Every SQLSTATE -------------------------------------------------------------------


def test_ik001_data_is_read_not_parsed_from_a_sql_dmy_session(conn: psycopg.Connection, dsn: str, scope: str) -> None:
    idem.begin(conn, scope, "k-1", CMD)
    idem.complete(conn, scope, "k-1", resource="payments/1", http_status=201)
    conn.commit()
    created, stored = first_used(dsn, scope, "k-1")
    # The DETAIL now prints the first use as 'dd/mm/yyyy hh:mm:ss.ffffff IST': nothing parses it.
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SET DateStyle = 'SQL, DMY'")
        other.execute("SET TimeZone = 'Asia/Kolkata'")
        with pytest.raises(KeyReused) as e:
            idem.begin(other, scope, "k-1", OTHER)
        assert "/" in (e.value.detail or "")  # the server's text is in the session's DateStyle
    err = e.value
    assert (err.sqlstate, err.scope, err.key, err.command, err.loaded) == ("IK001", scope, "k-1", OTHER, True)
    assert err.first_used_at == created and err.first_used_at.tzinfo == timezone.utc
    assert err.given_fingerprint == idem.fingerprint(conn, OTHER) and len(err.given_fingerprint) == 32
    assert stored == idem.fingerprint(conn, CMD)
    assert err.stored_fingerprint == stored  # idem_check's `fingerprint` (0.4.0)
    conn.rollback()
    p = problem_for_error(err)
    assert (p.status, p.code, p.extra) == (422, "idempotency_key_reused", {"first_used_at": created.isoformat()})


def test_ik001_data_when_the_messages_are_reworded(reworded_dsn: str, dsn: str, scope: str) -> None:
    s, k = scope + '", key "x', 'a", key "b'
    with psycopg.connect(reworded_dsn) as conn:
        with idem.transaction(conn, s, k, CMD) as tx:
            tx.complete(resource="payments/1", http_status=201)
        created, stored = first_used(dsn, s, k)
        with pytest.raises(KeyReused) as e:
            with idem.transaction(conn, s, k, OTHER):
                pytest.fail("the block must not run")
        err = e.value
        assert err.message.startswith("Reworded:") and err.hint == "a reworded hint"
        assert (err.sqlstate, (err.detail or "")[:13]) == ("IK001", "Nothing here:")
        assert (err.scope, err.key, err.loaded, err.first_used_at) == (s, k, True, created)
        assert err.given_fingerprint == idem.fingerprint(conn, OTHER)
        assert err.stored_fingerprint == stored == idem.fingerprint(conn, CMD)  # the real idem_check's
        conn.rollback()
        # The plain call in autocommit mode: the follow-up runs at once.
        conn.autocommit = True
        with pytest.raises(KeyReused) as e:
            idem.begin(conn, s, k, OTHER)
        assert (e.value.loaded, e.value.first_used_at, e.value.given_fingerprint) == (
            True, created, idem.fingerprint(conn, OTHER))


def test_ik001_inside_the_callers_transaction_is_loaded_after_the_rollback(conn: psycopg.Connection, dsn: str, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD)
    conn.commit()
    created, stored = first_used(dsn, scope, "k")
    with pytest.raises(KeyReused) as e:
        idem.begin(conn, scope, "k", OTHER)  # in the transaction psycopg opened: the caller's
    err = e.value
    assert (err.loaded, err.first_used_at, err.stored_fingerprint, err.given_fingerprint) == (False, None, None, None)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(psycopg.ProgrammingError):
        err.load(conn)  # not in the aborted transaction
    conn.rollback()
    assert err.load(conn) is True
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.autocommit
    assert (err.first_used_at, err.given_fingerprint) == (created, idem.fingerprint(conn, OTHER))
    assert err.stored_fingerprint == stored == idem.fingerprint(conn, CMD)
    conn.rollback()


CHECK_COLUMNS_0_3_0 = ["state", "matches", "attempt", "recovery_point", "http_status", "response",
                      "resource", "created_at", "expires_at", "lease_expires_at"]


def test_the_suites_database_has_0_4_0_sql_with_the_stored_fingerprint(dsn: str) -> None:
    """What the IK001 tests above read `stored_fingerprint` from: idem_check's 11th column."""
    assert sql_version(dsn) == ("0.4.0", [*CHECK_COLUMNS_0_3_0, "fingerprint"])


def test_ik001_on_0_3_0_sql_has_no_stored_fingerprint_and_the_rest(dsn_0_3_0: str, scope: str) -> None:
    """A database still on 0.3.0's SQL (OUT parameters, idem_check without `fingerprint`): the
    same calls and refusals; the follow-up reads the rest by name and leaves the stored
    fingerprint None."""
    assert sql_version(dsn_0_3_0) == ("0.3.0", CHECK_COLUMNS_0_3_0)
    with psycopg.connect(dsn_0_3_0) as conn:
        b = idem.begin(conn, scope, "k", CMD)
        assert (b.outcome, b.state, b.attempt, b.fingerprint) == (
            Outcome.EXECUTE, State.IN_PROGRESS, 1, idem.fingerprint(conn, CMD))
        idem.complete(conn, scope, "k", resource="payments/1", http_status=201, attempt=1)
        conn.commit()
        created, stored = first_used(dsn_0_3_0, scope, "k")
        assert stored == idem.fingerprint(conn, CMD)
        c = idem.check(conn, scope, "k", OTHER)
        assert (c.state, c.matches, c.attempt, c.http_status, c.resource, c.created_at) == (
            State.COMPLETED, False, 1, 201, "payments/1", created)
        conn.rollback()
        with pytest.raises(KeyReused) as e:  # in the helper's transaction: loaded after its rollback
            with idem.transaction(conn, scope, "k", OTHER):
                pytest.fail("the block must not run")
        assert (e.value.sqlstate, e.value.loaded, e.value.first_used_at, e.value.stored_fingerprint,
                e.value.given_fingerprint) == ("IK001", True, created, None, idem.fingerprint(conn, OTHER))
        conn.rollback()
        conn.autocommit = True
        with pytest.raises(KeyReused) as e:  # the plain call in autocommit mode
            idem.begin(conn, scope, "k", OTHER)
        assert (e.value.loaded, e.value.first_used_at, e.value.stored_fingerprint, e.value.given_fingerprint) == (
            True, created, None, idem.fingerprint(conn, OTHER))


def test_a_failed_follow_up_keeps_the_refusal_with_empty_data(conn: psycopg.Connection, broken_dsn: str, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD)
    conn.commit()
    with psycopg.connect(broken_dsn, autocommit=True) as other:
        with pytest.raises(KeyReused) as e:
            idem.begin(other, scope, "k", OTHER)
        assert other.closed  # the follow-up's session ended
    assert (e.value.loaded, e.value.first_used_at, e.value.given_fingerprint) == (False, None, None)
    assert e.value.load(conn) is True and e.value.first_used_at is not None  # later, elsewhere
    conn.rollback()


def test_ik002_is_not_in_progress_with_what_was_found(reworded_dsn: str, scope: str) -> None:
    with psycopg.connect(reworded_dsn, autocommit=True) as conn:
        with pytest.raises(NotInProgress) as e:
            idem.complete(conn, scope, "absent")
        assert (e.value.sqlstate, e.value.found, e.value.loaded) == ("IK002", State.ABSENT, True)
        assert e.value.message.startswith("Reworded:")
        idem.begin(conn, scope, "k", CMD)
        idem.complete(conn, scope, "k")
        with pytest.raises(NotInProgress) as e:
            idem.complete(conn, scope, "k")
        assert e.value.found is State.COMPLETED
        idem.begin(conn, scope, "f", CMD)
        idem.fail(conn, scope, "f", retryable=False)
        with pytest.raises(NotInProgress) as e:
            idem.complete(conn, scope, "f")
        assert e.value.found is State.FAILED
        idem.begin(conn, scope, "x", CMD, ttl=timedelta(milliseconds=50))
        time.sleep(0.1)
        with pytest.raises(NotInProgress) as e:
            idem.complete(conn, scope, "x")
        assert e.value.found is State.ABSENT  # expired: idem_check's absent
        assert (problem_for_error(e.value).status, problem_for_error(e.value).code) == (500, "internal_error")


def test_ik002_in_the_callers_transaction(conn: psycopg.Connection, scope: str) -> None:
    with pytest.raises(NotInProgress) as e:
        idem.fail(conn, scope, "absent")
    assert (e.value.loaded, e.value.found) == (False, None)
    conn.rollback()
    assert e.value.load(conn) is True and e.value.found is State.ABSENT


def test_ik003_is_lease_lost_with_both_attempts(reworded_dsn: str, conn: psycopg.Connection, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD)
    conn.commit()
    with pytest.raises(LeaseLost) as e:
        idem.checkpoint(conn, scope, "k", "p", attempt=5)
    assert (e.value.sqlstate, e.value.loaded, e.value.current_attempt, e.value.given_attempt) == ("IK003", False, None, 5)
    conn.rollback()
    assert e.value.load(conn) and e.value.current_attempt == 1
    with psycopg.connect(reworded_dsn) as rc:  # the helper's own transaction, messages reworded
        c = idem.claim(rc, scope, "k2", CMD)  # through the reworded idem_begin: attempt 1
        c.begin = dataclasses.replace(c.begin, attempt=3)  # as a stale holder's
        with pytest.raises(LeaseLost) as e:
            c.complete(resource="x")
        assert e.value.message.startswith("Reworded:")
        assert (e.value.loaded, e.value.current_attempt, e.value.given_attempt) == (True, 1, 3)
    p = problem_for_error(e.value)
    assert (p.status, p.code, p.headers) == (409, "request_in_progress", {"Retry-After": "1"})


def test_42501_is_not_owner(conn: psycopg.Connection, dsn: str, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD)
    idem.complete(conn, scope, "k")
    conn.commit()
    with psycopg.connect(dsn.replace("user=postgres", "user=idem_other_role")) as other:
        with pytest.raises(NotOwner) as e:
            idem.begin(other, scope, "k", CMD)
    assert e.value.sqlstate == "42501"
    assert (problem_for_error(e.value).status, problem_for_error(e.value).code) == (403, "forbidden")


@pytest.mark.parametrize(
    "scope_, key, command, state",
    [("s", "", CMD, "22023"), ("s", "k\n", CMD, "22023"), ("s", "x" * 256, CMD, "22023"), ("s", "k", None, "22004")],
)
def test_22023_and_22004_are_invalid_argument(conn: psycopg.Connection, scope_: str, key: str, command: object, state: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        idem.begin(conn, scope_, key, command)
    conn.rollback()
    assert e.value.sqlstate == state
    assert (problem_for_error(e.value).status, problem_for_error(e.value).code) == (400, "invalid_request")


def test_http_status_out_of_range_is_invalid_argument(conn: psycopg.Connection, scope: str) -> None:
    idem.begin(conn, scope, "k", CMD)
    with pytest.raises(InvalidArgument) as e:
        idem.complete(conn, scope, "k", http_status=600)
    conn.rollback()
    assert e.value.sqlstate == "22023"


# --- The one-transaction helper -------------------------------------------------------


@pytest.mark.parametrize("autocommit", [False, True])
def test_transaction_commits_work_with_completion_then_replays(dsn: str, scope: str, autocommit: bool) -> None:
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        effects(conn, scope)
        with idem.transaction(conn, scope, "k", CMD) as tx:
            assert (tx.outcome, tx.attempt) == (Outcome.EXECUTE, 1)
            write_effect(conn, scope, "k")
            tx.complete(resource="effects/k", http_status=201)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.autocommit is autocommit
        with idem.transaction(conn, scope, "k", CMD) as tx:
            assert (tx.outcome, tx.begin.http_status, tx.begin.resource) == (Outcome.REPLAY, 201, "effects/k")
            a = answer_for_begin(tx.begin)
            assert a is not None and (a.status, a.headers, a.body) == (201, {"Idempotent-Replayed": "true"}, None)
        assert effects(conn, scope) == ["k"]


def test_transaction_exception_rolls_back_claim_and_work(conn: psycopg.Connection, scope: str) -> None:
    effects(conn, scope)
    with pytest.raises(ZeroDivisionError):
        with idem.transaction(conn, scope, "k", CMD) as tx:
            write_effect(conn, scope, "k")
            1 / 0
    assert idem.check(conn, scope, "k").state is State.ABSENT
    conn.commit()
    assert effects(conn, scope) == []
    with idem.transaction(conn, scope, "k", CMD) as tx:
        assert (tx.outcome, tx.attempt) == (Outcome.EXECUTE, 1)
        tx.complete()


def test_transaction_fail_rolls_back_to_the_savepoint_and_stores_the_failure(conn: psycopg.Connection, scope: str) -> None:
    effects(conn, scope)
    error = {"code": "refund_exceeds_payment", "status": 409}
    with idem.transaction(conn, scope, "final", CMD) as tx:
        write_effect(conn, scope, "final")
        tx.fail(error=error, http_status=409, retryable=False)
    with idem.transaction(conn, scope, "final", CMD) as tx:
        assert (tx.outcome, tx.begin.state, tx.begin.http_status, tx.begin.response) == (Outcome.REPLAY, State.FAILED, 409, error)
        a = answer_for_begin(tx.begin)
        assert a is not None and (a.status, a.code, a.body, a.headers) == (409, "refund_exceeds_payment", error, {"Idempotent-Replayed": "true"})
    with idem.transaction(conn, scope, "again", CMD) as tx:
        tx.fail(error={"code": "processor_unavailable"}, http_status=503, retryable=True)
    with idem.transaction(conn, scope, "again", CMD) as tx:
        assert (tx.outcome, tx.attempt) == (Outcome.EXECUTE, 2)
        tx.complete(http_status=201)
    assert effects(conn, scope) == []


def test_transaction_without_complete_or_fail_stores_nothing(conn: psycopg.Connection, scope: str) -> None:
    with pytest.raises(psycopg.ProgrammingError, match="without complete"):
        with idem.transaction(conn, scope, "k", CMD):
            pass
    assert idem.check(conn, scope, "k").state is State.ABSENT
    conn.commit()


def test_transaction_complete_on_a_replay_is_refused(conn: psycopg.Connection, scope: str) -> None:
    with idem.transaction(conn, scope, "k", CMD) as tx:
        tx.complete()
    with pytest.raises(psycopg.ProgrammingError, match="only a request that executes"):
        with idem.transaction(conn, scope, "k", CMD) as tx:
            tx.complete()


def test_transaction_ik001_raises_and_leaves_the_connection_idle(conn: psycopg.Connection, scope: str) -> None:
    with idem.transaction(conn, scope, "k", CMD) as tx:
        tx.complete(resource="payments/1", http_status=201)
    with pytest.raises(KeyReused):
        with idem.transaction(conn, scope, "k", OTHER):
            pytest.fail("the block must not run")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_transaction_refuses_a_connection_inside_a_transaction(conn: psycopg.Connection, scope: str) -> None:
    conn.execute("SELECT 1")
    with pytest.raises(psycopg.ProgrammingError, match="must be idle"):
        with idem.transaction(conn, scope, "k", CMD):
            pass
    conn.rollback()


# --- Two connections racing one key -----------------------------------------------------


def test_uncommitted_holder_is_in_progress_then_replays(conn: psycopg.Connection, conn2: psycopg.Connection, scope: str) -> None:
    holder = idem.transaction(conn, scope, "k", CMD)
    tx = holder.__enter__()
    assert tx.outcome is Outcome.EXECUTE
    with idem.transaction(conn2, scope, "k", CMD) as other:
        assert (other.outcome, other.begin.http_status) == (Outcome.IN_PROGRESS, 409)
    assert other.lease is not None and other.lease.lease_expires_at is None and other.lease.retry_after == 1
    a = answer_for_begin(other.begin, lease=other.lease)
    assert a is not None and (a.status, a.code, a.headers) == (409, "request_in_progress", {"Retry-After": "1"})
    tx.complete(resource="payments/1", http_status=201)
    holder.__exit__(None, None, None)
    with idem.transaction(conn2, scope, "k", CMD) as other:
        assert (other.outcome, other.begin.resource) == (Outcome.REPLAY, "payments/1")


def test_a_waiter_gets_the_holders_outcome(conn: psycopg.Connection, conn2: psycopg.Connection, scope: str) -> None:
    holder = idem.transaction(conn, scope, "k", CMD)
    holder.__enter__().complete(resource="payments/1", http_status=201)
    seen: list[Outcome] = []

    def waiter() -> None:
        with idem.transaction(conn2, scope, "k", CMD, wait=timedelta(seconds=30)) as tx:
            seen.append(tx.outcome)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for_waiter(conn2.info.backend_pid)
    holder.__exit__(None, None, None)
    t.join()
    assert seen == [Outcome.REPLAY]


def test_many_connections_racing_one_key_execute_it_once(dsn: str, scope: str) -> None:
    with psycopg.connect(dsn) as c:
        effects(c, scope)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        with psycopg.connect(dsn) as c:
            start.wait()
            with idem.transaction(c, scope, "hot", CMD, wait=timedelta(seconds=30)) as tx:
                if tx.outcome is Outcome.EXECUTE:
                    write_effect(c, scope, "hot")
                    tx.complete(resource="effects/hot", http_status=201)
                with lock:
                    outcomes.append(tx.outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.value for o in outcomes) == ["execute"] + ["replay"] * 7
    with psycopg.connect(dsn) as c:
        assert effects(c, scope) == ["hot"]


def test_serialization_failure_is_retried(dsn: str, conn: psycopg.Connection, scope: str) -> None:
    """Under REPEATABLE READ a waiter whose snapshot predates the holder's commit gets 40001;
    retry_serialization runs its transaction again, which then replays."""
    holder = idem.transaction(conn, scope, "k", CMD)
    holder.__enter__().complete(resource="payments/1", http_status=201)
    runs: list[str] = []

    with psycopg.connect(dsn) as rr:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

        def run() -> Outcome:
            try:
                with idem.transaction(rr, scope, "k", CMD, wait=timedelta(seconds=30)) as tx:
                    runs.append(tx.outcome.value)
                    return tx.outcome
            except SerializationFailure as e:
                runs.append(e.sqlstate)
                raise

        result: list[Outcome] = []
        t = threading.Thread(target=lambda: result.append(idem.retry_serialization(run)))
        t.start()
        wait_for_waiter(rr.info.backend_pid)
        holder.__exit__(None, None, None)
        t.join()
    assert runs == ["40001", "replay"]
    assert result == [Outcome.REPLAY]


# --- The phased helper ----------------------------------------------------------------


def test_phased_claim_checkpoint_finish_then_replay(conn: psycopg.Connection, scope: str) -> None:
    effects(conn, scope)
    claim = idem.claim(conn, scope, "k", CMD, lease=timedelta(seconds=30))
    assert (claim.outcome, claim.attempt, claim.recovery_point) == (Outcome.EXECUTE, 1, None)
    assert idem.check(conn, scope, "k").state is State.IN_PROGRESS  # committed
    conn.commit()
    claim.checkpoint("charged", {"charge_id": "ch_1"})
    with claim.finish() as f:
        write_effect(conn, scope, "k")
        f.complete(resource="effects/k", http_status=201)
    again = idem.claim(conn, scope, "k", CMD)
    assert (again.outcome, again.begin.resource, again.begin.http_status) == (Outcome.REPLAY, "effects/k", 201)
    assert effects(conn, scope) == ["k"]


def test_phased_in_progress_reports_the_lease(conn: psycopg.Connection, conn2: psycopg.Connection, scope: str) -> None:
    idem.claim(conn, scope, "k", CMD, lease=timedelta(seconds=30))
    other = idem.claim(conn2, scope, "k", CMD)
    assert other.outcome is Outcome.IN_PROGRESS
    lease = other.lease()
    assert lease.lease_expires_at is not None and 20 <= lease.retry_after <= 30
    a = answer_for_begin(other.begin, lease=lease)
    assert a is not None and (a.status, a.headers["Retry-After"]) == (409, str(lease.retry_after))


def test_phased_takeover_fences_the_stale_holder(conn: psycopg.Connection, conn2: psycopg.Connection, scope: str) -> None:
    effects(conn, scope)
    stale = idem.claim(conn, scope, "k", CMD, lease=timedelta(milliseconds=200))
    stale.checkpoint("charged", {"charge_id": "ch_1"})
    time.sleep(0.5)  # past the lease: the next request takes over
    new = idem.claim(conn2, scope, "k", CMD, lease=timedelta(seconds=30))
    assert (new.outcome, new.attempt, new.recovery_point, new.recovery_data) == (Outcome.EXECUTE, 2, "charged", {"charge_id": "ch_1"})
    with pytest.raises(LeaseLost) as e:
        with stale.finish() as f:
            write_effect(conn, scope, "stale")
            f.complete(resource="effects/stale", http_status=201)
    assert (e.value.current_attempt, e.value.given_attempt) == (2, 1)
    with pytest.raises(LeaseLost):
        stale.checkpoint("later")
    with pytest.raises(LeaseLost):
        stale.fail(error={"code": "x"})
    with new.finish() as f:
        write_effect(conn2, scope, "new")
        f.complete(resource="effects/new", http_status=201)
    assert effects(conn, scope) == ["new"]
    with pytest.raises(LeaseLost):
        stale.complete(resource="effects/stale")  # fenced also after the newer attempt finished
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_phased_retryable_failure_is_executed_again(conn: psycopg.Connection, scope: str) -> None:
    c = idem.claim(conn, scope, "k", CMD)
    c.checkpoint("charged", {"charge_id": "ch_1"})
    c.fail(error={"code": "processor_unavailable"}, retryable=True, http_status=503)
    again = idem.claim(conn, scope, "k", CMD)
    assert (again.outcome, again.attempt, again.recovery_point) == (Outcome.EXECUTE, 2, "charged")
    again.fail(error={"code": "card_declined"}, retryable=False, http_status=402)
    final = idem.claim(conn, scope, "k", CMD)
    assert (final.outcome, final.begin.state, final.begin.http_status, final.begin.response) == (
        Outcome.REPLAY, State.FAILED, 402, {"code": "card_declined"})


# --- Round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline, expected", [
    # ik001: the refused BEGIN + idem_begin, the ROLLBACK, then the follow-up read of its data.
    (True, {"new": 2, "replay": 2, "in_progress": 2, "ik001": 3, "claim": 1, "checkpoint": 1, "finish": 1}),
    # Without a pipeline every statement is a round trip (psycopg sends BEGIN on its own too).
    (False, {"new": 6, "replay": 4, "in_progress": 5, "ik001": 4, "claim": 3, "checkpoint": 3, "finish": 5}),
])
def test_round_trips_per_flow(counted: tuple[psycopg.Connection, object], conn2: psycopg.Connection, scope: str,
                              pipeline: bool, expected: dict[str, int]) -> None:
    conn, proxy = counted
    effects(conn2, scope)
    got: dict[str, int] = {}

    def measure(name: str, flow) -> None:  # type: ignore[no-untyped-def]
        proxy.reset()  # type: ignore[attr-defined]
        flow()
        got[name] = proxy.count  # type: ignore[attr-defined]

    def new() -> None:
        with idem.transaction(conn, scope, "k", CMD, pipeline=pipeline) as tx:
            write_effect(conn, scope, "k")  # a write whose result is not read
            tx.complete(resource="effects/k", http_status=201)

    def replay() -> None:
        with idem.transaction(conn, scope, "k", CMD, pipeline=pipeline) as tx:
            assert tx.outcome is Outcome.REPLAY

    def ik001() -> None:
        with pytest.raises(KeyReused):
            with idem.transaction(conn, scope, "k", OTHER, pipeline=pipeline):
                pass

    held = idem.claim(conn2, scope, "held", CMD, lease=timedelta(seconds=30))

    def in_progress() -> None:
        with idem.transaction(conn, scope, "held", CMD, pipeline=pipeline) as tx:
            assert tx.outcome is Outcome.IN_PROGRESS
        assert tx.lease is not None and tx.lease.lease_expires_at is not None

    claims = []

    def claim() -> None:
        claims.append(idem.claim(conn, scope, "p", CMD, lease=timedelta(seconds=30), pipeline=pipeline))

    def finish() -> None:
        with claims[0].finish() as f:
            write_effect(conn, scope, "p")
            f.complete(resource="effects/p", http_status=201)

    measure("new", new)
    measure("replay", replay)
    measure("in_progress", in_progress)
    measure("ik001", ik001)
    measure("claim", claim)
    measure("checkpoint", lambda: claims[0].checkpoint("charged", {"charge_id": "ch_1"}))
    measure("finish", finish)
    held.complete()
    assert got == expected
    assert effects(conn2, scope) == ["k", "p"]
