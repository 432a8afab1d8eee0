"""A scratch database with the extension, made once per test run.

`scripts/client-python-test.sh` starts a scratch cluster and sets IDEM_TEST_PGHOST (its socket
directory) and IDEM_TEST_PGPORT. Each test gets its own scope (a fresh uuid), so that tests
never meet each other's keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from records import install_reworded, with_search_path
from roundtrips import RoundTripProxy

HOST = os.environ.get("IDEM_TEST_PGHOST")
PORT = os.environ.get("IDEM_TEST_PGPORT", "5432")
DBNAME = f"idem_python_{os.getpid()}"


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    if not HOST:
        pytest.fail("IDEM_TEST_PGHOST is not set: run the tests through scripts/client-python-test.sh")
    admin = f"host={HOST} port={PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{DBNAME}"')
        c.execute(f'CREATE DATABASE "{DBNAME}"')
    url = f"host={HOST} port={PORT} user=postgres dbname={DBNAME}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE EXTENSION idempotency")
        c.execute("CREATE ROLE idem_other_role LOGIN") if not c.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'idem_other_role'").fetchone() else None
        c.execute("GRANT ALL ON SCHEMA public TO idem_other_role")
    yield url
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')


@pytest.fixture
def scope() -> str:
    return f"test:{uuid.uuid4()}"


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn) as c:
        yield c


@pytest.fixture
def conn2(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn) as c:
        yield c


@pytest.fixture(scope="session")
def proxy() -> Iterator[RoundTripProxy]:
    p = RoundTripProxy(os.path.join(HOST or "", f".s.PGSQL.{PORT}"))
    yield p
    p.close()


@pytest.fixture
def counted_dsn(proxy: RoundTripProxy) -> str:
    """The test database through the counting proxy (TCP to 127.0.0.1)."""
    return f"host=127.0.0.1 port={proxy.port} user=postgres dbname={DBNAME}"


@pytest.fixture
def counted(proxy: RoundTripProxy, dsn: str) -> Iterator[tuple[psycopg.Connection, RoundTripProxy]]:
    """A connection through the counting proxy (TCP to 127.0.0.1), counter at 0."""
    url = dsn.replace(f"host={HOST}", "host=127.0.0.1").replace(f"port={PORT}", f"port={proxy.port}")
    with psycopg.connect(url) as c:
        proxy.reset()
        yield c, proxy


@pytest.fixture(scope="session")
def _rewording(dsn: str) -> str:
    install_reworded(dsn)
    return dsn


@pytest.fixture
def reworded_dsn(_rewording: str) -> str:
    """The test database with the schema `reworded` first in search_path: the extension's
    idem_begin and idem_complete answer with their own SQLSTATE and other texts."""
    return with_search_path(_rewording, "reworded")


@pytest.fixture
def broken_dsn(_rewording: str) -> str:
    """The test database with an idem_check that ends the session: the follow-up read fails."""
    return with_search_path(_rewording, "broken_follow_up")


@pytest.fixture(scope="session")
def dsn_0_3_0(dsn: str) -> Iterator[str]:
    """A database of its own in the suite's cluster with the extension created at 0.3.0's SQL
    (`CREATE EXTENSION idempotency VERSION '0.3.0'`, served by the same library): OUT
    parameters, and an idem_check of ten columns, without the stored `fingerprint`."""
    name = f"{DBNAME}_sql_0_3_0"
    admin = f"host={HOST} port={PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    url = f"host={HOST} port={PORT} user=postgres dbname={name}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE EXTENSION idempotency VERSION '0.3.0'")
    yield url
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
