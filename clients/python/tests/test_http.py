"""The HTTP mapping's request side and its answers, without a database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from idempotency import Begin, Lease, Outcome, State
from idempotency.http import (
    Prefer,
    Problem,
    answer_for_begin,
    command,
    parse_bearer_tenant,
    parse_idempotency_key,
    parse_prefer,
)


def begin(outcome: Outcome, state: State, status: int | None = None, response: object = None, resource: str | None = None) -> Begin:
    return Begin(outcome, state, 1, None, None, status, response, resource, b"\0" * 32, None)


@pytest.mark.parametrize("header, key", [
    ('"k-123"', "k-123"), ("k-123", "k-123"), ('"a\\"b\\\\c"', 'a"b\\c'), ("tok_visa.1~2:3+4/5=", "tok_visa.1~2:3+4/5="),
    ('  "k-1"  ', "k-1"), ('"with space"', "with space"), ("123", "123"), ("x" * 255, "x" * 255),
])
def test_keys_accepted(header: str, key: str) -> None:
    assert parse_idempotency_key([header]) == key


@pytest.mark.parametrize("values", [
    [""], ['"'], ['"unterminated'], ['""'], ["with space"], ['"k"garbage'], ["x" * 256], ['"' + "x" * 256 + '"'],
    ["k,1"], ["k-1", "k-2"], ['"\\x"'], ["ké"], ['"ké"'], ["?q"], ["(k)"], ['"k-1", "k-2"'], ["k\t1"], ['"k-1";x=1'], ["k;x=1"],
])
def test_keys_refused(values: list[str]) -> None:
    with pytest.raises(Problem) as e:
        parse_idempotency_key(values)
    assert (e.value.status, e.value.code) == (400, "idempotency_key_invalid")


def test_missing_key() -> None:
    with pytest.raises(Problem) as e:
        parse_idempotency_key([])
    assert (e.value.status, e.value.code) == (400, "idempotency_key_missing")
    body = e.value.body()
    assert body == {"type": "urn:problem-type:idempotency_key_missing", "title": "Bad Request", "status": 400,
                    "detail": body["detail"], "code": "idempotency_key_missing"}


@pytest.mark.parametrize("header, tenant", [("Bearer t1", "t1"), ("bearer A-b_9", "A-b_9"), ("Bearer " + "x" * 64, "x" * 64)])
def test_bearer_tenant(header: str, tenant: str) -> None:
    assert parse_bearer_tenant(header) == tenant


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dDE=", "Bearer t.1", "Bearer " + "x" * 65, "Bearer a b"])
def test_bearer_refused(header: str | None) -> None:
    with pytest.raises(Problem) as e:
        parse_bearer_tenant(header)
    assert (e.value.status, e.value.code, e.value.headers) == (401, "unauthorized", {"WWW-Authenticate": "Bearer"})


def test_prefer() -> None:
    assert parse_prefer([]) == Prefer(False, None)
    assert parse_prefer(["respond-async, wait=3"]) == Prefer(True, 3)
    assert parse_prefer(["wait=100"]) == Prefer(False, 10)
    assert parse_prefer(["handling=lenient", "RESPOND-ASYNC"]) == Prefer(True, None)


def test_command_holds_method_path_and_body() -> None:
    assert command("POST", "/v1/payments", {"a": 1}) == {"method": "POST", "path": "/v1/payments", "body": {"a": 1}}


def test_answers() -> None:
    assert answer_for_begin(begin(Outcome.EXECUTE, State.IN_PROGRESS)) is None
    a = answer_for_begin(begin(Outcome.REPLAY, State.COMPLETED, 201, None, "payments/1"))
    assert a is not None and (a.status, a.headers, a.body, a.code) == (201, {"Idempotent-Replayed": "true"}, None, None)
    a = answer_for_begin(begin(Outcome.REPLAY, State.COMPLETED, 200, {"ok": True}))
    assert a is not None and (a.status, a.body, a.media_type) == (200, {"ok": True}, "application/json")
    p = {"code": "card_declined", "status": 402}
    a = answer_for_begin(begin(Outcome.REPLAY, State.FAILED, 402, p))
    assert a is not None and (a.status, a.code, a.body, a.media_type) == (402, "card_declined", p, "application/problem+json")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    held = begin(Outcome.IN_PROGRESS, State.IN_PROGRESS, 409)
    a = answer_for_begin(held, lease=Lease(now + timedelta(seconds=29, milliseconds=1), now))
    assert a is not None and (a.status, a.code, a.headers) == (409, "request_in_progress", {"Retry-After": "30"})
    assert Lease(now + timedelta(milliseconds=200), now).retry_after == 1
    assert Lease(now - timedelta(seconds=5), now).retry_after == 1
    assert Lease(None, now).retry_after == 1
    assert Lease(now + timedelta(seconds=30), now).retry_after == 30
    a = answer_for_begin(held, key="k/1 é", prefer=Prefer(respond_async=True))
    assert a is not None and (a.status, a.headers, a.body) == (202, {"Location": "/v1/idempotency-keys/k%2F1%20%C3%A9"}, None)
