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
RETURNS TABLE (outcome text, state text, attempt integer, recovery_point text, recovery_data jsonb,
    http_status integer, response jsonb, resource text, fingerprint bytea, expires_at timestamptz)
LANGUAGE plpgsql AS $f$
DECLARE st text;
BEGIN
    RETURN QUERY SELECT * FROM {ext}.idem_begin($1, $2, $3, $4, $5, $6);
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
CREATE SCHEMA IF NOT EXISTS with_fingerprint;
CREATE OR REPLACE FUNCTION with_fingerprint.idem_check(scope text, key text, command jsonb DEFAULT NULL)
RETURNS TABLE (state text, matches boolean, attempt integer, recovery_point text, http_status integer,
    response jsonb, resource text, created_at timestamptz, expires_at timestamptz,
    lease_expires_at timestamptz, fingerprint bytea)
LANGUAGE sql AS $f$
    SELECT c.*, CASE WHEN c.state <> 'absent' THEN decode(k.fingerprint, 'hex') END
    FROM {ext}.idem_check($1, $2, $3) AS c
    LEFT JOIN {ext}.idem_keys AS k ON k.scope = $1 AND k.key = $2
$f$;
CREATE SCHEMA IF NOT EXISTS broken_follow_up;
CREATE OR REPLACE FUNCTION broken_follow_up.idem_check(scope text, key text, command jsonb DEFAULT NULL)
RETURNS TABLE (state text, matches boolean, attempt integer, recovery_point text, http_status integer,
    response jsonb, resource text, created_at timestamptz, expires_at timestamptz,
    lease_expires_at timestamptz)
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);
END
$f$;
"""
"""`reworded`: idem_begin and idem_complete that call the extension's own (schema-qualified)
and re-raise its errors with the same SQLSTATE and another MESSAGE, DETAIL and HINT (the
DETAILs mimic the old formats with wrong values). `with_fingerprint`: the idem_check of
extension 0.4.0, with its 11th column `fingerprint` (the stored fingerprint), built on 0.3.0's.
`broken_follow_up`: an idem_check that
ends its own session, so that the follow-up read fails as on a lost connection."""


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


def stored_fingerprint_expected(dsn: str, fingerprint: bytes) -> bytes | None:
    """What KeyReused.stored_fingerprint must be: the first command's fingerprint when the
    server's idem_check returns the column `fingerprint` (extension 0.4.0 and later), else
    None (0.3.0)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute("SELECT * FROM idem_check('s', 'k') LIMIT 0")
        names = [d.name for d in cur.description or ()]
    return fingerprint if "fingerprint" in names else None
