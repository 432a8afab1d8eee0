"""The extension's errors as exceptions, chosen by SQLSTATE, never by message text.

| SQLSTATE | exception |
|---|---|
| IK001 | `KeyReused` (with the DETAIL's fields) |
| IK002 | `NotInProgress` |
| IK003 | `LeaseLost` |
| 42501 | `NotOwner` |
| 22023, 22004 | `InvalidArgument` |
| 40001 | `SerializationFailure` (retried by `retry_serialization`) |

Any other database error is passed through as psycopg raised it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import psycopg


class IdempotencyError(Exception):
    """An error of the extension, with the server's SQLSTATE, message, DETAIL and HINT."""

    sqlstate: str = ""

    def __init__(self, error: psycopg.Error) -> None:
        diag = error.diag
        self.message: str = diag.message_primary or str(error)
        self.detail: str | None = diag.message_detail
        self.hint: str | None = diag.message_hint
        self.sqlstate = error.sqlstate or self.sqlstate
        self.error = error
        super().__init__(self.message)


class KeyReused(IdempotencyError):
    """IK001: the key was first used with a different command (HTTP 422).

    `first_used` is the time as the server printed it (in the session's DateStyle and
    TimeZone); `first_used_at` is that time parsed, when the DateStyle is ISO (the default).
    The fingerprints are the first 8 hex digits of each command's SHA-256.
    """

    sqlstate = "IK001"

    def __init__(self, error: psycopg.Error, scope: str | None = None, key: str | None = None):
        super().__init__(error)
        fields = parse_key_reused_detail(self.detail or "", scope, key)
        self.scope: str | None = fields[0] if fields else scope
        self.key: str | None = fields[1] if fields else key
        self.first_used: str | None = fields[2] if fields else None
        self.stored_fingerprint: str | None = fields[3] if fields else None
        self.given_fingerprint: str | None = fields[4] if fields else None
        self.first_used_at: datetime | None = (
            parse_iso_timestamptz(self.first_used) if self.first_used else None
        )


class NotInProgress(IdempotencyError):
    """IK002: complete, fail or checkpoint on a key that is not in progress.

    `found` is what the server found instead: "absent", "expired", "completed" or "failed"
    (None if the DETAIL was not the extension's).
    """

    sqlstate = "IK002"

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(error)
        m = re.search(r" (has no record|has expired|is completed|has failed)\.$", self.detail or "")
        self.found: str | None = (
            {
                "has no record": "absent",
                "has expired": "expired",
                "is completed": "completed",
                "has failed": "failed",
            }[m.group(1)]
            if m
            else None
        )


class LeaseLost(IdempotencyError):
    """IK003: the attempt given is not the record's: another request took the key over.

    The holder must not report its own outcome.
    """

    sqlstate = "IK003"

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(error)
        m = re.search(r" is at attempt (-?\d+); this call is from attempt (-?\d+)\.$", self.detail or "")
        self.current_attempt: int | None = int(m.group(1)) if m else None
        self.given_attempt: int | None = int(m.group(2)) if m else None


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
    "IK002": NotInProgress,
    "IK003": LeaseLost,
    "42501": NotOwner,
    "22023": InvalidArgument,
    "22004": InvalidArgument,
    "40001": SerializationFailure,
}


def translate(error: psycopg.Error, scope: str | None = None, key: str | None = None) -> Exception:
    """The exception for a database error: one of the above, or the error itself."""
    state = error.sqlstate
    if state == "IK001":
        return KeyReused(error, scope, key)
    cls = _BY_SQLSTATE.get(state or "")
    return cls(error) if cls else error


_TAIL = re.compile(
    r"was first used at (?P<at>.+) with command fingerprint (?P<stored>[0-9a-f]{8}); "
    r"this request's fingerprint is (?P<given>[0-9a-f]{8})\.$"
)
_HEAD = re.compile(r'^Scope "(?P<scope>.*)", key "(?P<key>.*)" (?=was first used at )')


def parse_key_reused_detail(
    detail: str, scope: str | None = None, key: str | None = None
) -> tuple[str, str, str, str, str] | None:
    """(scope, key, first_used, stored fingerprint, given fingerprint) from IK001's DETAIL.

    The DETAIL reads `Scope "<scope>", key "<key>" was first used at <time> with command
    fingerprint <8 hex>; this request's fingerprint is <8 hex>.` A scope or key may itself hold
    `", key "`, so when the caller knows them, the head is matched literally.
    """
    if scope is not None and key is not None:
        head = f'Scope "{scope}", key "{key}" '
        if not detail.startswith(head):
            return None
        rest = detail[len(head) :]
    else:
        h = _HEAD.match(detail)
        if not h:
            return None
        scope, key = h.group("scope"), h.group("key")
        rest = detail[h.end() :]
    t = _TAIL.fullmatch(rest)
    if not t:
        return None
    return (scope, key, t.group("at"), t.group("stored"), t.group("given"))


_ISO = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?"
)


def parse_iso_timestamptz(text: str) -> datetime | None:
    """A timestamptz as PostgreSQL prints it with DateStyle ISO, else None."""
    m = _ISO.fullmatch(text)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    micro = int((m.group(7) or "0").ljust(6, "0"))
    offset = timedelta(
        hours=int(m.group(9)), minutes=int(m.group(10) or 0), seconds=int(m.group(11) or 0)
    )
    tz = timezone(offset if m.group(8) == "+" else -offset)
    try:
        return datetime(y, mo, d, h, mi, s, micro, tzinfo=tz)
    except ValueError:
        return None
