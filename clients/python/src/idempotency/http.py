"""The extension's answers mapped to HTTP, as plain functions any framework can call.

| the extension says | status | `code` | headers |
|---|---|---|---|
| `replay` | the stored `http_status` | the stored problem's, for a failure | `Idempotent-Replayed: true` |
| `in_progress` | 409 | `request_in_progress` | `Retry-After`: seconds to the lease end, at least 1 |
| `in_progress`, `Prefer: respond-async` | 202 | | `Location: /v1/idempotency-keys/<key>` |
| IK001 `KeyReused` | 422 | `idempotency_key_reused` | |
| IK003 `LeaseLost` | 409 | `request_in_progress` | `Retry-After: 1` |
| IK002 `NotInProgress` | 500 | `internal_error` | |
| 42501 `NotOwner` | 403 | `forbidden` | |
| 22023, 22004 `InvalidArgument` | 400 | `invalid_request` | |
| 40001 (after the retries), 25006, a lost connection | 503 | `service_unavailable` | `Retry-After: 1` |
| any other database error | 500 | `internal_error` | |

Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`
member: a client branches on `code`, never on the text. The request side: the
`Idempotency-Key` header (an RFC 8941 sf-string, or a bare token for Stripe-style clients)
and `Authorization: Bearer <tenant>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from http_sfv.item import Item
from http_sfv.types import Token

from ._model import JSON, Begin, Lease, Outcome, State
from .errors import (
    InvalidArgument,
    KeyReused,
    LeaseLost,
    NotInProgress,
    NotOwner,
    SerializationFailure,
)

IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
RETRY_AFTER = "Retry-After"
PROBLEM_JSON = "application/problem+json"

UNAUTHORIZED = "unauthorized"
INVALID_REQUEST = "invalid_request"
IDEMPOTENCY_KEY_MISSING = "idempotency_key_missing"
IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
REQUEST_IN_PROGRESS = "request_in_progress"
CARD_DECLINED = "card_declined"
PROCESSOR_UNAVAILABLE = "processor_unavailable"
REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"
NOT_FOUND = "not_found"
# Beyond the payments service's list: answers that no request of its contract should get.
FORBIDDEN = "forbidden"
SERVICE_UNAVAILABLE = "service_unavailable"
INTERNAL_ERROR = "internal_error"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Problem(Exception):
    """An RFC 9457 problem: raise it from a handler, or send `body()` with `headers`."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.status} {self.code}: {self.detail}")

    def body(self) -> dict[str, Any]:
        return problem(self.status, self.code, self.detail, **self.extra)


