"""The HTTP conformance suite: drives any implementation of the payments API contract over
HTTP, given its base URL.

    pytest tests/conformance --base-url http://127.0.0.1:8080 -m core
    pytest tests/conformance --base-url URL --processor-url URL -m "core or full"
    pytest tests/conformance --base-url URL --processor-url URL -m crash \
        --lease 1 --restart-command "CMD"

Markers: `core` (what every implementation must pass: 201, replay, 422, 409 + Retry-After,
400 for the key, 401, tenant isolation), `full` (every other row of the contract; needs the
mock processor's URL to count charges), `crash` (fault injection and a stale holder: needs a
service started with `--fault-injection` and a short `--lease`, and a command that starts it
again after it aborted; the command must return once the service answers or fail).

Options may also come from the environment: CONFORMANCE_BASE_URL, CONFORMANCE_PROCESSOR_URL,
CONFORMANCE_LEASE, CONFORMANCE_RESTART_COMMAND. `--no-skip` turns every skip into a failure
(CI uses it, so that a missing option cannot pass silently).
"""

import os
import uuid

import httpx
import pytest


def pytest_addoption(parser):
    g = parser.getgroup("conformance")
    g.addoption("--base-url", default=os.environ.get("CONFORMANCE_BASE_URL"),
                help="the service under test, e.g. http://127.0.0.1:8080")
    g.addoption("--processor-url", default=os.environ.get("CONFORMANCE_PROCESSOR_URL"),
                help="the mock card processor the service charges through (full, crash)")
    g.addoption("--lease", type=float, default=float(os.environ.get("CONFORMANCE_LEASE", "0") or 0),
                help="the --lease the service runs with, in seconds (crash)")
    g.addoption("--restart-command", default=os.environ.get("CONFORMANCE_RESTART_COMMAND"),
                help="a shell command that starts the service again after a crash (crash)")
    g.addoption("--no-skip", action="store_true", help="fail instead of skipping")


def pytest_configure(config):
    config.addinivalue_line("markers", "core: every implementation must pass these")
    config.addinivalue_line("markers", "full: the rest of the contract (needs --processor-url)")
    config.addinivalue_line("markers", "crash: fault injection and lost leases (needs --restart-command, --lease)")


def need(request, what):
    """Skips (or, with --no-skip, fails) a test that lacks an option."""
    msg = f"needs {what}"
    if request.config.getoption("--no-skip"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def base_url(request):
    url = request.config.getoption("--base-url")
    if not url:
        raise pytest.UsageError("--base-url (or CONFORMANCE_BASE_URL) is required")
    return url.rstrip("/")


@pytest.fixture
def api(base_url):
    with httpx.Client(base_url=base_url, timeout=30.0) as c:
        yield c


@pytest.fixture
def processor(request):
    url = request.config.getoption("--processor-url")
    if not url:
        need(request, "--processor-url")
    with httpx.Client(base_url=url.rstrip("/"), timeout=30.0) as c:
        yield c


@pytest.fixture
def tenant():
    """A tenant of its own for each test, so that tests never meet each other's keys."""
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
def other_tenant():
    return "o" + uuid.uuid4().hex[:16]


@pytest.fixture
def new_key():
    return lambda: "k-" + uuid.uuid4().hex


@pytest.fixture
def crash_env(request):
    cmd = request.config.getoption("--restart-command")
    lease = request.config.getoption("--lease")
    if not cmd:
        need(request, "--restart-command")
    if not lease or lease <= 0 or lease >= 2:
        need(request, "--lease below 2 seconds (tok_slow answers after 2 s)")
    return cmd, lease
