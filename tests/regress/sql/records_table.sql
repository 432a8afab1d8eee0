-- records_table: how the table idempotency.records is registered and written.
-- Pins: pg_dump dumps its rows (it is in the extension's extconfig); a completion, a
-- checkpoint, a takeover, a failure and a retry each update the record in place as a HOT
-- update (no indexed column changes after the claim). That the rows really survive a dump
-- and restore is the dump test's (scripts/dump-test.sh); the table's privileges are
-- security's.
\set VERBOSITY sqlstate

-- records_table_is_dumped_as_extension_config
SELECT 'idempotency.records'::regclass = ANY (extconfig) AS dumped
  FROM pg_extension WHERE extname = 'idempotency';

-- completion_is_hot_update: counted with this transaction's own statistics, rolled back at
-- the end. Whether an update can be HOT also depends on room on the page, which other files
-- leave as they happen to: a lower fillfactor for this transaction only makes sure the new
-- versions have room, so that the count shows which columns change, not where earlier rows
-- ended.
BEGIN;
ALTER TABLE idempotency.records SET (fillfactor = 50);
SELECT outcome FROM idem_begin('records_table/hot', 'k', '{"a": 1}');
SELECT idem_checkpoint('records_table/hot', 'k', 'p', '{"x": 1}') IS NOT NULL AS checkpointed;
SELECT idem_complete('records_table/hot', 'k', '{"id": 1}', 'r/1', 201);
SELECT pg_stat_get_xact_tuples_inserted('idempotency.records'::regclass) AS inserted,
       pg_stat_get_xact_tuples_updated('idempotency.records'::regclass) AS updated,
       pg_stat_get_xact_tuples_hot_updated('idempotency.records'::regclass) AS hot_updated;
-- a takeover, a failure and a retry are HOT too
SELECT outcome FROM idem_begin('records_table/hot', 'f', '{"a": 1}', lease => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT outcome, attempt FROM idem_begin('records_table/hot', 'f', '{"a": 1}');
SELECT idem_fail('records_table/hot', 'f');
SELECT outcome, attempt FROM idem_begin('records_table/hot', 'f', '{"a": 1}');
SELECT pg_stat_get_xact_tuples_inserted('idempotency.records'::regclass) AS inserted,
       pg_stat_get_xact_tuples_updated('idempotency.records'::regclass) AS updated,
       pg_stat_get_xact_tuples_hot_updated('idempotency.records'::regclass) AS hot_updated;
ROLLBACK;
-- the table's own fillfactor (100) is back
SELECT reloptions FROM pg_class WHERE oid = 'idempotency.records'::regclass;
