"""The rest of the contract: processor phases, failures, refunds, the other routes, Prefer,
and concurrency."""

import concurrent.futures
import threading
import time
import urllib.parse

import httpx
import pytest

from helpers import (assert_not_replayed, assert_payment, assert_problem, assert_replay_of,
                     assert_retry_after, auth, charges, in_thread, pay, payment_body, refund,
                     rfc3339, sf)

pytestmark = pytest.mark.full


# --- the table of POST /v1/payments ----------------------------------------------------------

def test_first_request_charges_once_with_the_tenant_scoped_key(api, processor, tenant, new_key):
    key = new_key()
    p = assert_payment(pay(api, tenant, key, payment_body("12.34")), amount="12.34")
    c = charges(processor, tenant, key)
    assert c["calls"] == 1
    assert [ch["id"] for ch in c["charges"]] == [p["charge_id"]]
    assert (c["charges"][0]["amount"], c["charges"][0]["currency"], c["charges"][0]["card"]) == ("12.34", "EUR", "tok_visa")
    # Retries replay and never call the processor again.
    for _ in range(3):
        pay(api, tenant, key, payment_body("12.34"))
    assert charges(processor, tenant, key)["calls"] == 1


def test_respond_async_is_202_with_the_key_location(api, tenant, new_key):
    key = new_key() + "/x y"  # a key that must be escaped in the Location
    body = payment_body(card="tok_slow")
    holder = in_thread(pay, api, tenant, key, body)
    time.sleep(0.5)
    r = pay(api, tenant, key, body, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc == "/v1/idempotency-keys/" + urllib.parse.quote(key, safe=""), loc
    assert_not_replayed(r)
    s = api.get(loc, headers=auth(tenant))
    assert s.status_code == 200 and s.json()["key"] == key
    first = holder()
    assert_payment(first)
    s = api.get(loc, headers=auth(tenant)).json()
    assert (s["state"], s["status"]) == ("completed", 201)


def test_prefer_wait_answers_the_holders_outcome_as_a_replay(api, processor, tenant, new_key):
    key = new_key()
    body = payment_body(card="tok_slow")
    holder = in_thread(pay, api, tenant, key, body)
    time.sleep(0.5)
    r = pay(api, tenant, key, body, headers={"Prefer": "wait=10"})
    first = holder()
    assert_payment(first)
    assert_replay_of(r, first)
    assert charges(processor, tenant, key)["calls"] == 1


def test_prefer_wait_ends_in_409_when_the_holder_is_not_done(api, tenant, new_key):
    key = new_key()
    body = payment_body(card="tok_slow")
    holder = in_thread(pay, api, tenant, key, body)
    time.sleep(0.3)
    r = pay(api, tenant, key, body, headers={"Prefer": "wait=1"})
    assert_problem(r, 409, "request_in_progress")
    assert_retry_after(r)
    assert_payment(holder())


def test_prefer_wait_and_respond_async_together_end_in_202(api, tenant, new_key):
    key = new_key()
    body = payment_body(card="tok_slow")
    holder = in_thread(pay, api, tenant, key, body)
    time.sleep(0.3)
    r = pay(api, tenant, key, body, headers={"Prefer": "respond-async, wait=1"})
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith("/v1/idempotency-keys/")
    assert_payment(holder())


def test_declined_card_is_402_and_replays(api, processor, tenant, new_key):
    key = new_key()
    body = payment_body(card="tok_declined")
    first = pay(api, tenant, key, body)
    assert_problem(first, 402, "card_declined")
    assert_not_replayed(first)
    again = pay(api, tenant, key, body)
    assert_problem(again, 402, "card_declined")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    c = charges(processor, tenant, key)
    assert (c["charges"], c["calls"]) == ([], 1)


def test_processor_unavailable_is_503_and_the_retry_executes_again(api, processor, tenant, new_key):
    key = new_key()
    body = payment_body(card="tok_flaky")
    first = pay(api, tenant, key, body)
    assert_problem(first, 503, "processor_unavailable")
    assert_retry_after(first)
    s = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    assert (s["state"], s["attempt"], s["status"]) == ("failed", 1, 503)
    second = pay(api, tenant, key, body)
    assert_payment(second)
    assert_not_replayed(second)
    s = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    assert (s["state"], s["attempt"], s["status"]) == ("completed", 2, 201)
    c = charges(processor, tenant, key)
    assert (len(c["charges"]), c["calls"]) == (1, 2)
    assert_replay_of(pay(api, tenant, key, body), second)


# --- refunds ---------------------------------------------------------------------------------

def new_payment(api, tenant, new_key, amount="10.00"):
    return assert_payment(pay(api, tenant, new_key(), payment_body(amount)), amount=amount)


def assert_refund(r, payment_id, amount):
    assert r.status_code == 201, r.text
    f = r.json()
    assert set(f) == {"id", "payment_id", "amount", "created_at"}, f
    assert (f["payment_id"], f["amount"]) == (payment_id, amount)
    rfc3339(f["created_at"])
    assert r.headers["location"] == f"/v1/refunds/{f['id']}"
    return f


def test_refund_is_201_and_replays(api, tenant, new_key):
    p = new_payment(api, tenant, new_key)
    key = new_key()
    first = refund(api, tenant, key, p["id"], "4.00")
    f = assert_refund(first, p["id"], "4.00")
    assert_not_replayed(first)
    assert_replay_of(refund(api, tenant, key, p["id"], "4.00"), first)
    g = api.get(f"/v1/refunds/{f['id']}", headers=auth(tenant))
    assert g.status_code == 200 and g.json() == f


def test_refund_over_what_remains_is_409_stored_and_replayed(api, tenant, new_key):
    p = new_payment(api, tenant, new_key)
    assert_refund(refund(api, tenant, new_key(), p["id"], "7.00"), p["id"], "7.00")
    key = new_key()
    first = refund(api, tenant, key, p["id"], "3.01")
    assert_problem(first, 409, "refund_exceeds_payment")
    assert_not_replayed(first)
    again = refund(api, tenant, key, p["id"], "3.01")
    assert_problem(again, 409, "refund_exceeds_payment")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    s = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    assert (s["state"], s["status"]) == ("failed", 409)
    # What remains is still there.
    assert_refund(refund(api, tenant, new_key(), p["id"], "3.00"), p["id"], "3.00")


def test_refund_of_unknown_or_other_tenants_payment_is_404_and_stores_nothing(api, tenant, other_tenant, new_key):
    p = new_payment(api, other_tenant, new_key)
    for pid in (p["id"], "pay_does_not_exist"):
        key = new_key()
        assert_problem(refund(api, tenant, key, pid), 404, "not_found")
        s = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant))
        assert s.json() == {"state": "absent"}
    # The other tenant's payment has no refund.
    mine = new_payment(api, tenant, new_key)
    assert_refund(refund(api, tenant, new_key(), mine["id"], "10.00"), mine["id"], "10.00")


