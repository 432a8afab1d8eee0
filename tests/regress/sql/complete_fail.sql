-- complete_fail: what idem_complete and idem_fail store, with their defaults.
-- Pins: idem_complete stores http_status 200 and no response or resource by default,
-- returns void, accepts the status bounds 100 and 599, stores a response and a resource as
-- given, and drops the recovery point; idem_fail is retryable with status 500 by default,
-- returns void, and its retry is the next attempt. A stored failure replaying its error is
-- begin_decisions'; statuses outside 100..599 are hostile_ranges'; NULL arguments are
-- hostile_null's; refusals (IK002, IK003) are settle_refusals'.
\set VERBOSITY sqlstate
\pset null (null)
\set begin_row 'outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource'
\set check_row 'state, matches, attempt, recovery_point, http_status, response, resource, created_at IS NOT NULL AS created, expires_at IS NOT NULL AS expires, lease_expires_at IS NOT NULL AS leased'

-- complete_defaults_to_http_200_and_nulls: status 200, no response, no resource; the replay
-- answers the same; idem_complete returns void
SELECT outcome FROM idem_begin('complete_fail/defaults', 'k', '{"a": 1}');
SELECT idem_complete('complete_fail/defaults', 'k');
SELECT :check_row FROM idem_check('complete_fail/defaults', 'k');
SELECT :begin_row FROM idem_begin('complete_fail/defaults', 'k', '{"a": 1}');
SELECT pg_typeof(idem_complete('complete_fail/defaults', 'k2'))
  FROM idem_begin('complete_fail/defaults', 'k2', '{}');

-- complete_accepts_status_bounds_and_drops_recovery_point: 100 (with the attempt given) and
-- 599 (with a response and a resource) are stored as given; a completed record keeps no
-- recovery point
SELECT outcome FROM idem_begin('complete_fail/bounds', 'a', '{}');
SELECT outcome FROM idem_begin('complete_fail/bounds', 'b', '{}');
SELECT idem_checkpoint('complete_fail/bounds', 'a', 'step1', '{"s": 1}') IS NOT NULL AS checkpointed;
SELECT idem_complete('complete_fail/bounds', 'a', http_status => 100, attempt => 1);
SELECT idem_complete('complete_fail/bounds', 'b', '[1, "two"]', 'r/2', 599);
SELECT :check_row FROM idem_check('complete_fail/bounds', 'a');
SELECT :check_row FROM idem_check('complete_fail/bounds', 'b');

-- fail_defaults_to_retryable_500: status 500, no error stored, retryable: the next begin
-- executes attempt 2; idem_fail returns void
SELECT outcome FROM idem_begin('complete_fail/fail_defaults', 'k', '{"a": 1}');
SELECT idem_fail('complete_fail/fail_defaults', 'k');
SELECT :check_row FROM idem_check('complete_fail/fail_defaults', 'k');
SELECT :begin_row FROM idem_begin('complete_fail/fail_defaults', 'k', '{"a": 1}');
SELECT pg_typeof(idem_fail('complete_fail/fail_defaults', 'k2'))
  FROM idem_begin('complete_fail/fail_defaults', 'k2', '{}');

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'complete_fail/%';
