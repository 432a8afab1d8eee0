-- stats: every counter of idem_stats() after a scripted sequence that produces each outcome
-- and each refusal once or a known number of times, in a database of its own (pg_regress
-- creates it fresh), with the library preloaded and the purge worker off
-- (scripts/ops-test.sh sets idempotency.purge_interval = 0 for this file); then
-- idem_stats_reset() zeroes them. With idempotency.log_refusals on and the client shown LOG
-- messages, the IK001 and IK003 lines appear below (the takeover's line carries a time and is
-- checked in the server log by the script, as is the IK001 line's DETAIL).
-- Each error is shown with its message, DETAIL and HINT, then its SQLSTATE (psql's
-- LAST_ERROR_SQLSTATE).
\set VERBOSITY default
CREATE ROLE idem_stats_other;
CREATE VIEW counts AS
SELECT executes_new, executes_takeover, executes_retry, replays, in_progress,
       command_mismatches, not_in_progress, leases_lost, permission_denied,
       waits, completions, failures_retryable, failures_final, checkpoints, forgets,
       purged_rows, purge_runs, last_purge IS NOT NULL AS purged_once
FROM idem_stats() WHERE datname = current_database();
-- nothing counted yet in this database: no row
SELECT count(*) AS rows FROM idem_stats() WHERE datname = current_database();

-- execute on a new key, complete, replay
BEGIN;
SELECT outcome, attempt FROM idem_begin('st', 'new', '{"amount": 1}');
SELECT idem_complete('st', 'new', resource => 'r/1', http_status => 201);
COMMIT;
SELECT outcome, http_status FROM idem_begin('st', 'new', '{"amount": 1}');
-- IK001, with its LOG line (terse here: the error's DETAIL holds the key's first use; the
-- script checks the LOG line's DETAIL, both fingerprints in full, in the server log)
SET idempotency.log_refusals = on;
SET client_min_messages = log;
\set VERBOSITY terse
SELECT outcome FROM idem_begin('st', 'new', '{"amount": 2}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SET client_min_messages = notice;
-- in_progress: a committed claim whose lease holds
SELECT outcome FROM idem_begin('st', 'held', '{}', lease => '1 hour');
SELECT outcome, http_status FROM idem_begin('st', 'held', '{}');
-- takeover after the lease ran out, with a checkpoint first; then IK003 for the old holder
SELECT outcome FROM idem_begin('st', 'lapse', '{}', lease => '1 ms');
SELECT idem_checkpoint('st', 'lapse', 'step-1', attempt => 1) IS NOT NULL AS checkpointed;
SELECT pg_sleep(0.05);
SELECT outcome, attempt, recovery_point FROM idem_begin('st', 'lapse', '{}');
SET client_min_messages = log;
SELECT idem_complete('st', 'lapse', attempt => 1);
\echo :LAST_ERROR_SQLSTATE
SET client_min_messages = notice;
-- a retryable failure, its retry, a final failure, its replay
BEGIN;
SELECT outcome FROM idem_begin('st', 'flaky', '{}');
SELECT idem_fail('st', 'flaky', '{"code": "timeout"}', retryable => true, http_status => 503);
COMMIT;
BEGIN;
SELECT outcome, attempt FROM idem_begin('st', 'flaky', '{}');
SELECT idem_fail('st', 'flaky', '{"code": "declined"}', retryable => false, http_status => 402);
COMMIT;
SELECT outcome, http_status FROM idem_begin('st', 'flaky', '{}');
-- IK002
SELECT idem_complete('st', 'absent');
\echo :LAST_ERROR_SQLSTATE
SELECT idem_checkpoint('st', 'new', 'p');
\echo :LAST_ERROR_SQLSTATE
-- 42501 from idem_begin and idem_check
SET ROLE idem_stats_other;
SELECT outcome FROM idem_begin('st', 'new', '{"amount": 1}');
\echo :LAST_ERROR_SQLSTATE
SELECT state FROM idem_check('st', 'new');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- a timed wait: a prepared transaction holds an uncommitted claim (and the key's lock)
BEGIN;
SELECT outcome FROM idem_begin('st', 'prepared', '{}');
PREPARE TRANSACTION 'idem_stats_holder';
SELECT outcome, attempt FROM idem_begin('st', 'prepared', '{}', wait => '100 ms');
COMMIT PREPARED 'idem_stats_holder';
-- forget: one live key (counted), one absent key (not counted: nothing was forgotten)
SELECT idem_forget('st', 'held');
SELECT idem_forget('st', 'nothing');
-- purge: three expired records, then a call that finds none
INSERT INTO idempotency.records (created_at, expires_at, lease, owner, attempt, state, scope, key, fingerprint)
SELECT now() - interval '2 days', now() - interval '1 day', 1, 'postgres', 1, 'c', 'st', 'old-' || i, '\x00'
FROM generate_series(1, 3) i;
SELECT idem_purge();
SELECT idem_purge();

-- the counts: executes_new 5 (new, held, lapse, flaky, prepared), takeover 1, retry 1,
-- replays 2 (new, flaky's final failure), in_progress 2 (held; prepared after its wait),
-- IK001 1, IK002 2, IK003 1, 42501 2, waits 1, completions 1, failures 1 + 1, checkpoints 1,
-- forgets 1, purged 3 in 2 runs
\x on
SELECT * FROM counts;
\x off
SELECT wait_time >= 100 AS waited_the_full_100_ms, stats_reset <= now() AS reset_before
FROM idem_stats() WHERE datname = current_database();

-- reset: every counter 0, no last purge, stats_reset the reset's time
SELECT idem_stats_reset() AS reset_at \gset
\x on
SELECT * FROM counts;
\x off
SELECT stats_reset = :'reset_at' AS reset_time_recorded, wait_time FROM idem_stats()
WHERE datname = current_database();
-- an ordinary role may neither read nor reset; pg_monitor may read
SET ROLE idem_stats_other;
SELECT count(*) FROM idem_stats();
\echo :LAST_ERROR_SQLSTATE
SELECT idem_stats_reset();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT pg_monitor TO idem_stats_other;
SET ROLE idem_stats_other;
SELECT count(*) > 0 AS monitor_reads FROM idem_stats();
RESET ROLE;

DELETE FROM idempotency.records WHERE scope = 'st';
DROP ROLE idem_stats_other;
