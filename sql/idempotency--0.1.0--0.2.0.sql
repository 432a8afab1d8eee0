-- idempotency 0.1.0 -> 0.2.0 (run by ALTER EXTENSION idempotency UPDATE).
--
-- Every statement that changes an object of 0.1.0 (sql/releases/idempotency--0.1.0.sql) into
-- its 0.2.0 form (the SQL that `cargo pgrx install` generates for 0.2.0 from
-- sql/idempotency.sql) goes here, so that an upgraded database ends up with exactly the
-- objects of a fresh CREATE EXTENSION; scripts/upgrade-test.sh compares the two catalogs.
-- Records are data: a change of the table keeps every row and its meaning.
--
-- 0.2.0 changes only the record table's physical settings (README, Performance); the
-- function declarations and every row stay as they are.

-- The CHECK on state was planned again at the start of every INSERT and UPDATE (about
-- 31,000 instructions each); only the extension's own statements write the column.
ALTER TABLE idempotency.records DROP CONSTRAINT records_state_check;

-- fillfactor 70 -> 100 (a page keeps room for the HOT updates by pruning, at nearly twice
-- the density). It applies to pages filled from now on; existing pages keep their rows.
ALTER TABLE idempotency.records SET (fillfactor = 100);
