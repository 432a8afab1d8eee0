-- idempotency 0.2.0 -> 0.3.0 (run by ALTER EXTENSION idempotency UPDATE).
--
-- Every statement that changes an object of 0.2.0 (sql/releases/idempotency--0.2.0.sql) into
-- its 0.3.0 form (the SQL that `cargo pgrx install` generates for 0.3.0 from
-- sql/idempotency.sql) goes here, so that an upgraded database ends up with exactly the
-- objects of a fresh CREATE EXTENSION; scripts/upgrade-test.sh compares the two catalogs.
-- Records are data: a change of the table keeps every row and its meaning.

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
