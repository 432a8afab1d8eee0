-- settle_refusals: idem_complete, idem_fail and idem_checkpoint act only on a record that
-- is in progress, and only for its current attempt.
-- Pins: on a key that is absent, expired, completed, failed retryable or failed for good,
-- each of the three is IK002, with or without an attempt, and changes nothing; after a
-- takeover, the old holder's attempt (and any other that is not the record's) is IK003 for
-- each of the three, while the current holder settles; the stale holder still learns it was
-- fenced off after the key completed. Two sessions racing for a key are the isolation
-- specs' (tests/isolation: fencing of complete, fail and checkpoint).
\set VERBOSITY sqlstate
\pset null (null)
\set check_row 'state, matches, attempt, recovery_point, http_status, response, resource, created_at IS NOT NULL AS created, expires_at IS NOT NULL AS expires, lease_expires_at IS NOT NULL AS leased'
-- the SQLSTATE a statement raises, or NULL (it runs in a subtransaction)
CREATE FUNCTION pg_temp.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;

-- settling_key_not_in_progress_is_ik002: every call on every key that is not in progress
SELECT outcome FROM idem_begin('settle_refusals/ik002', 'expired', '{}', ttl => '1 millisecond');
SELECT outcome FROM idem_begin('settle_refusals/ik002', 'completed', '{}');
SELECT idem_complete('settle_refusals/ik002', 'completed');
SELECT outcome FROM idem_begin('settle_refusals/ik002', 'failed', '{}');
SELECT idem_fail('settle_refusals/ik002', 'failed', retryable => true);
SELECT outcome FROM idem_begin('settle_refusals/ik002', 'final', '{}');
SELECT idem_fail('settle_refusals/ik002', 'final', retryable => false);
SELECT pg_sleep(0.01);
SELECT k,
       pg_temp.sqlstate_of(format($$SELECT idem_complete('settle_refusals/ik002', %L)$$, k)) AS complete,
       pg_temp.sqlstate_of(format($$SELECT idem_fail('settle_refusals/ik002', %L)$$, k)) AS fail,
       pg_temp.sqlstate_of(format($$SELECT idem_checkpoint('settle_refusals/ik002', %L, 'p')$$, k)) AS checkpoint,
       pg_temp.sqlstate_of(format($$SELECT idem_complete('settle_refusals/ik002', %L, attempt => 1)$$, k)) AS complete_1,
       pg_temp.sqlstate_of(format($$SELECT idem_fail('settle_refusals/ik002', %L, attempt => 1)$$, k)) AS fail_1,
       pg_temp.sqlstate_of(format($$SELECT idem_checkpoint('settle_refusals/ik002', %L, 'p', attempt => 1)$$, k)) AS checkpoint_1
  FROM unnest(ARRAY['absent', 'expired', 'completed', 'failed', 'final']) WITH ORDINALITY AS k(k, i) ORDER BY i;
-- the refused calls changed nothing
SELECT :check_row FROM idem_check('settle_refusals/ik002', 'completed');
SELECT :check_row FROM idem_check('settle_refusals/ik002', 'final');
SELECT * FROM idem_check('settle_refusals/ik002', 'absent');

-- stale_attempt_after_takeover_is_ik003: the lease ran out and attempt 2 took over
SELECT outcome FROM idem_begin('settle_refusals/ik003', 'k', '{}', lease => '10 milliseconds');
SELECT pg_sleep(0.02);
SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource
  FROM idem_begin('settle_refusals/ik003', 'k', '{}');
-- attempt 1 (the old holder) and attempt 3 (nobody) are fenced off
SELECT idem_complete('settle_refusals/ik003', 'k', attempt => 1);
SELECT idem_fail('settle_refusals/ik003', 'k', attempt => 1);
SELECT idem_checkpoint('settle_refusals/ik003', 'k', 'p', attempt => 1);
SELECT idem_complete('settle_refusals/ik003', 'k', attempt => 3);
-- the current holder settles
SELECT idem_checkpoint('settle_refusals/ik003', 'k', 'p', attempt => 2) IS NOT NULL AS checkpointed;
SELECT idem_complete('settle_refusals/ik003', 'k', attempt => 2);
-- the stale holder still learns that it was fenced off
SELECT idem_complete('settle_refusals/ik003', 'k', attempt => 1);
SELECT :check_row FROM idem_check('settle_refusals/ik003', 'k');

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'settle_refusals/%';
