"""Requests and assertions shared by the conformance tests."""

import datetime
import re
import threading

PROBLEM_CODES = {
    "unauthorized", "invalid_request", "idempotency_key_missing", "idempotency_key_invalid",
    "idempotency_key_reused", "request_in_progress", "card_declined", "processor_unavailable",
    "refund_exceeds_payment", "not_found",
}


def auth(tenant):
    return {"Authorization": f"Bearer {tenant}"}


def sf(key):
    """The key as an RFC 8941 sf-string, the draft's form."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def payment_body(amount="10.00", card="tok_visa", currency="EUR", **extra):
    return {"amount": amount, "currency": currency, "card": card, **extra}


def pay(api, tenant, key, body=None, headers=None, key_header=None):
    h = auth(tenant)
    h["Idempotency-Key"] = key_header if key_header is not None else sf(key)
    h.update(headers or {})
    return api.post("/v1/payments", json=body if body is not None else payment_body(), headers=h)


def refund(api, tenant, key, payment_id, amount="5.00", headers=None):
    h = auth(tenant)
    h["Idempotency-Key"] = sf(key)
    h.update(headers or {})
    return api.post(f"/v1/payments/{payment_id}/refunds", json={"amount": amount}, headers=h)


def rfc3339(s):
    assert isinstance(s, str) and re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", s), s
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def assert_problem(r, status, code, headers=None):
    """An RFC 9457 problem with the exact status and `code`."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].split(";")[0].strip() == "application/problem+json", r.headers
    p = r.json()
    for member in ("type", "title", "status", "detail", "code"):
        assert member in p, (member, p)
    assert p["status"] == status, p
    assert p["code"] == code, p
    assert code in PROBLEM_CODES
    for name, value in (headers or {}).items():
        assert r.headers.get(name) == value, (name, r.headers.get(name), value)
    return p


def assert_retry_after(r, at_least=1, at_most=None):
    v = r.headers.get("retry-after")
    assert v is not None and v.isdigit(), r.headers
    assert int(v) >= at_least, v
    if at_most is not None:
        assert int(v) <= at_most, v
    return int(v)


def assert_not_replayed(r):
    assert "idempotent-replayed" not in r.headers, r.headers


def assert_payment(r, amount="10.00", currency="EUR"):
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    p = r.json()
    assert set(p) == {"id", "amount", "currency", "status", "charge_id", "created_at"}, p
    assert (p["amount"], p["currency"], p["status"]) == (amount, currency, "succeeded"), p
    assert isinstance(p["id"], str) and p["id"], p
    assert isinstance(p["charge_id"], str) and p["charge_id"], p
    rfc3339(p["created_at"])
    assert r.headers["location"] == f"/v1/payments/{p['id']}", r.headers
    return p


def assert_replay_of(r, first):
    """`r` replays `first`: same status, same body, same Location, Idempotent-Replayed."""
    assert r.status_code == first.status_code, (r.status_code, r.text)
    assert r.headers.get("idempotent-replayed") == "true", r.headers
    assert r.json() == first.json()
    assert r.headers.get("location") == first.headers.get("location")


def charges(processor, tenant, key):
    r = processor.get("/charges", params={"idempotency_key": f"{tenant}/{key}"})
    assert r.status_code == 200, r.text
    return r.json()


def in_thread(fn, *args, **kwargs):
    """Runs fn in a thread; returns a function that joins it and gives its result."""
    out = {}

    def run():
        try:
            out["r"] = fn(*args, **kwargs)
        except BaseException as e:  # surfaced by the join
            out["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout=60):
        t.join(timeout)
        assert not t.is_alive(), "request did not finish"
        if "e" in out:
            raise out["e"]
        return out["r"]

    return join