def test_refund_with_a_key_used_on_payments_is_422(api, tenant, new_key):
    key = new_key()
    p = assert_payment(pay(api, tenant, key))
    assert_problem(refund(api, tenant, key, p["id"]), 422, "idempotency_key_reused")


def test_refund_key_missing_invalid_unauthorized(api, tenant, new_key):
    p = new_payment(api, tenant, new_key)
    url = f"/v1/payments/{p['id']}/refunds"
    assert_problem(api.post(url, json={"amount": "1.00"}, headers=auth(tenant)), 400, "idempotency_key_missing")
    h = {**auth(tenant), "Idempotency-Key": "a b"}
    assert_problem(api.post(url, json={"amount": "1.00"}, headers=h), 400, "idempotency_key_invalid")
    h = {"Idempotency-Key": sf(new_key())}
    assert_problem(api.post(url, json={"amount": "1.00"}, headers=h), 401, "unauthorized")
    for body in ({"amount": "0"}, {"amount": 1}, {}, {"amount": "1.00", "x": 1}):
        h = {**auth(tenant), "Idempotency-Key": sf(new_key())}
        assert_problem(api.post(url, json=body, headers=h), 400, "invalid_request")


def test_two_refunds_racing_for_the_last_euro(base_url, api, tenant, new_key):
    for _ in range(5):
        p = new_payment(api, tenant, new_key)
        assert_refund(refund(api, tenant, new_key(), p["id"], "9.00"), p["id"], "9.00")
        barrier = threading.Barrier(2)

        def one():
            with httpx.Client(base_url=base_url, timeout=30) as c:
                barrier.wait()
                return refund(c, tenant, new_key(), p["id"], "1.00")

        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            rs = list(ex.map(lambda _: one(), range(2)))
        got = sorted(r.status_code for r in rs)
        assert got == [201, 409], [r.text for r in rs]
        assert_problem(next(r for r in rs if r.status_code == 409), 409, "refund_exceeds_payment")


