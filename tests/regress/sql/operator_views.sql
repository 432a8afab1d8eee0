-- operator_views: idem_keys and idem_stalled() under two roles and a member, and idem_stats()
-- without the library in shared_preload_libraries.
-- Contract: idem_keys shows a caller only the records of roles it is a member of (superusers:
-- all), the fingerprint in hex and the stored values' sizes, never a response; a caller's
-- own condition (a leaky function) never sees another role's rows (security_barrier);
-- idem_stalled(older_than) lists the caller's in-progress claims whose lease ran out at least
-- older_than ago and that nobody has taken over, oldest first.
-- Roles are cluster-wide: the names are unique to this file and dropped at the end.
-- Each error is shown with its message, DETAIL and HINT, then its SQLSTATE (psql's
-- LAST_ERROR_SQLSTATE).
\set VERBOSITY default
CREATE ROLE idem_ops_alice;
CREATE ROLE idem_ops_bob;
CREATE ROLE idem_ops_alice_team;                  -- a member of alice
GRANT idem_ops_alice TO idem_ops_alice_team;

SET ROLE idem_ops_alice;
BEGIN;
SELECT outcome FROM idem_begin('ops', 'a-done', '{"amount": 10}');
SELECT idem_complete('ops', 'a-done', response => '{"card": "4111 1111 1111 1111"}', resource => 'payments/1', http_status => 201);
COMMIT;
SELECT outcome FROM idem_begin('ops', 'a-held', '{"amount": 20}', lease => '1 hour');
SELECT outcome FROM idem_begin('ops', 'a-stalled-1', '{"amount": 30}', lease => '1 ms');
SELECT idem_checkpoint('ops', 'a-stalled-1', 'charged', '{"charge": "ch_1"}', attempt => 1) IS NOT NULL AS checkpointed;
SELECT outcome FROM idem_begin('ops', 'a-stalled-2', '{"amount": 40}', lease => '1 ms');
BEGIN;
SELECT outcome FROM idem_begin('ops', 'a-failed', '{"amount": 50}');
SELECT idem_fail('ops', 'a-failed', '{"code": "psp_timeout"}', retryable => true, http_status => 503);
COMMIT;
SELECT outcome FROM idem_begin('ops', 'a-expired', '{"amount": 60}', ttl => '1 ms');
RESET ROLE;
SET ROLE idem_ops_bob;
SELECT outcome FROM idem_begin('ops', 'b-stalled', '{"amount": 70}', lease => '1 ms');
BEGIN;
SELECT outcome FROM idem_begin('ops', 'b-done', '{"amount": 80}');
SELECT idem_complete('ops', 'b-done', resource => 'payments/2', http_status => 201);
COMMIT;
RESET ROLE;
-- let the 1 ms leases and the 1 ms ttl run out
SELECT pg_sleep(0.05);

-- The view's columns: sizes, no response, no resource, no recovery data.
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'idem_keys'::regclass AND attnum > 0 ORDER BY attnum;
SELECT relname, reloptions FROM pg_class WHERE oid = 'idem_keys'::regclass;
SELECT has_table_privilege('idem_ops_bob', 'idem_keys', 'SELECT') AS bob_may_select,
       has_function_privilege('idem_ops_bob', 'idem_stalled(interval)', 'EXECUTE') AS bob_may_list_stalled;

-- Each role sees its own records only; the member sees alice's; a superuser sees all.
CREATE TEMP TABLE commands (key text, command jsonb);
INSERT INTO commands VALUES ('a-done', '{"amount": 10}'), ('a-held', '{"amount": 20}'),
    ('a-stalled-1', '{"amount": 30}'), ('a-stalled-2', '{"amount": 40}'), ('a-failed', '{"amount": 50}'),
    ('a-expired', '{"amount": 60}'), ('b-stalled', '{"amount": 70}'), ('b-done', '{"amount": 80}');
