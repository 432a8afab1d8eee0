-- The extension's SQL: its private schema, the record table, and the SQL functions, whose
-- bodies are C-ABI functions in the extension's library (src/api.rs). Everything the
-- library's own queries touch is schema-qualified, operators included.

-- The canonical form hashes UTF-8 text: in another encoding a command's strings would hash to
-- other bytes than the same command's in a UTF8 database, so refuse to install there.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION 'idempotency requires a UTF8 database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('The database encoding is %s.', pg_catalog.getdatabaseencoding()),
                  HINT = 'Create the database with ENCODING ''UTF8''.';
    END IF;
END
$$;

-- A private schema for the records, so that no other role can place objects beside them.
CREATE SCHEMA idempotency;
REVOKE ALL ON SCHEMA idempotency FROM PUBLIC;
COMMENT ON SCHEMA idempotency IS 'private storage of the idempotency extension';

-- One row per (scope, key). Designed for the hot path:
-- - the claim is one insert; the primary key is the only b-tree, and none of its columns
--   changes after the claim, so completions, failures and checkpoints are HOT updates;
-- - fillfactor 100: a page is pruned of the claims' old versions whenever it gets within 10%
--   of full, so the page being filled keeps room for the updates (99% HOT in the benchmark),
--   while a lower fillfactor made inserts leave each page once live and dead versions
--   together reached it, at half the density (481 heap bytes per record at 70, 191 at 100);
-- - expires_at is set once per claim and indexed by a BRIN index (rows arrive in time
--   order), which costs next to nothing per row and lets idem_purge find expired rows;
-- - scope leads the primary key and there is no sequence or foreign key, so the table can be
--   distributed by scope (Citus) without change;
-- - owner is regrole: a dump stores the role's name, so ownership survives a restore into a
--   cluster where the role has another oid;
-- - no CHECK constraint on state: PostgreSQL reads a CHECK expression back from the catalog
--   and plans it again at the start of every INSERT and UPDATE (about 31,000 instructions
--   each, measured with callgrind: README, Performance); only the extension's own
--   statements, which write the constants 'p', 'c' and 'f', ever write this table.
CREATE TABLE idempotency.records (
    created_at       timestamptz NOT NULL,       -- first use of the key
    expires_at       timestamptz NOT NULL,       -- created_at + ttl; the record counts as none after
    lease_expires_at timestamptz,                -- while in progress: when the holder's lease runs out
    lease            bigint NOT NULL,            -- the lease length in microseconds, renewed by checkpoints
    owner            regrole NOT NULL,           -- the role that created the record
    attempt          integer NOT NULL,           -- 1, then one more per re-execution: the fencing token
    http_status      smallint,                   -- the stored outcome's status
    state            "char" NOT NULL,            -- p: in progress, c: completed, f: failed
    retryable        boolean,                    -- for a failure: may the next request re-execute?
    scope            text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    fingerprint      bytea NOT NULL,             -- SHA-256 of the canonical command
    resource         text,                       -- the stored resource reference
    recovery_point   text,                       -- the last checkpoint's name
    recovery_data    jsonb,                      -- the last checkpoint's data
    response         jsonb,                      -- the stored response (or a failure's error)
    CONSTRAINT records_pkey PRIMARY KEY (scope, key)
) WITH (fillfactor = 100);
CREATE INDEX records_expires_at_brin ON idempotency.records USING brin (expires_at);
REVOKE ALL ON idempotency.records FROM PUBLIC;
COMMENT ON TABLE idempotency.records IS 'idempotency keys: one row per (scope, key); reach it only through the idem_* functions';
-- Keep the rows in pg_dump output: they are data, not extension scaffolding.
SELECT pg_catalog.pg_extension_config_dump('idempotency.records', '');

-- The functions run as the caller (so that the caller's role can be checked against each
-- record's owner) and switch to the extension owner's rights only around their own queries.
-- search_path is pinned anyway, so that nothing a caller places on it is ever resolved.

CREATE FUNCTION idem_begin(
    scope text, key text, command jsonb,
    ttl interval DEFAULT NULL, lease interval DEFAULT NULL, wait interval DEFAULT NULL,
    OUT outcome text, OUT state text, OUT attempt integer,
    OUT recovery_point text, OUT recovery_data jsonb,
    OUT http_status integer, OUT response jsonb, OUT resource text,
    OUT fingerprint bytea, OUT expires_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin' LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_begin(text, text, jsonb, interval, interval, interval) IS
'claims an idempotency key for a command: outcome execute, replay or in_progress; IK001 for a different command';

CREATE FUNCTION idem_complete(
    scope text, key text, response jsonb DEFAULT NULL, resource text DEFAULT NULL,
    http_status integer DEFAULT 200, attempt integer DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_complete' LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_complete(text, text, jsonb, text, integer, integer) IS
'stores the final outcome of an in-progress key, to be replayed';

CREATE FUNCTION idem_fail(
    scope text, key text, error jsonb DEFAULT NULL, retryable boolean DEFAULT true,
    http_status integer DEFAULT 500, attempt integer DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_fail' LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_fail(text, text, jsonb, boolean, integer, integer) IS
'records the failure of an in-progress key: retryable ones re-execute, others replay the error';

CREATE FUNCTION idem_checkpoint(
    scope text, key text, recovery_point text, data jsonb DEFAULT NULL,
    attempt integer DEFAULT NULL)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_checkpoint' LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_checkpoint(text, text, text, jsonb, integer) IS
'records a recovery point of an in-progress key and renews its lease; returns the new lease end';

CREATE FUNCTION idem_check(
    scope text, key text, command jsonb DEFAULT NULL,
    OUT state text, OUT matches boolean, OUT attempt integer, OUT recovery_point text,
    OUT http_status integer, OUT response jsonb, OUT resource text,
    OUT created_at timestamptz, OUT expires_at timestamptz, OUT lease_expires_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_check' LANGUAGE c VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_check(text, text, jsonb) IS
'reads a key without writing or locking (works on a hot standby); state absent for none or expired';

CREATE FUNCTION idem_fingerprint(command jsonb) RETURNS bytea
AS 'MODULE_PATHNAME', 'idem_fingerprint' LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idem_fingerprint(jsonb) IS
'SHA-256 of the canonical form of a command';

CREATE FUNCTION idem_canonical(command jsonb) RETURNS text
AS 'MODULE_PATHNAME', 'idem_canonical' LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idem_canonical(jsonb) IS
'the canonical form of a command: the exact text that idem_fingerprint hashes';

CREATE FUNCTION idem_purge(max_rows integer DEFAULT 10000) RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_purge' LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_purge(integer) IS
'deletes up to max_rows expired records, skipping rows that others have locked; returns how many';

CREATE FUNCTION idem_forget(scope text, key text) RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_forget' LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idem_forget(text, text) IS
'an operator''s eviction of one live key; returns whether a live record was deleted';

-- ==== 0.3.0 operations: counters, the operator's view, stalled claims (docs/operations.md) ====

-- The counters in shared memory, one row per database (needs the library in
-- shared_preload_libraries; otherwise 55000). Readable by pg_monitor, as the statistics views
-- of PostgreSQL's own monitoring role are.
CREATE FUNCTION idem_stats(
    OUT datid oid, OUT datname name,
    OUT executes_new bigint, OUT executes_takeover bigint, OUT executes_retry bigint,
    OUT replays bigint, OUT in_progress bigint,
    OUT command_mismatches bigint, OUT not_in_progress bigint, OUT leases_lost bigint,
    OUT permission_denied bigint,
    OUT waits bigint, OUT wait_time double precision,
    OUT completions bigint, OUT failures_retryable bigint, OUT failures_final bigint,
    OUT checkpoints bigint, OUT forgets bigint,
    OUT purged_rows bigint, OUT purge_runs bigint, OUT last_purge timestamptz,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats' LANGUAGE c VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION idem_stats() IS
'counters of the idempotency layer per database since the last idem_stats_reset(): outcomes, refusals, waits, purging';
REVOKE ALL ON FUNCTION idem_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_stats() TO pg_monitor;

CREATE FUNCTION idem_stats_reset() RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_stats_reset' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_stats_reset() IS
'zeroes the counters of idem_stats() in every database; returns the reset time';
REVOKE ALL ON FUNCTION idem_stats_reset() FROM PUBLIC;

-- The records as an operator sees them: only those of roles the caller is a member of
-- (superusers: all), and of the stored values only their sizes (pg_column_size: as stored,
-- compressed or not), never a response. security_barrier: a caller's own condition (a
-- function that leaks its arguments) is applied only to rows the membership test let through.
CREATE VIEW idem_keys WITH (security_barrier) AS
SELECT r.scope,
       r.key,
       CASE r.state WHEN 'p' THEN 'in_progress' WHEN 'c' THEN 'completed' ELSE 'failed' END AS state,
       r.retryable,
       r.attempt,
       r.owner,
       r.created_at,
       r.expires_at,
       r.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() AS expired,
       CASE WHEN r.state OPERATOR(pg_catalog.=) 'p' THEN r.lease_expires_at END AS lease_expires_at,
       r.http_status::pg_catalog.int4 AS http_status,
       pg_catalog.encode(r.fingerprint, 'hex') AS fingerprint,
       r.recovery_point,
       pg_catalog.pg_column_size(r.resource) AS resource_size,
       pg_catalog.pg_column_size(r.response) AS response_size,
       pg_catalog.pg_column_size(r.recovery_data) AS recovery_data_size
FROM idempotency.records r
WHERE pg_catalog.pg_has_role(r.owner::pg_catalog.oid, 'MEMBER');
COMMENT ON VIEW idem_keys IS
'the idempotency records of roles the current role is a member of: state, attempt, times, fingerprint, sizes (never a response)';
GRANT SELECT ON idem_keys TO PUBLIC;

-- In-progress claims whose lease ran out at least older_than ago and that nobody has taken
-- over (a takeover renews the lease), oldest first: the queue a recovery job re-drives with
-- idem_begin and the key's command. Only the caller's records, as in idem_keys.
CREATE FUNCTION idem_stalled(older_than interval DEFAULT '0')
RETURNS TABLE (scope text, key text, attempt integer, owner regrole,
               created_at timestamptz, lease_expires_at timestamptz, stalled_for interval,
               recovery_point text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'argument "older_than" of idem_stalled must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF older_than OPERATOR(pg_catalog.<) '0'::interval THEN
        RAISE EXCEPTION 'invalid older_than for idem_stalled'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It must not be negative.';
    END IF;
    RETURN QUERY
    SELECT k.scope, k.key, k.attempt, k.owner, k.created_at, k.lease_expires_at,
           (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) k.lease_expires_at),
           k.recovery_point, k.expires_at
    FROM @extschema@.idem_keys k
    WHERE k.state OPERATOR(pg_catalog.=) 'in_progress' AND NOT k.expired
      AND k.lease_expires_at OPERATOR(pg_catalog.<=)
          (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) older_than)
    ORDER BY k.lease_expires_at, k.scope, k.key;
END
$$;
COMMENT ON FUNCTION idem_stalled(interval) IS
'in-progress claims of the current role''s records whose lease ran out at least older_than ago, oldest first';

-- ==== end of the 0.3.0 operations block ====
