"""The drop-in layer's framework-neutral part (idempotency.layer): the command, the storage
decision, the stored response and its replay, the layer's own answers, the options."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from idempotency import Begin, Lease, Outcome, State
from idempotency import sync as idem
from idempotency.http import Prefer, Problem
from idempotency.layer import (
    ConfigurationError,
    Incoming,
    Options,
    Poll,
    body_member,
    command_jsonb,
    command_of,
    decode_stored,
    in_progress_reply,
    json_text,
    key_of,
    media_type,
    prepare,
    problem_reply,
    query_member,
    replay_reply,
    stored_response,
    stores,
)


def tenant(request: object) -> str:
    return "t"


def incoming(method: str = "POST", path: str = "/p", query: str = "", **headers: list[str]) -> Incoming:
    h = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return Incoming(method, path, query, lambda name: h.get(name, []))


OPTS = Options(tenant=tenant, command_headers=["X-Variant"], replay_headers=["X-Replayed-Too"])


# --- The command ------------------------------------------------------------------------


def test_command_exactly_as_documented() -> None:
    inc = incoming("post", "/orders/42/items", "a=1&b=&a=2", x_variant=["blue"], x_other=["no"])
    body = b'{"sku": "A-1", "qty": 2}'
    assert command_of(OPTS, inc, "application/json; charset=utf-8", body) == {
        "v": 1,
        "method": "POST",
        "path": "/orders/42/items",
        "query": {"a": ["1", "2"], "b": [""]},
        "headers": {"x-variant": ["blue"]},
        "body": {"media_type": "application/json", "json": {"sku": "A-1", "qty": 2}},
    }


def test_query_decoding() -> None:
    assert query_member("") == {}
    assert query_member("q=a+b&q=%2B%20c&e") == {"q": ["a b", "+ c"], "e": [""]}
    assert query_member("b=2&a=1&b=1") == {"b": ["2", "1"], "a": ["1"]}
    assert query_member("n=%C3%A9") == {"n": ["é"]}


def test_headers_member_named_only_in_order() -> None:
    opts = Options(tenant=tenant, command_headers=["x-a", "x-b"])
    inc = incoming(x_a=["1", "2"], x_c=["3"])
    assert command_of(opts, inc, None, b"")["headers"] == {"x-a": ["1", "2"]}
    assert command_of(OPTS, incoming(), None, b"")["headers"] == {}


def test_body_member() -> None:
    assert body_member("application/json", b"") is None
    assert body_member(None, b"") is None
    raw = b"\x00\x01binary"
    assert body_member(None, raw) == {"media_type": None, "sha256": hashlib.sha256(raw).hexdigest()}
    assert body_member("Text/Plain; charset=UTF-8", b"hi") == {
        "media_type": "text/plain",
        "sha256": "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4",
    }
    assert body_member("application/vnd.api+json", b"[1, 2.50]") == {
        "media_type": "application/vnd.api+json", "json": [1, Decimal("2.50")]}
    # A JSON media type whose body does not parse (or that jsonb could not hold) is hashed.
    for bad in (b"{not json", b"NaN", b'{"a": "\\u0000"}', b'"\\ud800"', b"\xff\xfe"):
        assert body_member("application/json", bad) == {
            "media_type": "application/json", "sha256": hashlib.sha256(bad).hexdigest()}, bad
    assert media_type("  ") is None


def test_json_text_keeps_numbers_exact() -> None:
    value = json.loads('{"a": [1, 2.50, 1e400, -0.0, "x\\"y"], "b": null, "c": true}', parse_float=Decimal)
    assert json_text(value) == '{"a":[1,2.50,1E+400,-0.0,"x\\"y"],"b":null,"c":true}'


def test_json_bodies_are_one_command_in_the_database(conn: psycopg.Connection) -> None:
    def fp(content_type: str | None, body: bytes, query: str = "") -> bytes:
        return idem.fingerprint(conn, command_jsonb(command_of(OPTS, incoming(query=query), content_type, body)))

    same = fp("application/json", b'{"a": 1, "b": [1.0, 2]}')
    assert fp("application/json", b'{ "b":[1, 2.00],"a":1.0 }') == same
    assert fp("application/json; charset=utf-8", b'{"b":[1,2],"a":1}') == same
    assert fp("application/json", b'{"a": 1, "b": [2, 1]}') != same
    assert fp("application/problem+json", b'{"a": 1, "b": [1, 2]}') != same
    assert fp("text/plain", b'{"a": 1, "b": [1, 2]}') != same
    # Exact numbers: these two differ only past float precision.
    assert fp("application/json", b"0.10000000000000000001") != fp("application/json", b"0.1")
    assert fp("application/json", b"{}", "b=1&a=2") == fp("application/json", b"{}", "a=2&b=1")
    assert fp("application/json", b"{}", "a=1&a=2") != fp("application/json", b"{}", "a=2&a=1")


# --- What is stored, and the replay -----------------------------------------------------


@pytest.mark.parametrize(("status", "streamed", "expected"), [
    (100, False, True), (200, False, True), (201, False, True), (302, False, True), (400, False, True),
    (404, False, True), (422, False, True), (428, False, True), (429, False, False), (430, False, True),
    (499, False, True), (500, False, False), (503, False, False), (599, False, False), (200, True, False),
])
def test_storage_decision(status: int, streamed: bool, expected: bool) -> None:
    assert stores(status, streamed) is expected


HEADERS = [("Content-Type", "application/json"), ("Location", "/things/1"), ("Set-Cookie", "s=1"),
           ("X-Replayed-Too", "yes"), ("X-Not-Stored", "no"), ("Vary", "Accept"), ("Vary", "Origin"),
           ("Content-Length", "11"), ("ETag", '"e"')]


def begin_with(response: object, status: int = 201) -> Begin:
    return Begin(Outcome.REPLAY, State.COMPLETED, 1, None, None, status, response, None, b"", None)


def test_stored_response_round_trip() -> None:
    doc = stored_response(OPTS, HEADERS, b'{"ok":true}')
    assert doc == {
        "v": 1,
        "headers": [["content-type", "application/json"], ["location", "/things/1"], ["x-replayed-too", "yes"],
                    ["vary", "Accept"], ["vary", "Origin"], ["etag", '"e"']],
        "body": base64.b64encode(b'{"ok":true}').decode(),
    }
    reply = replay_reply(begin_with(doc))
    assert (reply.status, reply.body) == (201, b'{"ok":true}')
    assert reply.headers == [("content-type", "application/json"), ("location", "/things/1"),
                             ("x-replayed-too", "yes"), ("vary", "Accept"), ("vary", "Origin"),
                             ("etag", '"e"'), ("idempotent-replayed", "true")]
    # Django reads jsonb as text: the same replay.
    assert replay_reply(begin_with(json.dumps(doc))).headers == reply.headers


def test_stored_body_limit_and_omitted_replay() -> None:
    opts = Options(tenant=tenant, max_stored_body=4)
    assert stored_response(opts, [], b"1234")["body"] == "MTIzNA=="
    doc = stored_response(opts, [("content-type", "text/plain")], b"12345")
    assert doc == {"v": 1, "headers": [["content-type", "text/plain"]], "omitted": True}
    reply = replay_reply(begin_with(doc, 200))
    assert (reply.status, reply.body) == (200, b"")
    assert reply.headers == [("content-type", "text/plain"), ("idempotent-replayed", "true"),
                             ("idempotent-replay-body", "omitted")]
    assert stored_response(opts, [], b"", omit=True) == {"v": 1, "headers": [], "omitted": True}


def test_decode_of_other_records() -> None:
    assert decode_stored(None) == ([], b"")
    assert decode_stored({"v": 2, "body": "eA=="}) == ([], b"")
    assert decode_stored("not json") == ([], b"")
    assert decode_stored({"v": 1, "headers": [["a", "b"]], "body": "%%"}) == ([("a", "b")], b"")


# --- The layer's answers ----------------------------------------------------------------


def test_in_progress_answers() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lease = Lease(now + timedelta(seconds=29, milliseconds=100), now)
    r = in_progress_reply(OPTS, lease, Prefer(), "k")
    assert (r.status, r.headers) == (409, [("content-type", "application/problem+json"), ("retry-after", "30")])
    assert json.loads(r.body) == {"type": "urn:problem-type:request_in_progress", "title": "Conflict",
                                  "status": 409, "detail": json.loads(r.body)["detail"], "code": "request_in_progress"}
    r = in_progress_reply(OPTS, None, Prefer(respond_async=True), "k/1")
    assert (r.status, r.headers) == (202, [("content-type", "application/problem+json"), ("retry-after", "1")])
    opts = Options(tenant=tenant, status_url=lambda key: f"/keys/{key}")
    r = in_progress_reply(opts, None, Prefer(respond_async=True), "k")
    assert (r.status, r.headers[-1]) == (202, ("location", "/keys/k"))
    assert json.loads(r.body)["code"] == "request_in_progress"


def test_problems_before_any_claim() -> None:
    with pytest.raises(Problem) as e:
        key_of(OPTS, incoming())
    assert (e.value.status, e.value.code) == (400, "idempotency_key_missing")
    with pytest.raises(Problem) as e:
        key_of(OPTS, incoming(idempotency_key=["a", "b"]))
    assert e.value.code == "idempotency_key_invalid"
    assert key_of(Options(tenant=tenant, required=False), incoming()) is None
    assert key_of(OPTS, incoming(idempotency_key=['"k-1"'])) == "k-1"
    for answer in (None, ""):
        with pytest.raises(Problem) as e:
            prepare(OPTS, incoming(), "k", answer, None, b"", "phased")
        assert (e.value.status, e.value.code) == (401, "unauthorized")
    with pytest.raises(Problem) as e:
        prepare(Options(tenant=tenant, max_body_bytes=3), incoming(), "k", "t", None, b"1234", "phased")
    assert (e.value.status, e.value.code) == (413, "payload_too_large")
    p = prepare(Options(global_keys=True, max_wait=3), incoming(prefer=["wait=9"]), "k", None, None, b"123", "phased")
    assert (p.scope, p.key, p.prefer, p.mode) == ("global", "k", Prefer(False, 3), "phased")
    r = problem_reply(Problem(413, "payload_too_large", "too big"))
    assert (r.status, r.headers, json.loads(r.body)["title"]) == (413, [("content-type", "application/problem+json")],
                                                                   "Content Too Large")


def test_poll_schedule() -> None:
    assert Poll(Prefer()).server_wait() is None
    assert Poll(Prefer()).pause() is None
    poll = Poll(Prefer(wait=10))
    wait = poll.server_wait()
    assert wait is not None and timedelta(seconds=0.99) < wait <= timedelta(seconds=1)
    assert [poll.pause() for _ in range(7)] == [0.025, 0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


# --- Options ----------------------------------------------------------------------------


def test_options_checked_at_start() -> None:
    with pytest.raises(ConfigurationError, match="tenant function"):
        Options()
    with pytest.raises(ConfigurationError, match="not both"):
        Options(tenant=tenant, global_keys=True)
    for name in ("Set-Cookie", "set-cookie2"):
        with pytest.raises(ConfigurationError, match="never stored"):
            Options(tenant=tenant, replay_headers=[name])
    with pytest.raises(ConfigurationError, match="mode"):
        Options(tenant=tenant, mode="atomic")
    with pytest.raises(ConfigurationError, match="ttl must be positive"):
        Options(tenant=tenant, ttl=0)
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        Options(tenant=tenant, max_body_bytes=-1)
    o = Options(tenant=tenant, methods=["post", "put"], ttl=2, lease=timedelta(seconds=5), replay_headers=["X-A"])
    assert (o.methods, o.ttl, o.lease, o.replay_headers) == (
        frozenset({"POST", "PUT"}), timedelta(seconds=2), timedelta(seconds=5), ("x-a",))
    d = Options(global_keys=True)
    assert (d.methods, d.required, d.max_body_bytes, d.max_stored_body, d.max_wait, d.mode) == (
        frozenset({"POST", "PATCH"}), True, 1 << 20, 512 << 10, 10, "phased")
