-- purge_forget: idem_purge deletes expired records, idem_forget evicts a live one.
-- Pins: idem_purge(max_rows) deletes only expired records (never a live one, in progress or
-- completed), at most max_rows per call, and returns how many (bigint), 0 when none is
-- left; idem_forget is true for a live record (in progress or completed) and removes it,
-- false for an absent or expired key; a forgotten key starts afresh with any command.
-- max_rows below 1 (22023) is hostile_ranges'; NULL max_rows (22004) hostile_null's; purge
-- and forget against a concurrent begin are the isolation specs'; purge and forget by
-- another role are security's.
-- idem_purge deletes every expired record of the database: the first call clears what
-- other files may have left, so that the counts below are this file's own.
\set VERBOSITY sqlstate
\pset null (null)

-- purge_deletes_only_expired_records_within_max_rows: three expired, one live in progress,
-- one live completed; purge(2) deletes two, the next one, then none; the live two stay
SELECT idem_purge(1000000) >= 0 AS cleared;
SELECT count(*) AS claimed
  FROM unnest(ARRAY['e1', 'e2', 'e3']) AS k, LATERAL idem_begin('purge_forget/purge', k, '{}', ttl => '1 millisecond');
SELECT outcome FROM idem_begin('purge_forget/purge', 'live', '{}');
SELECT outcome FROM idem_begin('purge_forget/purge', 'done', '{}');
SELECT idem_complete('purge_forget/purge', 'done');
SELECT pg_sleep(0.01);
SELECT idem_purge(2);
SELECT count(*) FROM idempotency.records WHERE scope = 'purge_forget/purge';
SELECT idem_purge();
SELECT idem_purge();
SELECT string_agg(key, ',' ORDER BY key) AS kept FROM idempotency.records WHERE scope = 'purge_forget/purge';
SELECT pg_typeof(idem_purge());

-- forget_evicts_live_record_only: true for a live record in progress or completed (once),
-- false for an absent or expired key; a forgotten key is absent and starts afresh, with any
-- command
SELECT outcome FROM idem_begin('purge_forget/forget', 'live', '{"a": 1}');
SELECT outcome FROM idem_begin('purge_forget/forget', 'done', '{"a": 1}');
SELECT idem_complete('purge_forget/forget', 'done');
SELECT outcome FROM idem_begin('purge_forget/forget', 'old', '{"a": 1}', ttl => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT idem_forget('purge_forget/forget', 'live') AS live,
       idem_forget('purge_forget/forget', 'done') AS done;
SELECT idem_forget('purge_forget/forget', 'live') AS live_again,
       idem_forget('purge_forget/forget', 'absent') AS absent,
       idem_forget('purge_forget/forget', 'old') AS expired;
SELECT * FROM idem_check('purge_forget/forget', 'live');
SELECT * FROM idem_check('purge_forget/forget', 'done');
SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource
  FROM idem_begin('purge_forget/forget', 'done', '{"b": 2}');

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope LIKE 'purge_forget/%';
