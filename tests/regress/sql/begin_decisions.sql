-- begin_decisions: the decision table of idem_begin, row by row, on committed records.
-- Pins, for each kind of record a request can find, the row idem_begin answers (outcome,
-- state, attempt, recovery point and data, http_status, response, resource, fingerprint,
-- expires_at) and what it leaves in the record (read back with idem_check):
--   none                          execute, in_progress, attempt 1, lease of idempotency.lease
--   expired, in any state         none: execute, attempt 1, any command, no recovery point
--   in_progress, lease holds      in_progress, 409; the record untouched
--   in_progress, lease ran out    execute, attempt + 1, recovery point kept, expiry kept
--   completed                     replay of status, response and resource; repeatable
--   failed, retryable             execute, attempt + 1, recovery point kept
--   failed, not retryable         replay, the stored error as the response
-- Each statement commits on its own, so every record here is committed; a claim that is not
-- yet committed, seen from another session, is the isolation specs' (tests/isolation). A
-- different command (IK001) is begin_mismatch's. Times are never printed: each is compared
-- with the clock as a boolean; short pg_sleeps let a ttl or lease run out.
\set VERBOSITY sqlstate
\pset null (null)
-- idem_begin's row without fingerprint and expires_at; idem_check's with its times as booleans
\set begin_row 'outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource'
\set check_row 'state, matches, attempt, recovery_point, http_status, response, resource, created_at IS NOT NULL AS created, expires_at IS NOT NULL AS expires, lease_expires_at IS NOT NULL AS leased'

-- claims_new_key_with_attempt_one: a new key is claimed: execute, attempt 1, nothing to
-- recover or replay
SELECT :begin_row FROM idem_begin('begin_decisions/new', 'k', '{"amount": "10.00", "currency": "EUR"}');
-- every column, the fingerprint (32 bytes, that of the command) and expires_at (now + ttl)
SELECT :begin_row,
       fingerprint = idem_fingerprint('{"amount": "10.00", "currency": "EUR"}') AS fingerprint_of_command,
       octet_length(fingerprint) AS fingerprint_bytes,
       expires_at BETWEEN clock_timestamp() + interval '2 hours' - interval '5 seconds'
                      AND clock_timestamp() + interval '2 hours' AS expires_in_ttl
  FROM idem_begin('begin_decisions/new', 'k2', '{"amount": "10.00", "currency": "EUR"}', ttl => '2 hours');
-- the record: in progress, attempt 1, the command matches in any member order, and the lease
-- of the setting (1 minute) runs
SELECT :check_row FROM idem_check('begin_decisions/new', 'k', '{"currency": "EUR", "amount": "10.00"}');
SELECT lease_expires_at BETWEEN clock_timestamp() + interval '55 seconds'
                            AND clock_timestamp() + interval '1 minute' AS lease_of_setting
  FROM idem_check('begin_decisions/new', 'k');

-- treats_expired_record_as_none_even_with_other_command: one expired record in each state
-- (in progress with its lease still holding, completed, failed for good, failed retryable,
-- and one that expired at once) counts as none: absent, then claimed afresh with another
-- command, attempt 1
SELECT count(*) AS claimed
  FROM unnest(ARRAY['p', 'c', 'f', 'r']) AS k,
       LATERAL idem_begin('begin_decisions/expired', k, '{"a": 1}', ttl => '500 milliseconds');
SELECT idem_complete('begin_decisions/expired', 'c', '{"id": 1}', 'x/1', 201);
SELECT idem_fail('begin_decisions/expired', 'f', '{"e": 1}', false, 402);
SELECT idem_fail('begin_decisions/expired', 'r', '{"e": 1}', true, 503);
SELECT outcome FROM idem_begin('begin_decisions/expired', 'q', '{"a": 1}', ttl => '1 millisecond');
-- treats_expired_checkpointed_record_as_none_without_recovery_point: (set up here, to share
-- the sleep) an expired record with a checkpoint
SELECT outcome FROM idem_begin('begin_decisions/expired_cp', 'k', '{"a": 1}', ttl => '500 milliseconds');
SELECT idem_checkpoint('begin_decisions/expired_cp', 'k', 'charged', '{"charge": "ch_1"}') IS NOT NULL AS checkpointed;
SELECT pg_sleep(0.6);
SELECT k, c.* FROM unnest(ARRAY['p', 'c', 'f', 'r', 'q']) WITH ORDINALITY AS k(k, i),
                   LATERAL idem_check('begin_decisions/expired', k) c ORDER BY i;
SELECT k, b.outcome, b.state, b.attempt, b.recovery_point, b.recovery_data, b.http_status, b.response, b.resource
  FROM unnest(ARRAY['p', 'c', 'f', 'r', 'q']) WITH ORDINALITY AS k(k, i),
       LATERAL idem_begin('begin_decisions/expired', k, '{"b": 2}') b ORDER BY i;
SELECT k, c.state, c.matches, c.attempt, c.recovery_point, c.http_status, c.response, c.resource,
       c.created_at IS NOT NULL AS created, c.expires_at IS NOT NULL AS expires, c.lease_expires_at IS NOT NULL AS leased
  FROM unnest(ARRAY['p', 'c', 'f', 'r', 'q']) WITH ORDINALITY AS k(k, i),
       LATERAL idem_check('begin_decisions/expired', k, '{"b": 2}') c ORDER BY i;
-- the new claim has a new expiry: the default ttl, one day
SELECT expires_at > clock_timestamp() + interval '23 hours' AS new_expiry
  FROM idem_check('begin_decisions/expired', 'c');
