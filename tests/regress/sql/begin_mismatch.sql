-- begin_mismatch: the same key with a different command is IK001, in every state of a live
-- record, and the refusal changes nothing. Pins the error's texts (message, DETAIL with
-- scope, key, first use and both fingerprints' first 8 hex digits, HINT), and that numbers
-- in a command compare by exact value: neighbouring large integers, digits beyond a
-- double's precision and numeric strings differ; spellings of one value replay.
-- What the canonical form makes of each number is fingerprint_canonical's and
-- hostile_numbers'; an expired record with another command is begin_decisions'.
\set VERBOSITY sqlstate
\pset null (null)
-- the SQLSTATE a statement raises, or NULL (it runs in a subtransaction)
CREATE FUNCTION pg_temp.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;
-- runs a statement and raises its error again with `mask` in the DETAIL replaced by `label`
CREATE FUNCTION pg_temp.masked_error(sql text, mask text, label text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  code text; m text; d text; h text;
BEGIN
  BEGIN
    EXECUTE sql;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL,
                            h = PG_EXCEPTION_HINT;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = m, DETAIL = replace(d, mask, label), HINT = h;
  END;
  RAISE NOTICE 'no error';
END $$;

-- rejects_same_key_with_other_command_in_every_state: in progress with its lease holding,
-- in progress with its lease run out, completed, failed retryable, failed for good: another
-- amount is IK001, and so is an extra member (even a null one)
SELECT outcome FROM idem_begin('begin_mismatch/states', 'p', '{"amount": 10}');
SELECT outcome FROM idem_begin('begin_mismatch/states', 'o', '{"amount": 10}', lease => '1 millisecond');
SELECT outcome FROM idem_begin('begin_mismatch/states', 'c', '{"amount": 10}');
SELECT idem_complete('begin_mismatch/states', 'c');
SELECT outcome FROM idem_begin('begin_mismatch/states', 'r', '{"amount": 10}');
SELECT idem_fail('begin_mismatch/states', 'r');
SELECT outcome FROM idem_begin('begin_mismatch/states', 'f', '{"amount": 10}');
SELECT idem_fail('begin_mismatch/states', 'f', retryable => false);
SELECT pg_sleep(0.01);
SELECT k,
       pg_temp.sqlstate_of(format($$SELECT idem_begin('begin_mismatch/states', %L, '{"amount": 11}')$$, k)) AS other_amount,
       pg_temp.sqlstate_of(format($$SELECT idem_begin('begin_mismatch/states', %L, '{"amount": 10, "x": null}')$$, k)) AS extra_member
  FROM unnest(ARRAY['p', 'o', 'c', 'r', 'f']) WITH ORDINALITY AS k(k, i) ORDER BY i;
-- nothing changed: each record in its state, attempt 1
SELECT k, c.state, c.attempt
  FROM unnest(ARRAY['c', 'f', 'o', 'p', 'r']) AS k, LATERAL idem_check('begin_mismatch/states', k) c
 ORDER BY k;

-- reports_command_mismatch_with_detail_and_hint: the message names the key; DETAIL names
-- the scope, the key, when it was first used (created_at, shown as <created_at>) and the
-- first 8 hex digits of both fingerprints; HINT says to use a new key
SELECT outcome FROM idem_begin('begin_mismatch/texts', 'k-123', '{"amount": "10.00"}');
SELECT * FROM idem_begin('begin_mismatch/texts', 'k-123', '{"amount": "11.00"}');
SELECT encode(substring(idem_fingerprint('{"amount": "10.00"}') for 4), 'hex') AS stored,
       encode(substring(idem_fingerprint('{"amount": "11.00"}') for 4), 'hex') AS given;
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT pg_temp.masked_error($$SELECT idem_begin('begin_mismatch/texts', 'k-123', '{"amount": "11.00"}')$$,
                            (SELECT created_at::text FROM idem_check('begin_mismatch/texts', 'k-123')),
                            '<created_at>');
\set VERBOSITY sqlstate
\set SHOW_CONTEXT errors

-- rejects_same_key_with_neighbouring_large_integer: 12345678901234567891 and
-- 12345678901234567890 are one double but two commands: IK001 while in progress and once
-- completed, and the first command still replays; likewise digits beyond a double's
-- precision at the far end of a fraction
SELECT outcome FROM idem_begin('begin_mismatch/precision', 'int', '{"amount": 12345678901234567891}');
SELECT * FROM idem_begin('begin_mismatch/precision', 'int', '{"amount": 12345678901234567890}');
SELECT idem_complete('begin_mismatch/precision', 'int');
SELECT * FROM idem_begin('begin_mismatch/precision', 'int', '{"amount": 12345678901234567890}');
SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource
  FROM idem_begin('begin_mismatch/precision', 'int', '{"amount": 12345678901234567891}');
SELECT outcome FROM idem_begin('begin_mismatch/precision', 'frac', '{"amount": 0.1000000000000000000001}');
SELECT * FROM idem_begin('begin_mismatch/precision', 'frac', '{"amount": 0.1}');

-- rejects_numeric_strings_that_differ: strings are compared as strings ("10.00" is not
-- "10.0"), and a string is not the number it spells
SELECT outcome FROM idem_begin('begin_mismatch/strings', 'k', '{"amount": "10.00"}');
SELECT idem_complete('begin_mismatch/strings', 'k');
SELECT * FROM idem_begin('begin_mismatch/strings', 'k', '{"amount": "10.0"}');
SELECT * FROM idem_begin('begin_mismatch/strings', 'k', '{"amount": 10.00}');

-- replays_numbers_equal_in_value: numbers equal in value are one command, whatever their
-- spelling (trailing zeros, exponents) and member order: each replays
SELECT outcome FROM idem_begin('begin_mismatch/numbers', 'k', '{"amount": 10.00, "fee": 1.5e0}');
SELECT idem_complete('begin_mismatch/numbers', 'k', '{"id": 7}', http_status => 201);
SELECT c AS command, b.outcome, b.state, b.attempt, b.recovery_point, b.recovery_data, b.http_status, b.response, b.resource
  FROM unnest(ARRAY['{"amount": 10, "fee": 1.5}', '{"fee": 15e-1, "amount": 1e1}',
                    '{"amount": 10.000000, "fee": 1.50}']) WITH ORDINALITY AS c(c, i),
       LATERAL idem_begin('begin_mismatch/numbers', 'k', c::jsonb) b ORDER BY i;

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'begin_mismatch/%';
