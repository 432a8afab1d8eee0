-- read_only: in a read-only transaction every writing function is 25006
-- (read_only_sql_transaction), and idem_check still reads.
-- Pins: idem_begin (a new key and a live one), idem_complete, idem_fail, idem_checkpoint,
-- idem_purge and idem_forget are each refused with 25006; idem_check answers the record
-- and `absent` as usual. The same on a hot standby, with the standby's own message, is the
-- standby test's (scripts/standby-test.sh).
\set VERBOSITY sqlstate
\pset null (null)

-- writes_in_read_only_transaction_are_25006
SELECT outcome FROM idem_begin('read_only', 'k', '{"a": 1}');
SET default_transaction_read_only = on;
SHOW transaction_read_only;
SELECT idem_begin('read_only', 'new', '{"a": 1}');
SELECT idem_begin('read_only', 'k', '{"a": 1}');
SELECT idem_complete('read_only', 'k');
SELECT idem_fail('read_only', 'k');
SELECT idem_checkpoint('read_only', 'k', 'p');
SELECT idem_purge();
SELECT idem_forget('read_only', 'k');
-- reading works
SELECT state, matches, attempt, recovery_point, http_status, response, resource,
       created_at IS NOT NULL AS created, expires_at IS NOT NULL AS expires, lease_expires_at IS NOT NULL AS leased
  FROM idem_check('read_only', 'k', '{"a": 1}');
SELECT * FROM idem_check('read_only', 'new');
RESET default_transaction_read_only;

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope = 'read_only';
