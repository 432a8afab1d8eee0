-- idempotency 0.3.0 -> 0.4.0 (run by ALTER EXTENSION idempotency UPDATE).
--
-- Every statement that changes an object of 0.3.0 (sql/releases/idempotency--0.3.0.sql) into
-- its 0.4.0 form (the SQL that `cargo pgrx install` generates for 0.4.0 from
-- sql/idempotency.sql) goes here, so that an upgraded database ends up with exactly the
-- objects of a fresh CREATE EXTENSION; scripts/upgrade-test.sh compares the two catalogs.
-- Records are data: a change of the table keeps every row and its meaning.
-- Each \include_block line stands for that block of 0.4.0's install script (until 0.4.0 is
-- released, sql/idempotency.sql; then sql/releases/idempotency--0.4.0.sql), expanded by
-- scripts/sql-include.py wherever the SQL is installed or packaged.

-- ============================================================================================
-- result types (0.4.0; docs/design.md, "Versions of the SQL")
--
-- idem_begin and idem_check return named composite types instead of OUT parameters, and
-- idem_check gains the stored fingerprint as its last column. A function's result type cannot
-- be changed in place (CREATE OR REPLACE refuses it), so both are dropped and created again:
-- privileges granted or revoked on them by hand, and views or functions that depend on them,
-- do not survive (a dependent object makes the update fail, changing nothing). On Citus, run
-- idem_distribute() again afterwards, as after every update. The library of 0.4.0 serves
-- both versions' SQL: until this runs, a database keeps 0.3.0's idem_check (C symbol
-- idem_check, ten columns); after it, 0.4.0's (idem_check_0_4, eleven).
-- ============================================================================================
DROP FUNCTION idem_begin(text, text, jsonb, interval, interval, interval);
DROP FUNCTION idem_check(text, text, jsonb);

\include_block idempotency.sql "result types"
