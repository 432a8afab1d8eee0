"""Crashes and lost leases: a service started with `--fault-injection` and a short `--lease`
(below 2 s), and a command that starts it again (`--restart-command`)."""

import subprocess
import time

import httpx
import pytest

from helpers import (assert_not_replayed, assert_payment, assert_problem, assert_replay_of, auth,
                     charges, in_thread, pay, payment_body)

pytestmark = pytest.mark.crash

# How many processor calls the key has received in all once the retry succeeded: a crash after
# the charge but before the checkpoint calls again (the processor answers with the same charge);
# once the checkpoint `charged` is committed, the takeover does not call at all.
CALLS = {
    "crash-after-claim": 1,
    "crash-after-charge": 2,
    "crash-after-checkpoint": 1,
    "crash-before-commit": 1,
}


def restart(cmd):
    subprocess.run(cmd, shell=True, check=True, timeout=120)


@pytest.mark.parametrize("point", list(CALLS))
def test_crash_point_then_retry_charges_once(api, processor, tenant, new_key, crash_env, point):
    cmd, lease = crash_env
    key = new_key()
    body = payment_body("42.00")
    with pytest.raises(httpx.TransportError):
        pay(api, tenant, key, body, headers={"X-Fault": point})
    restart(cmd)
    state = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    assert (state["state"], state["attempt"]) == ("in_progress", 1), state
    if point in ("crash-after-checkpoint", "crash-before-commit"):
        assert state.get("resource") is None
    # Wait out the lease, then retry the same request: the takeover finishes it.
    time.sleep(lease + 0.5)
    first = pay(api, tenant, key, body)
    p = assert_payment(first, amount="42.00")
    assert_not_replayed(first)
    state = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    assert (state["state"], state["attempt"], state["status"]) == ("completed", 2, 201), state
    assert state["resource"].endswith(p["id"])
    c = charges(processor, tenant, key)
    assert [ch["id"] for ch in c["charges"]] == [p["charge_id"]], c
    assert c["calls"] == CALLS[point], c
    # The replay equals the first successful answer, and the fault header changes nothing now.
    assert_replay_of(pay(api, tenant, key, body), first)
    assert_replay_of(pay(api, tenant, key, body, headers={"X-Fault": point}), first)


def test_retry_within_the_lease_is_409(api, tenant, new_key, crash_env):
    cmd, lease = crash_env
    key = new_key()
    with pytest.raises(httpx.TransportError):
        pay(api, tenant, key, headers={"X-Fault": "crash-after-claim"})
    restart(cmd)
    state = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    if state["state"] == "in_progress":
        r = pay(api, tenant, key)
        # Either the lease still held (409) or it ran out during the restart (a takeover).
        if r.status_code == 409:
            assert_problem(r, 409, "request_in_progress")
        else:
            assert_payment(r)
    time.sleep(lease + 0.5)
    assert pay(api, tenant, key).status_code == 201


def test_stale_holder_loses_its_lease_and_does_not_report(api, processor, tenant, new_key, crash_env):
    """The holder is slower than its lease (tok_slow answers after 2 s): a retry takes the key
    over (attempt 2), so the first holder's checkpoint is fenced off (IK003) and it answers 409,
    never its own outcome. One charge in all."""
    _, lease = crash_env
    key = new_key()
    body = payment_body(card="tok_slow")
    stale = in_thread(pay, api, tenant, key, body)
    time.sleep(lease + 0.3)
    taker = pay(api, tenant, key, body)
    p = assert_payment(taker)
    r = stale()
    assert_problem(r, 409, "request_in_progress")
    assert_not_replayed(r)
    state = api.get(f"/v1/idempotency-keys/{key}", headers=auth(tenant)).json()
    assert (state["state"], state["attempt"]) == ("completed", 2)
    c = charges(processor, tenant, key)
    assert [ch["id"] for ch in c["charges"]] == [p["charge_id"]]
    assert_replay_of(pay(api, tenant, key, body), taker)


def test_fault_header_is_ignored_on_replays_and_other_routes(api, tenant, new_key, crash_env):
    key = new_key()
    first = pay(api, tenant, key)
    assert_payment(first)
    assert_replay_of(pay(api, tenant, key, headers={"X-Fault": "crash-after-claim"}), first)
    assert api.get("/healthz", headers={"X-Fault": "crash-after-claim"}).status_code == 200
