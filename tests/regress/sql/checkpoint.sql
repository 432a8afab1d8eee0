-- checkpoint: idem_checkpoint records progress and renews the lease.
-- Pins: it returns the new lease end (timestamptz), the claim's lease from now, which is the
-- lease end stored; a holder that checkpoints keeps the key past its first lease; a holder
-- whose lease ran out but whom nobody took over may still checkpoint and complete; the last
-- checkpoint is what idem_check shows and what the next attempt resumes from (recovery
-- point and data; data may be NULL). Fencing of checkpoint (IK003) and checkpoint on a key
-- not in progress (IK002) are settle_refusals'; NULL arguments are hostile_null's.
\set VERBOSITY sqlstate
\pset null (null)
\set check_row 'state, matches, attempt, recovery_point, http_status, response, resource, created_at IS NOT NULL AS created, expires_at IS NOT NULL AS expires, lease_expires_at IS NOT NULL AS leased'

-- checkpoint_returns_and_renews_lease: the lease end returned is now + the claim's lease
-- (2 seconds), later than the one before, and exactly the one stored
SELECT outcome FROM idem_begin('checkpoint/lease', 'k', '{"a": 1}', lease => '2 seconds');
SELECT lease_expires_at AS l0 FROM idem_check('checkpoint/lease', 'k') \gset
SELECT pg_sleep(0.05);
SELECT l BETWEEN clock_timestamp() + interval '1.9 seconds' AND clock_timestamp() + interval '2 seconds' AS lease_from_now
  FROM idem_checkpoint('checkpoint/lease', 'k', 'step1') l;
SELECT lease_expires_at > :'l0' AS renewed FROM idem_check('checkpoint/lease', 'k');
-- (the stored lease end is read in a statement of its own: a sub-select would read under the
-- snapshot from before the checkpoint)
SELECT idem_checkpoint('checkpoint/lease', 'k', 'step2', attempt => 1) AS returned \gset
SELECT lease_expires_at = :'returned' AS returned_is_stored FROM idem_check('checkpoint/lease', 'k');
SELECT pg_typeof(idem_checkpoint('checkpoint/lease', 'k', 'step3'));

-- checkpoint_renewal_keeps_holder_past_first_lease: 1.2 s after a claim with a 1 s lease,
-- 0.6 s after a checkpoint, the lease holds: in progress
SELECT outcome FROM idem_begin('checkpoint/renews', 'k', '{"a": 1}', lease => '1 second');
SELECT pg_sleep(0.6);
SELECT idem_checkpoint('checkpoint/renews', 'k', 'step1') IS NOT NULL AS checkpointed;
SELECT pg_sleep(0.6);
SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource
  FROM idem_begin('checkpoint/renews', 'k', '{"a": 1}');

-- checkpoint_keeps_a_lease_that_ran_out_alive: nobody took over, so the holder may still
-- checkpoint (its attempt and point show) and complete
SELECT outcome FROM idem_begin('checkpoint/late', 'k', '{"a": 1}', lease => '10 milliseconds');
SELECT pg_sleep(0.02);
SELECT idem_checkpoint('checkpoint/late', 'k', 'step1', attempt => 1) IS NOT NULL AS checkpointed;
SELECT :check_row FROM idem_check('checkpoint/late', 'k');
SELECT idem_complete('checkpoint/late', 'k', attempt => 1);
SELECT :check_row FROM idem_check('checkpoint/late', 'k');

-- checkpoint_stores_recovery_point_for_check_and_next_attempt: the last checkpoint wins;
-- the next attempt resumes from it; a checkpoint without data stores none
SELECT outcome FROM idem_begin('checkpoint/data', 'k', '{"a": 1}', lease => '10 milliseconds');
SELECT idem_checkpoint('checkpoint/data', 'k', 'authorized', '{"auth": "a_1"}') IS NOT NULL AS checkpointed;
SELECT :check_row FROM idem_check('checkpoint/data', 'k');
SELECT idem_checkpoint('checkpoint/data', 'k', 'captured', '{"capture": "c_1"}', 1) IS NOT NULL AS checkpointed;
SELECT :check_row FROM idem_check('checkpoint/data', 'k');
SELECT recovery_point, recovery_data FROM idempotency.records WHERE scope = 'checkpoint/data';
SELECT pg_sleep(0.02);
SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource
  FROM idem_begin('checkpoint/data', 'k', '{"a": 1}');
SELECT idem_checkpoint('checkpoint/data', 'k', 'refunded', attempt => 2) IS NOT NULL AS checkpointed;
SELECT :check_row FROM idem_check('checkpoint/data', 'k');
SELECT recovery_point, recovery_data FROM idempotency.records WHERE scope = 'checkpoint/data';

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'checkpoint/%';
