"""The Django integration: the drop-in layer (docs/http.md, "The drop-in layer") as a
middleware on Django's own database connection.

    MIDDLEWARE = [..., "idempotency.django.IdempotencyMiddleware", ...]
    IDEMPOTENCY = {"tenant": "myapp.tenants.from_request"}     # or a callable

`IDEMPOTENCY` holds `layer.Options`' settings by their Python names (`tenant` and `mode` may be
dotted paths; `global_keys`, `methods`, `required`, `ttl`, `lease` (timedelta or seconds),
`command_headers`, `replay_headers`, `max_body_bytes`, `max_stored_body`, `max_wait`,
`status_url`) and `database`, the alias (default `"default"`). Django >= 4.2 with the psycopg 3
backend: the client's sync calls run on `connections[alias].connection`.

The mode: `transaction` by default when the alias has `ATOMIC_REQUESTS` (the middleware opens
`transaction.atomic()` around the rest of the chain, so the view's own atomic block becomes a
savepoint in it; the claim, the view's ORM writes and the stored response commit together;
a 5xx, a 429 or an exception marks it for rollback; the response is stored in that block,
with no savepoint of the layer's, and `IK002` there, the key's ttl run out during the request,
marks it for rollback too and answers 503 with `Retry-After: 1`), `phased` otherwise; `mode` in the
settings overrides that, and `@idempotent(mode=...)` chooses per view (`@idempotent(exempt=True)`
leaves a view alone). The view finds `request.idempotency` (`layer.Info`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from . import layer
from .http import Problem

V = TypeVar("V", bound=Callable[..., Any])

ROUTE_ATTRIBUTE = "idempotency_route"


@dataclass(frozen=True)
class Route:
    """What `@idempotent` says of a view."""

    mode: str | None = None
    exempt: bool = False


def idempotent(view: V | None = None, *, mode: str | None = None, exempt: bool = False) -> Any:
    """Per view: `@idempotent(mode="transaction")` or `"phased"`, `@idempotent(exempt=True)`
    (the layer leaves the view alone). On a class-based view, decorate `View.as_view()`."""
    if mode is not None:
        layer.check_mode(mode)

    def decorate(v: V) -> V:
        @functools.wraps(v)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return v(*args, **kwargs)

        setattr(wrapper, ROUTE_ATTRIBUTE, Route(mode, exempt))
        return wrapper  # type: ignore[return-value]

    return decorate(view) if view is not None else decorate


def _import(conf: dict[str, Any], name: str) -> None:
    try:
        conf[name] = import_string(conf[name])
    except ImportError as e:
        raise ImproperlyConfigured(f"IDEMPOTENCY[{name!r}]: {e}") from e


def _options(conf: dict[str, Any], alias: str) -> layer.Options:
    conf = dict(conf)
    for name in ("tenant", "status_url"):
        if isinstance(conf.get(name), str):
            _import(conf, name)
    if isinstance(conf.get("mode"), str) and conf["mode"] not in layer.MODES:
        _import(conf, "mode")
    if "mode" not in conf:
        atomic = settings.DATABASES.get(alias, {}).get("ATOMIC_REQUESTS", False)
        conf["mode"] = layer.TRANSACTION if atomic else layer.PHASED
    try:
        return layer.Options(**conf)
    except (layer.ConfigurationError, TypeError) as e:
        raise ImproperlyConfigured(f"IDEMPOTENCY: {e}") from e


class IdempotencyMiddleware:
    """The drop-in layer for Django (sync; see the module's doc)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        conf = dict(getattr(settings, "IDEMPOTENCY", {}))
        self.alias: str = conf.pop("database", DEFAULT_DB_ALIAS)
        if self.alias not in settings.DATABASES:
            raise ImproperlyConfigured(f"IDEMPOTENCY: no database alias {self.alias!r}")
        self.options = _options(conf, self.alias)
        self.db = layer.SyncDatabase(
            connection=self._connection,
            atomic=lambda: transaction.atomic(using=self.alias),
            set_rollback=lambda: transaction.set_rollback(True, using=self.alias),
        )

    def _connection(self) -> psycopg.Connection[Any]:
        wrapper = connections[self.alias]
        wrapper.ensure_connection()
        conn = wrapper.connection
        if not isinstance(conn, psycopg.Connection):
            raise ImproperlyConfigured("the idempotency layer needs Django's psycopg 3 backend")
        return conn

    def _route(self, request: HttpRequest) -> Route:
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return Route()
        route = getattr(match.func, ROUTE_ATTRIBUTE, None)
        return route if isinstance(route, Route) else Route()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        method = request.method or "GET"
        if not layer.covered(self.options, method):
            return self.get_response(request)
        route = self._route(request)
        if route.exempt:
            return self.get_response(request)
        incoming = layer.Incoming(method, request.path, request.META.get("QUERY_STRING", ""),
                                  lambda name: _values(request, name))
        try:
            key = layer.key_of(self.options, incoming)
            if key is None:
                return self.get_response(request)
            tenant = self.options.tenant(request) if self.options.tenant is not None else None
            if not self.options.global_keys:
                layer.scope_of(tenant)  # 401 before the body is read
            try:
                layer.check_content_length(self.options, incoming)
            except Problem:
                _drain(request, layer.DRAIN_LIMIT)
                raise
            try:
                body = request.body
            except RequestDataTooBig:
                raise layer.too_large(self.options) from None
            mode = layer.mode_of(self.options, request, route.mode)
            p = layer.prepare(self.options, incoming, key, tenant, request.META.get("CONTENT_TYPE"), body, mode)
        except Problem as e:
            return _response(layer.problem_reply(e))

        def run(info: layer.Info, release: Callable[[int], None]) -> layer.Captured:
            if info.mode == layer.TRANSACTION:
                info.conn = connections[self.alias]  # this thread's connection, in the claim's atomic block
            request.idempotency = info
            response = self.get_response(request)
            headers = list(response.items())
            if not response.streaming:
                return layer.Captured(response.status_code, headers, bytes(response.content),
                                      original=response)
            if info.mode == layer.TRANSACTION:  # nothing is sent before the COMMIT: the stream is read now
                chunks = list(response.streaming_content)
                response.streaming_content = chunks
                return layer.Captured(response.status_code, headers, b"".join(chunks), streamed=True,
                                      original=response)
            status = response.status_code
            response.streaming_content = _then(response.streaming_content, lambda: release(status))
            return layer.Captured(status, headers, b"", streamed=True, original=response)

        reply = layer.run_sync(self.options, self.db, p, run)
        assert reply is not None
        return _response(reply)


def _values(request: HttpRequest, name: str) -> list[str]:
    """A header's value as the WSGI server hands it over: repeated fields are one value,
    joined with commas."""
    value = request.headers.get(name)
    return [] if value is None else [value]


def _drain(request: HttpRequest, budget: int) -> None:
    """Read the rest of the request body and drop it (at most `budget` bytes)."""
    while budget > 0:
        chunk = request.read(min(budget, 1 << 16))
        if not chunk:
            return
        budget -= len(chunk)


def _then(chunks: Iterable[bytes], after: Callable[[], None]) -> Iterator[bytes]:
    """The stream as it was, then `after()` once it ended or was abandoned."""
    try:
        yield from chunks
    finally:
        after()


def _response(reply: layer.Reply) -> HttpResponseBase:
    if reply.original is not None:
        original: HttpResponseBase = reply.original
        return original
    r = HttpResponse(reply.body, status=reply.status)
    del r["Content-Type"]
    for name, value in reply.headers:
        r[name] = f"{r[name]}, {value}" if r.has_header(name) else value  # one value per name in Django
    return r
