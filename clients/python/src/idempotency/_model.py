"""The typed results of the extension's functions and the SQL that calls them.

Shared by the sync (`idempotency.sync`) and async (`idempotency.aio`) clients: the SQL texts,
the parameters and the conversion of a row into a dataclass live here once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

JSON = Any
"""A JSON value as psycopg loads jsonb: dict, list, str, int, float, bool or None."""


class Outcome(str, enum.Enum):
    """What `idem_begin` tells the caller to do."""

    EXECUTE = "execute"
    """The caller now holds the key and must do the work."""
    REPLAY = "replay"
    """A final outcome is stored: answer with it."""
    IN_PROGRESS = "in_progress"
    """Another request holds the key."""


class State(str, enum.Enum):
    """The state of a record (`absent` only from `idem_check`)."""

    ABSENT = "absent"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Begin:
    """The one row of `idem_begin`."""

    outcome: Outcome
    state: State
    attempt: int | None
    recovery_point: str | None
    recovery_data: JSON
    http_status: int | None
    response: JSON
    resource: str | None
    fingerprint: bytes
    expires_at: datetime | None


@dataclass(frozen=True)
class Check:
    """The one row of `idem_check`."""

    state: State
    matches: bool | None
    attempt: int | None
    recovery_point: str | None
    http_status: int | None
    response: JSON
    resource: str | None
    created_at: datetime | None
    expires_at: datetime | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class Lease:
    """When a held key's lease ends, read with the database's clock."""

    lease_expires_at: datetime | None
    now: datetime

    @property
    def retry_after(self) -> int:
        """Whole seconds until the lease ends, at least 1 (the HTTP `Retry-After`)."""
        if self.lease_expires_at is None:
            return 1
        seconds = (self.lease_expires_at - self.now).total_seconds()
        return max(1, int(-(-seconds // 1)))


BEGIN_SQL = (
    "SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response,"
    " resource, fingerprint, expires_at"
    " FROM idem_begin(%s, %s, %s, ttl => %s, lease => %s, wait => %s)"
)
COMPLETE_SQL = (
    "SELECT idem_complete(%s, %s, response => %s, resource => %s, http_status => %s,"
    " attempt => %s)"
)
FAIL_SQL = (
    "SELECT idem_fail(%s, %s, error => %s, retryable => %s, http_status => %s, attempt => %s)"
)
CHECKPOINT_SQL = "SELECT idem_checkpoint(%s, %s, %s, data => %s, attempt => %s)"
CHECK_SQL = (
    "SELECT state, matches, attempt, recovery_point, http_status, response, resource,"
    " created_at, expires_at, lease_expires_at FROM idem_check(%s, %s, %s)"
)
LEASE_SQL = "SELECT lease_expires_at, clock_timestamp() FROM idem_check(%s, %s)"
FINGERPRINT_SQL = "SELECT idem_fingerprint(%s)"
CANONICAL_SQL = "SELECT idem_canonical(%s)"
PURGE_SQL = "SELECT idem_purge(%s)"
FORGET_SQL = "SELECT idem_forget(%s, %s)"
SAVEPOINT_SQL = "SAVEPOINT idempotency_work"
ROLLBACK_TO_SAVEPOINT_SQL = "ROLLBACK TO SAVEPOINT idempotency_work"


def begin_command(isolation_level: Any, read_only: bool | None, deferrable: bool | None) -> str:
    """BEGIN with the connection's transaction characteristics, as psycopg would start it."""
    parts = ["BEGIN"]
    if isolation_level is not None:
        parts.append("ISOLATION LEVEL " + isolation_level.name.replace("_", " "))
    if read_only is not None:
        parts.append("READ ONLY" if read_only else "READ WRITE")
    if deferrable is not None:
        parts.append("DEFERRABLE" if deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


def jsonb(value: JSON) -> Jsonb | None:
    """A JSON value as a jsonb parameter; None stays SQL NULL (the functions' "none"). A value
    already wrapped in `Jsonb` (with a `dumps` of its own) is passed as it is."""
    if value is None or isinstance(value, Jsonb):
        return value
    return Jsonb(value)


def begin_params(
    scope: str,
    key: str,
    command: JSON,
    ttl: timedelta | None,
    lease: timedelta | None,
    wait: timedelta | None,
) -> tuple[Any, ...]:
    # The command is required: None is passed as SQL NULL so that the extension answers 22004.
    return (scope, key, jsonb(command), ttl, lease, wait)


def complete_params(
    scope: str,
    key: str,
    response: JSON,
    resource: str | None,
    http_status: int,
    attempt: int | None,
) -> tuple[Any, ...]:
    return (scope, key, jsonb(response), resource, http_status, attempt)


def fail_params(
    scope: str,
    key: str,
    error: JSON,
    retryable: bool,
    http_status: int,
    attempt: int | None,
) -> tuple[Any, ...]:
    return (scope, key, jsonb(error), retryable, http_status, attempt)


def begin_row(row: tuple[Any, ...] | None) -> Begin:
    if row is None:
        raise RuntimeError("idem_begin returned no row")
    return Begin(
        outcome=Outcome(row[0]),
        state=State(row[1]),
        attempt=row[2],
        recovery_point=row[3],
        recovery_data=row[4],
        http_status=row[5],
        response=row[6],
        resource=row[7],
        fingerprint=bytes(row[8]),
        expires_at=row[9],
    )


def check_row(row: tuple[Any, ...] | None) -> Check:
    if row is None:
        raise RuntimeError("idem_check returned no row")
    return Check(
        state=State(row[0]),
        matches=row[1],
        attempt=row[2],
        recovery_point=row[3],
        http_status=row[4],
        response=row[5],
        resource=row[6],
        created_at=row[7],
        expires_at=row[8],
        lease_expires_at=row[9],
    )


def lease_row(row: tuple[Any, ...] | None) -> Lease:
    if row is None:
        raise RuntimeError("idem_check returned no row")
    return Lease(lease_expires_at=row[0], now=row[1])
