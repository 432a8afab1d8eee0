-- check: idem_check reads a key without writing or locking anything.
-- Pins: exactly one row; `absent` with every other column NULL for a key that does not
-- exist or has expired; `matches` compares a given command's fingerprint with the stored
-- one (any spelling of the same command matches; NULL when no command is given); created_at
-- is the first use and expires_at = created_at + ttl; lease_expires_at is set only while
-- the record is in progress; fingerprint (0.4.0, the last column) is the stored one, the same
-- whichever command is given, NULL when absent; the result is a row of the composite type
-- idempotency.check_result (idem_begin's of idempotency.begin_result) with the columns of the
-- contract, in order; idem_check takes no key lock, and of idem_begin's outcomes only
-- execute keeps one (until the transaction ends). idem_check on a hot standby is the
-- standby test's (scripts/standby-test.sh); other roles' keys are security's.
\set VERBOSITY sqlstate
\pset null (null)
-- the key locks this backend holds: advisory locks in the extension's space (objsubid 7655)
CREATE FUNCTION pg_temp.key_locks() RETURNS bigint LANGUAGE sql AS $$
  SELECT count(*) FROM pg_locks
   WHERE locktype = 'advisory' AND objsubid = 7655 AND pid = pg_backend_pid() $$;

-- check_reports_absent_for_missing_and_expired_keys: absent, every other column NULL, with
-- or without a command; one row
SELECT * FROM idem_check('check/absent', 'none');
SELECT * FROM idem_check('check/absent', 'none', '{"a": 1}');
SELECT outcome FROM idem_begin('check/absent', 'k', '{"a": 1}', ttl => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT * FROM idem_check('check/absent', 'k');
SELECT * FROM idem_check('check/absent', 'k', '{"a": 1}');
SELECT count(*) FROM idem_check('check/absent', 'none');

-- check_matches_given_command: the same command in another spelling matches, another value
-- does not, no command (or NULL) gives NULL; created now, expiring a day later
SELECT outcome FROM idem_begin('check/matches', 'k', '{"b": 1, "a": 2.0}');
SELECT matches FROM idem_check('check/matches', 'k', '{ "a": 2, "b": 1.00 }');
SELECT matches FROM idem_check('check/matches', 'k', '{"a": 2, "b": 1.5}');
SELECT matches FROM idem_check('check/matches', 'k');
SELECT matches FROM idem_check('check/matches', 'k', NULL);
SELECT created_at BETWEEN clock_timestamp() - interval '5 seconds' AND clock_timestamp() AS created_now,
       expires_at = created_at + interval '24 hours' AS expires_after_ttl
  FROM idem_check('check/matches', 'k');

-- check_returns_the_stored_fingerprint: the stored record's (SHA-256 of {"a":2,"b":1}, the
-- canonical form of the command claimed above), with a matching command, another command or
-- none; NULL for an absent key
SELECT encode(fingerprint, 'hex') AS stored FROM idem_check('check/matches', 'k');
SELECT matches, encode(fingerprint, 'hex') AS stored FROM idem_check('check/matches', 'k', '{"a": 3}');
SELECT fingerprint = idem_fingerprint('{"a": 2, "b": 1}') AS is_commands,
       fingerprint = (SELECT b.fingerprint FROM idem_begin('check/matches', 'k', '{"b": 1, "a": 2.0}') b) AS is_begins
  FROM idem_check('check/matches', 'k', '{"a": 2, "b": 1}');
SELECT state, fingerprint FROM idem_check('check/matches', 'no-such-key');

-- check_and_begin_return_their_composite_types: the result types and their columns, in order
SELECT p.proname, p.prorettype::regtype AS returns, p.prosrc AS symbol,
       (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
          FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
  FROM pg_proc p JOIN pg_type t ON t.oid = p.prorettype
 WHERE p.proname IN ('idem_begin', 'idem_check') ORDER BY p.proname;
SELECT pg_typeof(idem_check('check/matches', 'k')) AS check_type,
       pg_typeof(idem_begin('check/matches', 'k', '{"a": 2, "b": 1}')) AS begin_type;

-- check_shows_lease_only_while_in_progress: a lease while in progress (30 seconds here),
-- none once completed, failed for good or failed retryable, again once retried
SELECT count(*) AS claimed
  FROM unnest(ARRAY['c', 'f', 'r']) AS k, LATERAL idem_begin('check/lease', k, '{}', lease => '30 seconds');
SELECT bool_and(c.lease_expires_at BETWEEN clock_timestamp() + interval '25 seconds'
                                       AND clock_timestamp() + interval '30 seconds') AS leases_of_30s
  FROM unnest(ARRAY['c', 'f', 'r']) AS k, LATERAL idem_check('check/lease', k) c;
SELECT idem_complete('check/lease', 'c');
SELECT idem_fail('check/lease', 'f', retryable => false);
SELECT idem_fail('check/lease', 'r', retryable => true);
SELECT k, c.state, c.lease_expires_at IS NULL AS no_lease
  FROM unnest(ARRAY['c', 'f', 'r']) AS k, LATERAL idem_check('check/lease', k) c ORDER BY k;
SELECT outcome, attempt FROM idem_begin('check/lease', 'r', '{}');
SELECT lease_expires_at IS NOT NULL AS leased FROM idem_check('check/lease', 'r');

-- check_takes_no_lock_and_only_execute_keeps_one: within one transaction, idem_check takes
-- no key lock; execute takes the key's lock and keeps it through later calls on the key;
-- a second key has its own
BEGIN;
SELECT state FROM idem_check('check/locks', 'k');
SELECT pg_temp.key_locks();
SELECT outcome FROM idem_begin('check/locks', 'k', '{}');
SELECT pg_temp.key_locks();
SELECT state FROM idem_check('check/locks', 'k');
SELECT outcome FROM idem_begin('check/locks', 'k', '{}');
SELECT pg_temp.key_locks();
SELECT idem_complete('check/locks', 'k');
SELECT pg_temp.key_locks();
SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource
  FROM idem_begin('check/locks', 'k', '{}');
SELECT outcome FROM idem_begin('check/locks', 'k2', '{}');
SELECT pg_temp.key_locks();
COMMIT;
-- in a new transaction: replay and in_progress (k2's committed claim, its lease holding)
-- write nothing and keep no lock; nor does idem_check
BEGIN;
SELECT outcome FROM idem_begin('check/locks', 'k', '{}');
SELECT outcome FROM idem_begin('check/locks', 'k2', '{}');
SELECT state FROM idem_check('check/locks', 'k2');
SELECT pg_temp.key_locks();
ROLLBACK;

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'check/%';