def test_many_refunds_racing_never_exceed_the_payment(base_url, api, tenant, new_key):
    p = new_payment(api, tenant, new_key)
    barrier = threading.Barrier(8)

    def one(_):
        with httpx.Client(base_url=base_url, timeout=30) as c:
            barrier.wait()
            return refund(c, tenant, new_key(), p["id"], "2.00")

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(one, range(8)))
    assert sorted(r.status_code for r in rs) == [201] * 5 + [409] * 3, [r.text for r in rs]


# --- other routes ------------------------------------------------------------------------------

def test_get_routes_need_the_tenant_and_hide_others(api, tenant, other_tenant, new_key):
    p = new_payment(api, tenant, new_key)
    f = assert_refund(refund(api, tenant, new_key(), p["id"], "1.00"), p["id"], "1.00")
    for url in (f"/v1/payments/{p['id']}", f"/v1/refunds/{f['id']}"):
        assert api.get(url, headers=auth(tenant)).status_code == 200
        assert_problem(api.get(url, headers=auth(other_tenant)), 404, "not_found")
        assert_problem(api.get(url), 401, "unauthorized")
    assert_problem(api.get("/v1/payments/pay_unknown", headers=auth(tenant)), 404, "not_found")
    assert_problem(api.get("/v1/refunds/re_unknown", headers=auth(tenant)), 404, "not_found")


def test_idempotency_key_states(api, tenant, other_tenant, new_key):
    url = lambda k: f"/v1/idempotency-keys/{urllib.parse.quote(k, safe='')}"
    absent = api.get(url(new_key()), headers=auth(tenant))
    assert absent.status_code == 200 and absent.json() == {"state": "absent"}

    key = new_key()
    p = assert_payment(pay(api, tenant, key))
    s = api.get(url(key), headers=auth(tenant)).json()
    assert set(s) == {"key", "state", "attempt", "status", "resource", "created_at", "expires_at", "lease_expires_at"}
    assert (s["key"], s["state"], s["attempt"], s["status"], s["lease_expires_at"]) == (key, "completed", 1, 201, None)
    assert s["resource"].endswith(p["id"]), s
    assert rfc3339(s["expires_at"]) > rfc3339(s["created_at"])
    # Another tenant's key is absent for this one.
    assert api.get(url(key), headers=auth(other_tenant)).json() == {"state": "absent"}

    slow = new_key()
    holder = in_thread(pay, api, tenant, slow, payment_body(card="tok_slow"))
    time.sleep(0.5)
    s = api.get(url(slow), headers=auth(tenant)).json()
    assert (s["state"], s["attempt"], s["status"], s["resource"]) == ("in_progress", 1, None, None)
    assert rfc3339(s["lease_expires_at"]) > rfc3339(s["created_at"])
    assert_payment(holder())

    declined = new_key()
    pay(api, tenant, declined, payment_body(card="tok_declined"))
    s = api.get(url(declined), headers=auth(tenant)).json()
    assert (s["state"], s["status"], s["resource"]) == ("failed", 402, None)

    assert_problem(api.get(url("a" * 256), headers=auth(tenant)), 400, "idempotency_key_invalid")
    assert_problem(api.get(url(key)), 401, "unauthorized")


