-- shape_changes: an operator's change to idempotency.records that the executor would act on
-- gets the executor's answer on both paths of the store.
-- Pins: resource SET NOT NULL makes a claim 23502 (nothing stored), and after DROP NOT NULL
-- the key executes, completes and replays; an identity column GENERATED ALWAYS on attempt
-- makes a claim 428C9; a row in an inheritance child of the table is found by idem_check
-- (the statements read children); a publication of the table with REPLICA IDENTITY NOTHING
-- makes idem_complete and idem_checkpoint 55000, even on an absent key (the executor checks
-- when an UPDATE starts), and a claim (an INSERT) and a replay still work; a TRUNCATE of the
-- table after a claim in the same transaction makes idem_complete IK002 (no record), and a
-- TRUNCATE rolled back to a savepoint leaves the claim to complete. Which path each change
-- sends a call to is access_paths' (DEBUG1); this file's output is the same on both.
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

-- not_null_on_a_nullable_column: the claim (resource NULL) is 23502 and stores nothing. In a
-- transaction rolled back at the end: SET NOT NULL needs a table without a NULL resource, and
-- other files leave records in progress (the DELETE is rolled back with the rest).
BEGIN;
DELETE FROM idempotency.records WHERE resource IS NULL;
ALTER TABLE idempotency.records ALTER COLUMN resource SET NOT NULL;
SELECT pg_temp.sqlstate_of($$SELECT idem_begin('shape_changes/not-null', 'k', '{}')$$) AS claim;
SELECT count(*) AS stored FROM idempotency.records WHERE scope = 'shape_changes/not-null';
ALTER TABLE idempotency.records ALTER COLUMN resource DROP NOT NULL;
-- the table as created again: the key executes, completes without a resource and replays
SELECT outcome, attempt FROM idem_begin('shape_changes/not-null', 'k', '{}');
SELECT idem_complete('shape_changes/not-null', 'k', http_status => 204);
SELECT outcome, http_status, resource FROM idem_begin('shape_changes/not-null', 'k', '{}');
ROLLBACK;

-- identity_column: GENERATED ALWAYS refuses the claim's attempt = 1 (428C9), stores nothing.
-- (Counted in the table: on the SQL path a backend's first call prepares every statement,
-- the INSERT too, so even idem_check would be 428C9 there.)
ALTER TABLE idempotency.records ALTER COLUMN attempt ADD GENERATED ALWAYS AS IDENTITY;
SELECT pg_temp.sqlstate_of($$SELECT idem_begin('shape_changes/identity', 'k', '{}')$$) AS claim;
SELECT count(*) AS stored FROM idempotency.records WHERE scope = 'shape_changes/identity';
ALTER TABLE idempotency.records ALTER COLUMN attempt DROP IDENTITY;
SELECT outcome, attempt FROM idem_begin('shape_changes/identity', 'k', '{}');

-- inheritance_child: a completed record in a child table is what idem_check reads
CREATE TABLE shape_changes_child () INHERITS (idempotency.records);
INSERT INTO shape_changes_child (created_at, expires_at, lease, owner, attempt, http_status,
                                 state, scope, key, fingerprint, resource)
  VALUES (now(), now() + interval '1 day', 60000000, current_user::regrole, 1, 201,
          'c', 'shape_changes/child', 'k', idem_fingerprint('{}'), 'payments/in-child');
SELECT state, matches, attempt, http_status, resource
  FROM idem_check('shape_changes/child', 'k', '{}');
DROP TABLE shape_changes_child;
-- without the child: absent (ANALYZE clears relhassubclass)
ANALYZE idempotency.records;
SELECT state FROM idem_check('shape_changes/child', 'k');

-- publication_without_replica_identity: an UPDATE of the table is refused (55000) where the
-- executor refuses it, before it looks for the row; INSERT and reads are not
SELECT outcome FROM idem_begin('shape_changes/publication', 'done', '{}');
SELECT idem_complete('shape_changes/publication', 'done', http_status => 201);
ALTER TABLE idempotency.records REPLICA IDENTITY NOTHING;
SET client_min_messages = error;  -- 14+ warn about wal_level; 13 does not
CREATE PUBLICATION shape_changes_pub FOR TABLE idempotency.records;
RESET client_min_messages;
SELECT outcome, attempt FROM idem_begin('shape_changes/publication', 'k', '{}');
SELECT pg_temp.sqlstate_of($$SELECT idem_complete('shape_changes/publication', 'k')$$) AS complete,
       pg_temp.sqlstate_of($$SELECT idem_checkpoint('shape_changes/publication', 'k', 'p')$$) AS checkpoint,
       pg_temp.sqlstate_of($$SELECT idem_complete('shape_changes/publication', 'absent')$$) AS complete_absent;
SELECT outcome, http_status FROM idem_begin('shape_changes/publication', 'done', '{}');
SELECT state, attempt, recovery_point FROM idem_check('shape_changes/publication', 'k');
DROP PUBLICATION shape_changes_pub;
ALTER TABLE idempotency.records REPLICA IDENTITY DEFAULT;
SELECT idem_complete('shape_changes/publication', 'k', http_status => 201);
SELECT state, http_status FROM idem_check('shape_changes/publication', 'k');

-- truncate_after_claim: the claim's row is gone with the table's storage: IK002
BEGIN;
SELECT outcome FROM idem_begin('shape_changes/truncate', 'k', '{}');
TRUNCATE idempotency.records;
SELECT idem_complete('shape_changes/truncate', 'k');
ROLLBACK;
-- a TRUNCATE rolled back to a savepoint gives the storage and the claim back
BEGIN;
SELECT outcome FROM idem_begin('shape_changes/truncate', 'k', '{}');
SAVEPOINT s;
TRUNCATE idempotency.records;
ROLLBACK TO SAVEPOINT s;
SELECT idem_complete('shape_changes/truncate', 'k', http_status => 201);
COMMIT;
SELECT state, http_status FROM idem_check('shape_changes/truncate', 'k');

DELETE FROM idempotency.records WHERE scope LIKE 'shape_changes/%';