def problem(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem document with the `code` member (extra members merged in)."""
    doc: dict[str, Any] = {
        "type": f"urn:problem-type:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    for k, v in extra.items():
        doc.setdefault(k, v)
    return doc


# --- The request side -------------------------------------------------------------------

_BARE_TOKEN = re.compile(r"[A-Za-z0-9._~:+/=-]+")
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_idempotency_key(values: list[str]) -> str:
    """The key from the `Idempotency-Key` header's values (one header expected).

    An RFC 8941 sf-string (`"k-123"`, parsed with a structured-field parser, no parameters) or a bare token `[A-Za-z0-9._~:+/=-]+` name the same key; 1 to 255 bytes, no
    control characters. Missing: 400 `idempotency_key_missing`; anything else that is not
    such a key: 400 `idempotency_key_invalid`.
    """
    if not values:
        raise Problem(400, IDEMPOTENCY_KEY_MISSING, "the Idempotency-Key header is required")
    if len(values) > 1:
        raise _invalid_key("send exactly one Idempotency-Key header")
    raw = values[0].strip(" \t")
    if raw.startswith('"'):
        item = Item()
        try:
            item.parse(raw.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise _invalid_key("the Idempotency-Key is not a valid sf-string") from None
        if not isinstance(item.value, str) or isinstance(item.value, Token):
            raise _invalid_key("the Idempotency-Key is not a valid sf-string")
        if len(item.params):
            raise _invalid_key("the Idempotency-Key takes no parameters")
        key = str(item.value)
    elif _BARE_TOKEN.fullmatch(raw):
        key = raw
    else:
        raise _invalid_key("the Idempotency-Key must be an sf-string or a token")
    if not 1 <= len(key.encode("utf-8")) <= 255:
        raise _invalid_key("the Idempotency-Key must be 1 to 255 bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise _invalid_key("the Idempotency-Key must not hold control characters")
    return key


def _invalid_key(detail: str) -> Problem:
    return Problem(400, IDEMPOTENCY_KEY_INVALID, detail)


def parse_bearer_tenant(value: str | None) -> str:
    """The tenant named by `Authorization: Bearer <tenant>` (`[A-Za-z0-9_-]{1,64}`); else 401."""
    if value:
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and _TENANT.fullmatch(token):
            return token
    raise Problem(
        401,
        UNAUTHORIZED,
        "send Authorization: Bearer <tenant>",
        headers={"WWW-Authenticate": "Bearer"},
    )


@dataclass(frozen=True)
class Prefer:
    respond_async: bool = False
    wait: int | None = None


def parse_prefer(values: list[str], max_wait: int = 10) -> Prefer:
    """`Prefer: respond-async` and `Prefer: wait=N` (RFC 7240); `wait` capped at `max_wait`
    seconds (10 by default)."""
    respond_async = False
    wait: int | None = None
    for value in values:
        for pref in value.split(","):
            name, _, arg = pref.split(";")[0].strip().partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                try:
                    wait = min(max_wait, max(0, int(arg.strip().strip('"'))))
                except ValueError:
                    pass
    return Prefer(respond_async, wait)


def command(method: str, path: str, body: JSON) -> dict[str, Any]:
    """The fingerprinted command of an HTTP request: another endpoint or body is another one."""
    return {"method": method, "path": path, "body": body}


# --- The response side ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What to answer instead of executing: status, headers and, when known, the body.

    For a replay of a completion whose outcome is a `resource`, `body` is None: the caller
    rebuilds the body from the resource (no response body is stored).
    """

    status: int
    headers: dict[str, str]
    body: JSON
    code: str | None = None

    @property
    def media_type(self) -> str:
        return PROBLEM_JSON if self.status >= 400 else "application/json"


def answer_for_begin(
    begin: Begin, *, lease: Lease | None = None, key: str | None = None, prefer: Prefer | None = None
) -> Answer | None:
    """The answer for `idem_begin`'s row, or None for `execute` (the caller does the work).

    `lease` is the holder's lease for `in_progress` (the helpers read it), `key` and
    `prefer` give the 202 of `Prefer: respond-async`.
    """
    if begin.outcome is Outcome.EXECUTE:
        return None
    if begin.outcome is Outcome.REPLAY:
        return answer_for_replay(begin)
    if prefer is not None and prefer.respond_async and key is not None:
        from urllib.parse import quote

        return Answer(202, {"Location": f"/v1/idempotency-keys/{quote(key, safe='')}"}, None)
    retry = lease.retry_after if lease is not None else 1
    return Answer(
        409,
        {RETRY_AFTER: str(retry)},
        problem(409, REQUEST_IN_PROGRESS, "another request holds this idempotency key"),
        REQUEST_IN_PROGRESS,
    )


def answer_for_replay(begin: Begin) -> Answer:
    """A replay: the stored status and `Idempotent-Replayed: true`; for a stored failure the
    stored problem is the body (and its `code`)."""
    status = begin.http_status or 200
    code = None
    if status >= 400 and isinstance(begin.response, dict):
        c = begin.response.get("code")
        code = c if isinstance(c, str) else None
    body = begin.response if (begin.state is State.FAILED or begin.resource is None) else None
    return Answer(status, {IDEMPOTENT_REPLAYED: "true"}, body, code)


def problem_for_error(error: BaseException) -> Problem:
    """The problem for an error of the client (or a database error)."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, KeyReused):
        extra: dict[str, Any] = {}
        when = ""
        if error.first_used_at is not None:
            extra["first_used_at"] = error.first_used_at.isoformat()
            when = f" at {extra['first_used_at']}"
        return Problem(
            422,
            IDEMPOTENCY_KEY_REUSED,
            f"this idempotency key was first used{when} with a different request; "
            "use a new key for a different request",
            extra=extra,
        )
    if isinstance(error, LeaseLost):
        return Problem(
            409,
            REQUEST_IN_PROGRESS,
            "another request took this idempotency key over",
            headers={RETRY_AFTER: "1"},
        )
    if isinstance(error, NotInProgress):
        return Problem(500, INTERNAL_ERROR, "the idempotency key is no longer in progress")
    if isinstance(error, NotOwner):
        return Problem(403, FORBIDDEN, "this idempotency key belongs to another role")
    if isinstance(error, InvalidArgument):
        return Problem(400, INVALID_REQUEST, error.message)
    if isinstance(error, SerializationFailure) or (
        isinstance(error, psycopg.Error)
        and (error.sqlstate in ("40001", "25006") or error.sqlstate is None)
    ):
        return Problem(
            503, SERVICE_UNAVAILABLE, "the database is busy; try again", headers={RETRY_AFTER: "1"}
        )
    return Problem(500, INTERNAL_ERROR, "internal error")