GRANT SELECT ON commands TO PUBLIC;
CREATE VIEW pg_temp.seen AS
SELECT k.owner, k.key, k.state, k.retryable, k.attempt, k.expired, k.http_status,
       k.fingerprint = encode(idem_fingerprint(c.command), 'hex') AS fingerprint_is_the_commands,
       length(k.fingerprint) AS hex_digits, k.recovery_point,
       k.resource_size, k.response_size, k.recovery_data_size,
       k.lease_expires_at IS NOT NULL AS has_lease,
       k.expires_at > k.created_at AS expires_after_creation
FROM idem_keys k LEFT JOIN commands c USING (key) WHERE k.scope = 'ops';
GRANT SELECT ON pg_temp.seen TO PUBLIC;
SET ROLE idem_ops_alice;
SELECT * FROM pg_temp.seen ORDER BY key;
SET ROLE idem_ops_bob;
SELECT * FROM pg_temp.seen ORDER BY key;
SET ROLE idem_ops_alice_team;
SELECT * FROM pg_temp.seen ORDER BY key;
RESET ROLE;
SELECT owner, key, state FROM pg_temp.seen ORDER BY key;

-- A leaky function in the caller's own condition sees only the caller's rows (what it saw
-- is kept in a table and shown sorted: the scan's order is the heap's, not the test's).
CREATE TEMP TABLE leaked (key text);
GRANT INSERT ON pg_temp.leaked TO PUBLIC;
CREATE FUNCTION pg_temp.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
$$ BEGIN INSERT INTO pg_temp.leaked VALUES ($1); RETURN true; END $$;
SET ROLE idem_ops_bob;
SELECT key FROM idem_keys WHERE pg_temp.leak(key) AND scope = 'ops' ORDER BY key;
-- and the table itself stays closed
SELECT count(*) FROM idempotency.records;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT key AS leak_saw FROM pg_temp.leaked ORDER BY key;

-- idem_stalled: the caller's lapsed, untaken claims, the oldest lease end first (a-stalled-1's
-- lease, renewed by its checkpoint, still ran out before a-stalled-2's).
CREATE VIEW pg_temp.stalled AS
SELECT s.owner, s.key, s.attempt, s.recovery_point, s.stalled_for > '0' AS stalled,
       s.lease_expires_at < s.expires_at AS before_expiry
FROM idem_stalled() s WHERE s.scope = 'ops';
GRANT SELECT ON pg_temp.stalled TO PUBLIC;
SET ROLE idem_ops_alice;
SELECT * FROM pg_temp.stalled;
SELECT count(*) AS stalled_over_an_hour FROM idem_stalled('1 hour') WHERE scope = 'ops';
SET ROLE idem_ops_bob;
SELECT * FROM pg_temp.stalled;
SET ROLE idem_ops_alice_team;
SELECT * FROM pg_temp.stalled;
-- a takeover renews the lease: the key leaves the queue
SELECT outcome, attempt, recovery_point FROM idem_begin('ops', 'a-stalled-1', '{"amount": 30}', lease => '1 hour');
SELECT * FROM pg_temp.stalled;
RESET ROLE;
SELECT * FROM pg_temp.stalled;
SELECT * FROM idem_stalled(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM idem_stalled('-1 minute');
\echo :LAST_ERROR_SQLSTATE

-- The counters need the library in shared_preload_libraries (this server does not preload it).
SELECT * FROM idem_stats();
\echo :LAST_ERROR_SQLSTATE
SELECT idem_stats_reset();
\echo :LAST_ERROR_SQLSTATE
-- and are for pg_monitor and superusers
SET ROLE idem_ops_bob;
SELECT * FROM idem_stats();
\echo :LAST_ERROR_SQLSTATE
SELECT idem_stats_reset();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT has_function_privilege('pg_monitor', 'idem_stats()', 'EXECUTE') AS monitor_reads_stats,
       has_function_privilege('pg_monitor', 'idem_stats_reset()', 'EXECUTE') AS monitor_resets_stats;

DELETE FROM idempotency.records WHERE scope = 'ops';
DROP ROLE idem_ops_alice_team;
DROP ROLE idem_ops_alice;
DROP ROLE idem_ops_bob;