-- the expired checkpointed record: claimed afresh, the old recovery point is gone
SELECT :begin_row FROM idem_begin('begin_decisions/expired_cp', 'k', '{"a": 1}');

-- answers_in_progress_with_409_while_lease_holds: a committed claim whose lease holds is
-- in progress: 409, attempt 1, and the record is untouched (same expiry, same lease)
SELECT outcome FROM idem_begin('begin_decisions/lease_holds', 'k', '{"a": 1}');
SELECT :begin_row FROM idem_begin('begin_decisions/lease_holds', 'k', '{"a": 1}');
SELECT expires_at AS e0, lease_expires_at AS l0 FROM idem_check('begin_decisions/lease_holds', 'k') \gset
SELECT fingerprint = idem_fingerprint('{"a": 1}') AS fingerprint_of_command,
       expires_at = (SELECT expires_at FROM idem_check('begin_decisions/lease_holds', 'k')) AS expires_at_of_record
  FROM idem_begin('begin_decisions/lease_holds', 'k', '{"a": 1}');
SELECT expires_at = :'e0' AS same_expiry, lease_expires_at = :'l0' AS same_lease
  FROM idem_check('begin_decisions/lease_holds', 'k');
SELECT :check_row FROM idem_check('begin_decisions/lease_holds', 'k');

-- takes_over_after_lease_ran_out_keeping_recovery_point: a claim whose lease ran out is
-- taken over: execute, attempt 2, with the last checkpoint; the expiry stays that of the
-- first use, the new holder has a new lease (the setting: 1 minute)
SELECT outcome FROM idem_begin('begin_decisions/takeover', 'k', '{"a": 1}', lease => '10 milliseconds');
SELECT idem_checkpoint('begin_decisions/takeover', 'k', 'charged', '{"charge": "ch_1"}') IS NOT NULL AS checkpointed;
SELECT expires_at AS e0 FROM idem_check('begin_decisions/takeover', 'k') \gset
SELECT pg_sleep(0.02);
SELECT :begin_row,
       fingerprint = idem_fingerprint('{"a": 1}') AS fingerprint_of_command,
       expires_at = (SELECT expires_at FROM idem_check('begin_decisions/takeover', 'k')) AS expires_at_of_record
  FROM idem_begin('begin_decisions/takeover', 'k', '{"a": 1}');
SELECT expires_at = :'e0' AS expiry_of_first_use,
       lease_expires_at > clock_timestamp() + interval '50 seconds' AS new_lease
  FROM idem_check('begin_decisions/takeover', 'k');
SELECT :check_row FROM idem_check('begin_decisions/takeover', 'k');
-- the new holder holds it now
SELECT :begin_row FROM idem_begin('begin_decisions/takeover', 'k', '{"a": 1}');

-- replays_completed_command: a completed key replays its status, response and resource,
-- for the same command in any member order; the replay changes nothing and repeats
SELECT outcome FROM idem_begin('begin_decisions/replay', 'k', '{"amount": "10.00", "currency": "EUR"}');
SELECT idem_complete('begin_decisions/replay', 'k', '{"id": 981, "status": "paid"}',
                     resource => 'payments/981', http_status => 201);
SELECT :begin_row FROM idem_begin('begin_decisions/replay', 'k', '{"currency": "EUR", "amount": "10.00"}');
SELECT fingerprint = idem_fingerprint('{"amount": "10.00", "currency": "EUR"}') AS fingerprint_of_command,
       expires_at = (SELECT expires_at FROM idem_check('begin_decisions/replay', 'k')) AS expires_at_of_record
  FROM idem_begin('begin_decisions/replay', 'k', '{"amount": "10.00", "currency": "EUR"}');
SELECT :begin_row FROM idem_begin('begin_decisions/replay', 'k', '{"amount": "10.00", "currency": "EUR"}');

-- retries_retryable_failure_as_next_attempt: a retryable failure is re-executed as the next
-- attempt, from the last checkpoint; failed again, retried again: attempt 3
SELECT outcome FROM idem_begin('begin_decisions/retryable', 'k', '{"a": 1}');
SELECT idem_checkpoint('begin_decisions/retryable', 'k', 'authorized', '{"auth": "a_1"}') IS NOT NULL AS checkpointed;
SELECT idem_fail('begin_decisions/retryable', 'k', '{"error": "timeout"}', retryable => true, http_status => 503);
SELECT :check_row FROM idem_check('begin_decisions/retryable', 'k');
SELECT :begin_row FROM idem_begin('begin_decisions/retryable', 'k', '{"a": 1}');
SELECT :check_row FROM idem_check('begin_decisions/retryable', 'k');
SELECT idem_fail('begin_decisions/retryable', 'k', attempt => 2);
SELECT :begin_row FROM idem_begin('begin_decisions/retryable', 'k', '{"a": 1}');

-- replays_final_failure_with_error_as_response: a failure that is not retryable replays,
-- its error as the response
SELECT outcome FROM idem_begin('begin_decisions/final_failure', 'k', '{"a": 1}');
SELECT idem_fail('begin_decisions/final_failure', 'k', '{"code": "card_declined"}', retryable => false, http_status => 402);
SELECT :begin_row FROM idem_begin('begin_decisions/final_failure', 'k', '{"a": 1}');
SELECT fingerprint = idem_fingerprint('{"a": 1}') AS fingerprint_of_command,
       expires_at = (SELECT expires_at FROM idem_check('begin_decisions/final_failure', 'k')) AS expires_at_of_record
  FROM idem_begin('begin_decisions/final_failure', 'k', '{"a": 1}');
SELECT :check_row FROM idem_check('begin_decisions/final_failure', 'k');

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'begin_decisions/%';
