"""The core of the contract, which every implementation must pass."""

import time

import pytest

from helpers import (assert_not_replayed, assert_payment, assert_problem, assert_replay_of,
                     assert_retry_after, auth, in_thread, pay, payment_body, sf)

pytestmark = pytest.mark.core


def test_first_request_creates_the_payment(api, tenant, new_key):
    r = pay(api, tenant, new_key())
    p = assert_payment(r)
    assert_not_replayed(r)
    g = api.get(r.headers["location"], headers=auth(tenant))
    assert g.status_code == 200 and g.json() == p


def test_retry_replays_the_first_answer(api, tenant, new_key):
    key = new_key()
    first = pay(api, tenant, key)
    assert_payment(first)
    for _ in range(2):
        assert_replay_of(pay(api, tenant, key), first)


def test_sf_string_and_bare_token_are_the_same_key(api, tenant, new_key):
    key = new_key()
    first = pay(api, tenant, key, key_header=sf(key))
    assert_payment(first)
    assert_replay_of(pay(api, tenant, key, key_header=key), first)


def test_replay_ignores_member_order_and_whitespace(api, tenant, new_key):
    key = new_key()
    first = pay(api, tenant, key)
    assert_payment(first)
    h = {**auth(tenant), "Idempotency-Key": sf(key), "Content-Type": "application/json"}
    body = b'{ "card" : "tok_visa",\n "currency":"EUR", "amount": "10.00" }'
    assert_replay_of(api.post("/v1/payments", content=body, headers=h), first)


def test_same_key_with_another_body_is_422(api, tenant, new_key):
    key = new_key()
    assert_payment(pay(api, tenant, key, payment_body("10.00")))
    r = pay(api, tenant, key, payment_body("100.00"))
    p = assert_problem(r, 422, "idempotency_key_reused")
    # The problem tells when the key was first used, never the first body.
    assert "10.00" not in r.text and "tok_visa" not in r.text, p
    assert_not_replayed(r)
    # The first request's outcome is untouched.
    assert pay(api, tenant, key).headers.get("idempotent-replayed") == "true"


@pytest.mark.parametrize("change", [
    {"amount": "10.01"}, {"currency": "USD"}, {"card": "tok_other"}, {"description": "x"},
])
def test_any_changed_member_is_422(api, tenant, new_key, change):
    key = new_key()
    assert_payment(pay(api, tenant, key))
    assert_problem(pay(api, tenant, key, {**payment_body(), **change}), 422, "idempotency_key_reused")


def test_same_key_on_another_endpoint_is_422(api, tenant, new_key):
    key = new_key()
    first = assert_payment(pay(api, tenant, key))
    h = {**auth(tenant), "Idempotency-Key": sf(key)}
    r = api.post(f"/v1/payments/{first['id']}/refunds", json={"amount": "1.00"}, headers=h)
    assert_problem(r, 422, "idempotency_key_reused")


def test_held_key_is_409_with_retry_after(api, tenant, new_key):
    key = new_key()
    body = payment_body(card="tok_slow")  # the processor answers after 2 s
    holder = in_thread(pay, api, tenant, key, body)
    time.sleep(0.5)
    r = pay(api, tenant, key, body)
    assert_problem(r, 409, "request_in_progress")
    assert_retry_after(r)
    assert_not_replayed(r)
    first = holder()
    assert_payment(first)
    assert_replay_of(pay(api, tenant, key, body), first)


def test_missing_key_is_400(api, tenant):
    r = api.post("/v1/payments", json=payment_body(), headers=auth(tenant))
    assert_problem(r, 400, "idempotency_key_missing")


@pytest.mark.parametrize("raw", [
    '"unterminated', "a b", '"k";a=1', "k;a=1", '""', "*k", "a,b", "?1", '"\\x"',
    "a" * 256, sf("a" * 256),
], ids=["unterminated", "space", "sf-params", "token-params", "empty-sf", "star", "list",
        "boolean", "bad-escape", "256-bare", "256-sf"])
def test_malformed_key_is_400(api, tenant, raw):
    h = {**auth(tenant), "Idempotency-Key": raw}
    assert_problem(api.post("/v1/payments", json=payment_body(), headers=h), 400, "idempotency_key_invalid")


def test_key_of_255_bytes_is_accepted(api, tenant):
    assert_payment(pay(api, tenant, "a" * 255))


@pytest.mark.parametrize("body", [
    {"amount": "0.00", "currency": "EUR", "card": "tok_visa"},
    {"amount": "1.234", "currency": "EUR", "card": "tok_visa"},
    {"amount": 10, "currency": "EUR", "card": "tok_visa"},
    {"amount": "-1.00", "currency": "EUR", "card": "tok_visa"},
    {"amount": "10.00", "currency": "eur", "card": "tok_visa"},
    {"amount": "10.00", "currency": "EUR", "card": ""},
    {"amount": "10.00", "currency": "EUR"},
    [],
], ids=["zero", "3-decimals", "number", "negative", "lower-currency", "empty-card", "no-card", "array"])
def test_invalid_body_is_400_and_claims_nothing(api, tenant, new_key, body):
    key = new_key()
    assert_problem(pay(api, tenant, key, body), 400, "invalid_request")
    # Validation came before the claim: the same key with a valid body is a first request.
    r = pay(api, tenant, key)
    assert_payment(r)
    assert_not_replayed(r)


def test_body_that_is_not_json_is_400(api, tenant, new_key):
    h = {**auth(tenant), "Idempotency-Key": sf(new_key()), "Content-Type": "application/json"}
    assert_problem(api.post("/v1/payments", content=b"{not json", headers=h), 400, "invalid_request")


@pytest.mark.parametrize("value", [None, "Basic dDpw", "Bearer", "Bearer a.b", "Bearer " + "a" * 65, "acme"])
def test_unauthorized_is_401(api, new_key, value):
    h = {"Idempotency-Key": sf(new_key())}
    if value is not None:
        h["Authorization"] = value
    assert_problem(api.post("/v1/payments", json=payment_body(), headers=h), 401, "unauthorized")


def test_same_key_under_two_tenants_is_two_payments(api, tenant, other_tenant, new_key):
    key = new_key()
    a = pay(api, tenant, key)
    b = pay(api, other_tenant, key, payment_body("20.00"))
    pa, pb = assert_payment(a), assert_payment(b, amount="20.00")
    assert_not_replayed(b)
    assert pa["id"] != pb["id"]
    # Each tenant replays its own.
    assert_replay_of(pay(api, tenant, key), a)
    assert_replay_of(pay(api, other_tenant, key, payment_body("20.00")), b)


def test_tenant_never_sees_another_tenants_payment(api, tenant, other_tenant, new_key):
    p = assert_payment(pay(api, tenant, new_key()))
    r = api.get(f"/v1/payments/{p['id']}", headers=auth(other_tenant))
    assert_problem(r, 404, "not_found")
