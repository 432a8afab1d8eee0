"""What the refusal tests compare the errors' data with, read independently of the client
(the operator's view `idem_keys`, epoch microseconds), and the server-side rewording of the
extension's messages that proves the client reads none of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import psycopg
from psycopg import sql

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

REWORDED_SQL = r"""
CREATE SCHEMA IF NOT EXISTS reworded;
CREATE OR REPLACE FUNCTION reworded.idem_begin(scope text, key text, command jsonb,
    ttl interval DEFAULT NULL, lease interval DEFAULT NULL, wait interval DEFAULT NULL)
RETURNS idempotency.begin_result
LANGUAGE plpgsql AS $f$
DECLARE st text; r idempotency.begin_result;
BEGIN
    r := {ext}.idem_begin($1, $2, $3, $4, $5, $6);
    RETURN r;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
    RAISE USING ERRCODE = st, MESSAGE = 'Reworded: the begin was refused (' || st || ')',
        DETAIL = 'Nothing here: Scope "x", key "y" was first used at 1999-01-01 00:00:00+00 with command fingerprint 00000000; this request''s fingerprint is 11111111.',
        HINT = 'a reworded hint';
END
$f$;
CREATE OR REPLACE FUNCTION reworded.idem_complete(scope text, key text, response jsonb DEFAULT NULL,
    resource text DEFAULT NULL, http_status integer DEFAULT 200, attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $f$
DECLARE st text;
BEGIN
    PERFORM {ext}.idem_complete($1, $2, $3, $4, $5, $6);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
    RAISE USING ERRCODE = st, MESSAGE = 'Reworded: the completion was refused (' || st || ')',
        DETAIL = 'The record is at attempt 77; this call is from attempt 88. It has expired.',
        HINT = 'a reworded hint';
END
$f$;
CREATE SCHEMA IF NOT EXISTS broken_follow_up;
CREATE OR REPLACE FUNCTION broken_follow_up.idem_check(scope text, key text, command jsonb DEFAULT NULL)
RETURNS idempotency.check_result
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);
END
$f$;
"""
"""`reworded`: idem_begin and idem_complete that call the extension's own (schema-qualified)
and re-raise its errors with the same SQLSTATE and another MESSAGE, DETAIL and HINT (the
DETAILs mimic the old formats with wrong values); idem_begin returns the extension's own
result type, `idempotency.begin_result` (0.4.0), as the real one does. `broken_follow_up`: an
idem_check (of 0.4.0's type, `idempotency.check_result`) that ends its own session, so that the
follow-up read fails as on a lost connection. idem_check itself is never shadowed but there:
the follow-up reads the extension's own, with its `fingerprint` column."""


def install_reworded(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'idempotency'").fetchone()
        assert row is not None
        c.execute(REWORDED_SQL.replace("{ext}", sql.Identifier(row[0]).as_string(c)))


def with_search_path(dsn: str, *schemas: str) -> str:
    """The dsn with these schemas first in search_path (then public)."""
    path = ",".join([*schemas, "public"])
    return f"{dsn} options='-c search_path={path}'"


def first_used(dsn: str, scope: str, key: str) -> tuple[datetime, bytes]:
    """The record's created_at (exact, from epoch microseconds) and stored fingerprint, read on
    a connection of its own from the view idem_keys: not through the client's follow-up."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT (extract(epoch FROM created_at) * 1000000)::bigint, decode(fingerprint, 'hex')"
            " FROM idem_keys WHERE scope = %s AND key = %s", (scope, key)).fetchone()
    assert row is not None
    return EPOCH + timedelta(microseconds=row[0]), bytes(row[1])


def sql_version(dsn: str) -> tuple[str, list[str]]:
    """The extension's SQL version in this database and the columns its idem_check returns."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'idempotency'").fetchone()
        cur = c.execute("SELECT * FROM idem_check('s', 'k') LIMIT 0")
        names = [d.name for d in cur.description or ()]
    assert row is not None
    return row[0], names