def test_healthz_and_openapi(api):
    assert api.get("/healthz").status_code == 200
    r = api.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/payments", "/v1/payments/{id}", "/v1/payments/{id}/refunds", "/v1/refunds/{id}",
                 "/v1/idempotency-keys/{key}", "/healthz", "/openapi.json"):
        assert path in doc["paths"], path


def test_unknown_route_and_method_are_problems(api, tenant):
    r = api.get("/v1/nothing-here", headers=auth(tenant))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    r = api.delete("/v1/payments", headers=auth(tenant))
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/problem+json")


# --- concurrency -----------------------------------------------------------------------------

@pytest.mark.parametrize("card", ["tok_visa", "tok_slow"])
def test_32_clients_racing_one_key_get_one_201_and_one_charge(base_url, processor, tenant, new_key, card):
    for _ in range(3 if card == "tok_visa" else 1):
        key = new_key()
        body = payment_body(card=card)
        barrier = threading.Barrier(32)

        def one(i):
            # Some ask for 202, some wait a little, the rest take the plain 409.
            headers = [{}, {"Prefer": "respond-async"}, {"Prefer": "wait=1"}, {}][i % 4]
            with httpx.Client(base_url=base_url, timeout=60) as c:
                barrier.wait()
                return pay(c, tenant, key, body, headers=headers)

        with concurrent.futures.ThreadPoolExecutor(32) as ex:
            rs = list(ex.map(one, range(32)))
        created = [r for r in rs if r.status_code == 201 and "idempotent-replayed" not in r.headers]
        assert len(created) == 1, [(r.status_code, dict(r.headers)) for r in rs]
        first = created[0]
        p = assert_payment(first)
        for r in rs:
            if r is first:
                continue
            if r.status_code == 201:
                assert_replay_of(r, first)
            elif r.status_code == 202:
                assert r.headers["location"].startswith("/v1/idempotency-keys/")
            else:
                assert_problem(r, 409, "request_in_progress")
                assert_retry_after(r)
        c = charges(processor, tenant, key)
        assert [ch["id"] for ch in c["charges"]] == [p["charge_id"]]
        assert c["calls"] == 1


def test_many_keys_at_once(base_url, api, processor, tenant, new_key):
    keys = [new_key() for _ in range(64)]

    def one(k):
        with httpx.Client(base_url=base_url, timeout=60) as c:
            return k, pay(c, tenant, k, payment_body("1.00"))

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(one, keys))
    ids = set()
    for k, r in rs:
        p = assert_payment(r, amount="1.00")
        assert_not_replayed(r)
        ids.add(p["id"])
        assert charges(processor, tenant, k)["calls"] == 1
    assert len(ids) == 64
    # And all of them replay.
    for k, r in rs[:8]:
        assert_replay_of(pay(api, tenant, k, payment_body("1.00")), r)


def test_tenants_racing_the_same_key_get_their_own_records(base_url, processor, new_key):
    key = new_key()
    tenants = [f"race{i}-{key[-8:]}" for i in range(8)]
    barrier = threading.Barrier(8)

    def one(t):
        with httpx.Client(base_url=base_url, timeout=60) as c:
            barrier.wait()
            return pay(c, t, key)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(one, tenants))
    ps = [assert_payment(r) for r in rs]
    assert len({p["id"] for p in ps}) == 8
    for t in tenants:
        assert charges(processor, t, key)["calls"] == 1
