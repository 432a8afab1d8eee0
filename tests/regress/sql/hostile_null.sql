-- hostile_null: SQL NULL in every argument of every function.
-- Contract: NULL scope, key or command is 22004. Arguments that have a meaningful NULL
-- take their documented default (ttl/lease/wait: the settings; response, resource, error,
-- data: no value; attempt: no fencing; idem_check's command: matches is NULL); arguments
-- without one (http_status, retryable, recovery_point, max_rows) are 22004 as well.
-- idem_fingerprint and idem_canonical are STRICT: NULL in, NULL out.
-- Refused calls change nothing: each key is then used as usual. This file is the home of
-- what the #[pg_test] null_arguments_are_22004 pinned.
-- VERBOSITY sqlstate prints only the SQLSTATE of an error, so this file pins the codes.
\set VERBOSITY sqlstate

-- idem_begin(scope, key, command, ttl, lease, wait)
SELECT * FROM idem_begin(NULL, 'k', '{}');
SELECT * FROM idem_begin('null', NULL, '{}');
SELECT * FROM idem_begin('null', 'k', NULL);
SELECT * FROM idem_begin(NULL, NULL, NULL, NULL, NULL, NULL);
-- NULL ttl, lease, wait: the settings (24 hours, 1 minute, 0)
SELECT outcome, state, attempt,
       expires_at - clock_timestamp() BETWEEN interval '23 hours 59 minutes' AND interval '24 hours' AS ttl_is_24h
  FROM idem_begin('null', 'k-defaults', '{"a": 1}', NULL, NULL, NULL);
SELECT lease_expires_at - created_at BETWEEN interval '59 seconds' AND interval '61 seconds' AS lease_is_1min
  FROM idem_check('null', 'k-defaults');
-- a NULL command on a live key is 22004 too, not IK001
SELECT * FROM idem_begin('null', 'k-defaults', NULL);

-- idem_complete(scope, key, response, resource, http_status, attempt)
SELECT idem_complete(NULL, 'k-defaults');
SELECT idem_complete('null', NULL);
SELECT idem_complete('null', 'k-defaults', http_status => NULL);
-- NULL response, resource, attempt: stored as no value, no fencing; status defaults to 200
SELECT idem_complete('null', 'k-defaults', NULL, NULL, 200, NULL);
SELECT state, attempt, http_status, response, resource FROM idem_check('null', 'k-defaults');

-- idem_fail(scope, key, error, retryable, http_status, attempt)
SELECT outcome FROM idem_begin('null', 'k-fail', '{}');
SELECT idem_fail(NULL, 'k-fail');
SELECT idem_fail('null', NULL);
SELECT idem_fail('null', 'k-fail', retryable => NULL);
SELECT idem_fail('null', 'k-fail', http_status => NULL);
SELECT idem_fail('null', 'k-fail', NULL, true, 503, NULL);
SELECT state, attempt, http_status, response FROM idem_check('null', 'k-fail');

-- idem_checkpoint(scope, key, recovery_point, data, attempt)
SELECT outcome, attempt FROM idem_begin('null', 'k-fail', '{}');
SELECT idem_checkpoint(NULL, 'k-fail', 'p');
SELECT idem_checkpoint('null', NULL, 'p');
SELECT idem_checkpoint('null', 'k-fail', NULL);
SELECT idem_checkpoint('null', 'k-fail', 'p', NULL, NULL) > clock_timestamp() AS lease_renewed;
SELECT state, recovery_point FROM idem_check('null', 'k-fail');

-- idem_check(scope, key, command)
SELECT * FROM idem_check(NULL, 'k');
SELECT * FROM idem_check('null', NULL);
SELECT state, matches FROM idem_check('null', 'k-fail', NULL);
SELECT * FROM idem_check(NULL, NULL, NULL);

-- idem_fingerprint(command), idem_canonical(command): STRICT
SELECT idem_fingerprint(NULL) IS NULL AS fingerprint_of_null_is_null;
SELECT idem_canonical(NULL) IS NULL AS canonical_of_null_is_null;
-- a JSON null is a value, not SQL NULL
SELECT idem_canonical('null'), encode(idem_fingerprint('null'), 'hex') = encode(sha256('null'), 'hex') AS sha256_of_null_text;

-- idem_purge(max_rows)
SELECT idem_purge(NULL);

-- idem_forget(scope, key)
SELECT idem_forget(NULL, 'k');
SELECT idem_forget('null', NULL);
SELECT idem_forget('null', 'k-defaults'), idem_forget('null', 'k-fail');
