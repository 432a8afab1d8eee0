"""idempotency.django.IdempotencyMiddleware through Django's test client, on the test database.

Two aliases name the test database: `default` with ATOMIC_REQUESTS (transaction mode by
default) and `plain` without (phased by default). The views count their runs and write one
row per run into layer_rows through the alias given in `?db=`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import django
import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import Client
from django.test.utils import override_settings
from django.urls import path
from psycopg.conninfo import conninfo_to_dict

from idempotency import State
from idempotency import sync as idem
from idempotency.django import IdempotencyMiddleware, idempotent
from records import first_used

CALLS: list[Any] = []
_lock = threading.Lock()


def tenant(request: HttpRequest) -> str | None:
    return request.headers.get("x-tenant")


def _record(request: HttpRequest) -> None:
    with _lock:
        CALLS.append(getattr(request, "idempotency", None))


def rows_view(request: HttpRequest) -> HttpResponse:
    _record(request)
    alias = request.GET.get("db", "default")
    info = request.idempotency  # type: ignore[attr-defined]
    with connections[alias].cursor() as cur:
        cur.execute("INSERT INTO layer_rows (scope, key) VALUES (%s, %s)", (info.scope, info.key))
    if request.GET.get("sleep"):
        time.sleep(float(request.GET["sleep"]))
    if request.GET.get("raise"):
        raise RuntimeError("the view raised")
    return HttpResponse('{"ok": true}', status=int(request.GET.get("status", "201")), content_type="application/json")


def echo(request: HttpRequest) -> HttpResponse:
    _record(request)
    r = HttpResponse(request.body, status=201, content_type=request.META.get("CONTENT_TYPE") or "text/plain")
    r["Location"] = "/x/1"
    r["X-Replayed-Too"] = "yes"
    r["X-Extra"] = "no"
    r.set_cookie("c", "1")
    return r


def stream(request: HttpRequest) -> StreamingHttpResponse:
    _record(request)
    return StreamingHttpResponse((f"c{i}\n".encode() for i in range(3)), content_type="text/plain")


urlpatterns = [
    path("rows", rows_view),
    path("phased-rows", idempotent(mode="phased")(rows_view)),
    path("exempt", idempotent(exempt=True)(echo)),
    path("echo", echo),
    path("stream", stream),
]


@pytest.fixture(scope="session")
def django_db(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    db = {"ENGINE": "django.db.backends.postgresql", "NAME": params["dbname"], "USER": params["user"],
          "HOST": params["host"], "PORT": params["port"]}
    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="test", ROOT_URLCONF=__name__, USE_TZ=True,
        INSTALLED_APPS=[], MIDDLEWARE=["idempotency.django.IdempotencyMiddleware"],
        DATABASES={"default": {**db, "ATOMIC_REQUESTS": True}, "plain": db,
                   "rr": {**db, "OPTIONS": {"isolation_level": psycopg.IsolationLevel.REPEATABLE_READ}},
                   # A superuser's session with idempotency.max_response_size lowered to 1 kB.
                   "small": {**db, "ATOMIC_REQUESTS": True,
                             "OPTIONS": {"options": "-c idempotency.max_response_size=1kB"}}},
        IDEMPOTENCY={"tenant": f"{__name__}.tenant"},
    )
    django.setup()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS layer_rows (scope text, key text)")
    return dsn


@pytest.fixture
def client(django_db: str) -> Iterator[Client]:
    CALLS.clear()
    yield Client(raise_request_exception=False)
    connections.close_all()


def post(client: Client, url: str, scope: str, key: str | None, body: bytes = b"", **headers: str) -> Any:
    h = {"x-tenant": scope, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if key is not None:
        h["idempotency-key"] = key
    return client.post(url, data=body, content_type=headers.get("content_type", "application/octet-stream"),
                       headers=h)


def count(dsn: str, scope: str) -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT count(*) FROM layer_rows WHERE scope = %s", (scope,)).fetchone()
        return int(row[0]) if row else -1


def state(dsn: str, scope: str, key: str) -> tuple[State, int | None, int | None]:
    with psycopg.connect(dsn) as c:
        check = idem.check(c, scope, key)
        return check.state, check.attempt, check.http_status


def test_transaction_mode_under_atomic_requests(client: Client, django_db: str, scope: str) -> None:
    r = post(client, "/rows", scope, "t1")
    assert (r.status_code, r.content, count(django_db, scope)) == (201, b'{"ok": true}', 1)
    info = CALLS[-1]
    assert (info.mode, info.attempt, info.key, info.conn is connections["default"]) == ("transaction", 1, "t1", True)
    r = post(client, "/rows", scope, "t1")
    assert (r.status_code, r["Idempotent-Replayed"], r["Content-Type"], len(CALLS), count(django_db, scope)) == (
        201, "true", "application/json", 1, 1)
    # Another command: 422 with the first use, read after the layer's atomic block rolled back.
    r = post(client, "/rows?other=1", scope, "t1")
    assert (r.status_code, json.loads(r.content)["code"], json.loads(r.content)["first_used_at"], len(CALLS)) == (
        422, "idempotency_key_reused", first_used(django_db, scope, "t1")[0].isoformat(), 1)
    # A 5xx, a 429 or an exception rolls the view's row and the claim back: the retry executes.
    for url, key, status in (("/rows?status=503", "t503", 503), ("/rows?status=429", "t429", 429),
                             ("/rows?raise=1", "traise", 500)):
        r = post(client, url, scope, key)
        assert (r.status_code, count(django_db, scope), state(django_db, scope, key)) == (
            status, 1, (State.ABSENT, None, None))
    # A 4xx is the view's answer: its row and the stored response commit together.
    r = post(client, "/rows?status=409", scope, "t409")
    r = post(client, "/rows?status=409", scope, "t409")
    assert (r.status_code, r["Idempotent-Replayed"], count(django_db, scope)) == (409, "true", 2)


def test_phased_view_under_atomic_requests(client: Client, django_db: str, scope: str) -> None:
    # @idempotent(mode="phased"): the claim commits first; a 503 is the view's own transaction
    # (its row commits) and the key is failed retryably, so the retry runs again (attempt 2).
    r = post(client, "/phased-rows?status=503", scope, "p")
    assert (r.status_code, count(django_db, scope), state(django_db, scope, "p")) == (503, 1, (State.FAILED, 1, 503))
    r = post(client, "/phased-rows?status=503", scope, "p")
    assert (r.status_code, CALLS[-1].mode, CALLS[-1].attempt, count(django_db, scope)) == (503, "phased", 2, 2)


@override_settings(IDEMPOTENCY={"tenant": tenant, "ttl": timedelta(seconds=1)})
def test_key_expired_while_the_view_ran(
        client: Client, django_db: str, scope: str, caplog: pytest.LogCaptureFixture) -> None:
    # Storing meets IK002 (the 1 s ttl ran out); the same request executes again. Transaction
    # mode (ATOMIC_REQUESTS): the block is rolled back (the view's row too) and the answer is
    # 503 with Retry-After: 1. Phased: the view's own transaction committed its row, and the
    # view's response is sent unstored.
    with caplog.at_level(logging.WARNING, logger="idempotency.layer"):
        for n in (1, 2):
            r = post(client, "/rows?sleep=1.5", scope, "x-tx")
            assert (r.status_code, r["Content-Type"], r["Retry-After"], json.loads(r.content)["code"]) == (
                503, "application/problem+json", "1", "service_unavailable")
            assert (count(django_db, scope), state(django_db, scope, "x-tx")) == (n - 1, (State.ABSENT, None, None))
            r = post(client, "/phased-rows?sleep=1.5", scope, "x-ph")
            assert (r.status_code, r.content, r.get("Idempotent-Replayed")) == (201, b'{"ok": true}', None)
            assert (count(django_db, scope), len(CALLS)) == (n, 2 * n)
    warned = [r.getMessage() for r in caplog.records if r.name == "idempotency.layer"]
    assert len(warned) == 4 and all("no longer in progress" in m for m in warned), warned
    assert sum("rolled back" in m for m in warned) == 2, warned


@pytest.mark.parametrize("mode", ["transaction", "phased"])
def test_response_over_the_extension_limit_is_stored_omitted(
        client: Client, django_db: str, scope: str, mode: str) -> None:
    body = b"y" * 2000
    with override_settings(IDEMPOTENCY={"tenant": tenant, "database": "small", "mode": mode}):
        r = post(client, "/echo", scope, "big", body, content_type="text/plain")
        assert (r.status_code, r.content, r.get("Idempotent-Replayed"), CALLS[-1].mode) == (201, body, None, mode)
        r = post(client, "/echo", scope, "big", body, content_type="text/plain")
        assert (r.status_code, r.content, r["Idempotent-Replay-Body"], r["Content-Type"], len(CALLS)) == (
            201, b"", "omitted", "text/plain", 1)
        r = post(client, "/echo", scope, "small", b"s", content_type="text/plain")
        r = post(client, "/echo", scope, "small", b"s", content_type="text/plain")
        assert (r.status_code, r.content, r["Idempotent-Replayed"], len(CALLS)) == (201, b"s", "true", 2)


@override_settings(IDEMPOTENCY={"tenant": tenant, "database": "plain", "replay_headers": ["X-Replayed-Too"]})
def test_phased_by_default_replays_exactly(client: Client, django_db: str, scope: str) -> None:
    body = b'{"b": [1, 2], "a": 1}'
    r = post(client, "/echo?q=1", scope, '"e-1"', body, content_type="application/json")
    assert (r.status_code, r.content, r["Location"], r.cookies["c"].value) == (201, body, "/x/1", "1")
    assert (CALLS[-1].mode, CALLS[-1].conn) == ("phased", None)
    r = post(client, "/echo?q=1", scope, "e-1", b'{"a":1,"b":[1,2]}', content_type="application/json")
    assert (r.status_code, r.content, len(CALLS)) == (201, body, 1)
    assert list(r.items()) == [("content-type", "application/json"), ("location", "/x/1"),  # the view's order
                               ("x-replayed-too", "yes"), ("idempotent-replayed", "true")]
    assert not r.cookies
    r = post(client, "/echo?q=2", scope, "e-1", body, content_type="application/json")
    assert (r.status_code, r["Content-Type"], json.loads(r.content)["code"]) == (422, "application/problem+json",
                                                                     "idempotency_key_reused")
    assert json.loads(r.content)["first_used_at"] == first_used(django_db, scope, "e-1")[0].isoformat()
    # Not covered: a GET, PUT, an exempt view.
    r = client.put("/echo", data=b"p", headers={"idempotency-key": "e-1"})
    r2 = post(client, "/exempt", scope, None)
    assert (r.status_code, r2.status_code, len(CALLS)) == (201, 201, 3)


@override_settings(IDEMPOTENCY={"tenant": tenant, "database": "plain"})
def test_phased_stream_released_when_read(client: Client, django_db: str, scope: str) -> None:
    for attempt in (1, 2):
        r = post(client, "/stream", scope, "s")
        assert state(django_db, scope, "s")[:2] == (State.IN_PROGRESS, attempt)  # until the stream is read
        assert b"".join(r.streaming_content) == b"c0\nc1\nc2\n"
        r.close()
        assert state(django_db, scope, "s") == (State.FAILED, attempt, 200)


def test_transaction_stream_read_before_commit(client: Client, django_db: str, scope: str) -> None:
    r = post(client, "/stream", scope, "ts")
    assert state(django_db, scope, "ts") == (State.FAILED, 1, 200)  # committed before the response
    assert b"".join(r.streaming_content) == b"c0\nc1\nc2\n"


@override_settings(IDEMPOTENCY={"tenant": tenant, "max_body_bytes": 4, "mode": "phased"})
def test_problems_before_any_claim(client: Client, django_db: str, scope: str) -> None:
    r = post(client, "/echo", scope, None)
    assert (r.status_code, r["Content-Type"], json.loads(r.content)["code"]) == (400, "application/problem+json",
                                                                     "idempotency_key_missing")
    r = post(client, "/echo", scope, '"open')
    assert (r.status_code, json.loads(r.content)["code"]) == (400, "idempotency_key_invalid")
    r = client.post("/echo", data=b"x", content_type="text/plain", headers={"idempotency-key": "k"})
    assert (r.status_code, json.loads(r.content)["code"]) == (401, "unauthorized")
    r = post(client, "/echo", scope, "k", b"12345")
    assert (r.status_code, json.loads(r.content)["code"], len(CALLS)) == (413, "payload_too_large", 0)


@override_settings(IDEMPOTENCY={"tenant": tenant, "status_url": lambda key: f"/keys/{key}"})
def test_held_key(client: Client, django_db: str, scope: str) -> None:
    cmd = {"v": 1, "method": "POST", "path": "/echo", "query": {}, "headers": {},
           "body": {"media_type": "text/plain", "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}}
    with psycopg.connect(django_db) as holder:
        claim = idem.claim(holder, scope, "held", cmd, lease=timedelta(seconds=20))
        r = post(client, "/echo", scope, "held", b"x", content_type="text/plain")
        assert (r.status_code, json.loads(r.content)["code"], 19 <= int(r["Retry-After"]) <= 20) == (409, "request_in_progress", True)
        r = post(client, "/echo", scope, "held", b"x", content_type="text/plain", prefer="respond-async")
        assert (r.status_code, r["Location"]) == (202, "/keys/held")
        timer = threading.Timer(0.3, lambda: claim.complete(
            response={"v": 1, "headers": [["content-type", "text/plain"]], "body": "ZG9uZQ=="}, http_status=200))
        timer.start()
        r = post(client, "/echo", scope, "held", b"x", content_type="text/plain", prefer="wait=5")
        timer.join()
        assert (r.status_code, r.content, r["Idempotent-Replayed"], len(CALLS)) == (200, b"done", "true", 0)


def test_settings_refused(django_db: str) -> None:
    for conf, message in (({}, "tenant function"),
                          ({"tenant": tenant, "replay_headers": ["Set-Cookie"]}, "never stored"),
                          ({"tenant": tenant, "database": "nope"}, "no database alias"),
                          ({"tenant": tenant, "mode": "atomic"}, r"IDEMPOTENCY\['mode'\]"),
                          ({"tenant": "no.such.function"}, r"IDEMPOTENCY\['tenant'\]")):
        with override_settings(IDEMPOTENCY=conf), pytest.raises(ImproperlyConfigured, match=message):
            IdempotencyMiddleware(lambda request: HttpResponse())


def wait_for_waiter(dsn: str) -> None:
    """Until a backend of the test database is inside idem_begin (waiting for a holder)."""
    with psycopg.connect(dsn, autocommit=True) as watcher:
        for _ in range(1000):
            if watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                    " AND pid <> pg_backend_pid() AND query LIKE %s", ("%idem_begin%",)).fetchone():
                return
            time.sleep(0.01)
    raise AssertionError("no request waited in idem_begin")


@override_settings(IDEMPOTENCY={"tenant": tenant, "database": "rr", "mode": "transaction"})
def test_claim_meeting_a_commit_under_repeatable_read_is_run_again(client: Client, django_db: str, scope: str) -> None:
    # The atomic block's claim waited for an uncommitted holder and meets its commit with 40001:
    # the layer claims again in a new block (the view has not run) and replays the holder's answer.
    cmd = {"v": 1, "method": "POST", "path": "/echo", "query": {}, "headers": {}, "body": None}
    with psycopg.connect(django_db) as holder:
        tx = idem.transaction(holder, scope, "rr", cmd)
        tx.__enter__().complete(response={"v": 1, "headers": [], "body": "aGVsZA=="}, http_status=201)

        def commit_when_waited() -> None:
            wait_for_waiter(django_db)
            tx.__exit__(None, None, None)

        t = threading.Thread(target=commit_when_waited)
        t.start()
        r = post(client, "/echo", scope, "rr", prefer="wait=5")
        t.join()
    assert (r.status_code, r.content, r["Idempotent-Replayed"], len(CALLS)) == (201, b"held", "true", 0)
