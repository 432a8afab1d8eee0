"""The extension's errors as exceptions, chosen by SQLSTATE, never by message text.

| SQLSTATE | exception |
|---|---|
| IK001 | `KeyReused` (`first_used_at`, both fingerprints, from the follow-up read) |
| IK002 | `NotInProgress` (`found`, from the follow-up read) |
| IK003 | `LeaseLost` (`current_attempt` from the follow-up read, `given_attempt`) |
| 42501 | `NotOwner` |
| 22023, 22004 | `InvalidArgument` |
| 40001 | `SerializationFailure` (retried by `retry_serialization`) |

Any other database error is passed through as psycopg raised it.

No field is taken from the server's message, DETAIL or HINT (they are kept for display only,
as `message`, `detail`, `hint`): what a caller needs after a refusal of IK001, IK002 or IK003
is read as data, by one follow-up statement (`FOLLOW_UP_SQL`: the record through
`idem_check`, the given command's fingerprint through `idem_fingerprint`; no timestamp
travels as text). The client runs it when the connection can run it: after a helper rolled
back its own transaction, or in autocommit mode. A plain call inside a transaction that the
caller owns leaves the fields empty (`loaded` false): after the caller's rollback,
`error.load(conn)` (`await error.load(conn)` on an async connection) reads them. The fields are
the record as read right after the refusal: it may have changed in between (completed,
expired, purged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, overload

import psycopg

from ._model import JSON, State, jsonb

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

FOLLOW_UP_SQL = (
    "SELECT c.*, (extract(epoch FROM c.created_at) * 1000000)::bigint AS first_used_us,"
    " idem_fingerprint(%s::jsonb) AS given_fingerprint FROM idem_check(%s, %s) AS c"
)
"""The follow-up read after IK001, IK002 or IK003 (parameters: the given command or NULL,
scope, key), run with binary results and read by column name: `fingerprint`, the stored
fingerprint, is read when the server has it (extension 0.4.0), else left None."""


class IdempotencyError(Exception):
    """An error of the extension, with the server's SQLSTATE.

    `message`, `detail` and `hint` are the server's texts, for display only: nothing in the
    client reads them."""

    sqlstate: str = ""

    def __init__(self, error: psycopg.Error, scope: str | None = None, key: str | None = None) -> None:
        diag = error.diag
        self.message: str = diag.message_primary or str(error)
        self.detail: str | None = diag.message_detail
        self.hint: str | None = diag.message_hint
        self.sqlstate = error.sqlstate or self.sqlstate
        self.error = error
        self.scope: str | None = scope
        self.key: str | None = key
        self.loaded: bool = False
        """Whether the follow-up read has filled the error's data fields."""
        super().__init__(self.message)

    def _follow_up_params(self) -> tuple[Any, ...] | None:
        """The parameters of `FOLLOW_UP_SQL`, or None when this error has nothing to load."""
        return None

    def _apply(self, row: Mapping[str, Any]) -> None:
        """Fill the data fields from the follow-up row (by column name)."""

    @overload
    def load(self, conn: psycopg.AsyncConnection[Any]) -> Awaitable[bool]: ...

    @overload
    def load(self, conn: psycopg.Connection[Any]) -> bool: ...

    def load(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool | Awaitable[bool]:
        """Run the follow-up read on `conn` and fill the data fields; returns `loaded`.

        For a refusal met inside a transaction that the caller owns: call it after the
        rollback, on that connection or any other (`await error.load(conn)` on an async one).
        On an idle connection without autocommit it runs in autocommit mode (no transaction
        is left open); inside an open transaction it reads in it; in an aborted transaction
        it raises `psycopg.ProgrammingError`. A failure of the read (a lost connection)
        raises the psycopg error. Errors without data (42501, 22023, 40001) load nothing.
        """
        if isinstance(conn, psycopg.AsyncConnection):
            from . import aio

            return aio._load(conn, self)
        from . import sync

        return sync._load(conn, self)


class KeyReused(IdempotencyError):
    """IK001: the key was first used with a different command (HTTP 422).

    `scope` and `key` are the call's. From the follow-up read (None until `loaded`, and None
    if the record was gone by then): `first_used_at`, the record's `created_at` (UTC, exact to
    the microsecond); `stored_fingerprint`, the first command's 32-byte SHA-256 (None also
    with an extension before 0.4.0, whose `idem_check` does not return it);
    `given_fingerprint`, this call's command's (32 bytes).
    """

    sqlstate = "IK001"

    def __init__(self, error: psycopg.Error, scope: str | None = None, key: str | None = None,
                 command: JSON = None) -> None:
        super().__init__(error, scope, key)
        self.command: JSON = command
        """The command of the refused call (as given)."""
        self.first_used_at: datetime | None = None
        self.stored_fingerprint: bytes | None = None
        self.given_fingerprint: bytes | None = None

    def _follow_up_params(self) -> tuple[Any, ...] | None:
        if self.scope is None or self.key is None:
            return None
        return (jsonb(self.command), self.scope, self.key)

    def _apply(self, row: Mapping[str, Any]) -> None:
        us = row.get("first_used_us")
        self.first_used_at = EPOCH + timedelta(microseconds=us) if us is not None else None
        stored = row.get("fingerprint")
        self.stored_fingerprint = bytes(stored) if stored is not None else None
        given = row.get("given_fingerprint")
        self.given_fingerprint = bytes(given) if given is not None else None


class NotInProgress(IdempotencyError):
    """IK002: complete, fail or checkpoint on a key that is not in progress.

    `found` (from the follow-up read; None until `loaded`) is the record's state right after
    the refusal: `State.ABSENT` (no record, or expired), `State.COMPLETED`, `State.FAILED`, or
    `State.IN_PROGRESS` if it was claimed again in between.
    """

    sqlstate = "IK002"

    def __init__(self, error: psycopg.Error, scope: str | None = None, key: str | None = None) -> None:
        super().__init__(error, scope, key)
        self.found: State | None = None

    def _follow_up_params(self) -> tuple[Any, ...] | None:
        if self.scope is None or self.key is None:
            return None
        return (None, self.scope, self.key)

    def _apply(self, row: Mapping[str, Any]) -> None:
        state = row.get("state")
        self.found = State(state) if state is not None else None


class LeaseLost(IdempotencyError):
    """IK003: the attempt given is not the record's: another request took the key over.

    The holder must not report its own outcome. `given_attempt` is the call's attempt;
    `current_attempt` (from the follow-up read; None until `loaded`, or when the record is
    gone) the record's attempt right after the refusal.
    """

    sqlstate = "IK003"

    def __init__(self, error: psycopg.Error, scope: str | None = None, key: str | None = None,
                 attempt: int | None = None) -> None:
        super().__init__(error, scope, key)
        self.given_attempt: int | None = attempt
        self.current_attempt: int | None = None

    def _follow_up_params(self) -> tuple[Any, ...] | None:
        if self.scope is None or self.key is None:
            return None
        return (None, self.scope, self.key)

    def _apply(self, row: Mapping[str, Any]) -> None:
        attempt = row.get("attempt")
        self.current_attempt = int(attempt) if attempt is not None else None


class NotOwner(IdempotencyError):
    """42501: the record belongs to a role the caller is not a member of (HTTP 403)."""

    sqlstate = "42501"


class InvalidArgument(IdempotencyError):
    """22023 (out of its domain) or 22004 (NULL): a bad scope, key, status, interval or size."""

    sqlstate = "22023"


class SerializationFailure(IdempotencyError):
    """40001: the transaction met a concurrent commit it cannot see; run it again."""

    sqlstate = "40001"


_BY_SQLSTATE: dict[str, type[IdempotencyError]] = {
    "42501": NotOwner,
    "22023": InvalidArgument,
    "22004": InvalidArgument,
    "40001": SerializationFailure,
}


def translate(
    error: psycopg.Error,
    scope: str | None = None,
    key: str | None = None,
    *,
    command: JSON = None,
    attempt: int | None = None,
) -> Exception:
    """The exception for a database error, by its SQLSTATE alone: one of the above (its data
    fields empty until loaded), or the error itself. `command` is the call's command (for
    IK001's `given_fingerprint`), `attempt` the call's attempt (IK003's `given_attempt`)."""
    state = error.sqlstate or ""
    if state == "IK001":
        return KeyReused(error, scope, key, command)
    if state == "IK002":
        return NotInProgress(error, scope, key)
    if state == "IK003":
        return LeaseLost(error, scope, key, attempt)
    cls = _BY_SQLSTATE.get(state)
    return cls(error, scope, key) if cls else error
