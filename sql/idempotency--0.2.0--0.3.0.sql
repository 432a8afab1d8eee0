-- idempotency 0.2.0 -> 0.3.0 (run by ALTER EXTENSION idempotency UPDATE).
--
-- Every statement that changes an object of 0.2.0 (sql/releases/idempotency--0.2.0.sql) into
-- its 0.3.0 form (the SQL that `cargo pgrx install` generates for 0.3.0 from
-- sql/idempotency.sql) goes here, so that an upgraded database ends up with exactly the
-- objects of a fresh CREATE EXTENSION; scripts/upgrade-test.sh compares the two catalogs.
-- Records are data: a change of the table keeps every row and its meaning.
-- Each part of the release keeps its statements in a block of its own, marked BEGIN/END.
-- The parts that only create objects are not copied here: each \include_block line stands
-- for that block of 0.3.0's install script as released (sql/releases/idempotency--0.3.0.sql),
-- expanded by scripts/sql-include.py wherever the SQL is installed or packaged.

-- ============================================================================================
\include_block releases/idempotency--0.3.0.sql "scale-out on Citus"

-- ============================================================================================
\include_block releases/idempotency--0.3.0.sql "operations"
-- ============================================================================================

-- ============================================================================================
-- BEGIN hot path (0.3.0; docs/design.md, "The two paths of the store")
--
-- The C functions lose their SET search_path: the clause cost every call a GUC save and
-- restore, and nothing in them resolves a name on the caller's search_path (the direct path
-- runs no SQL; the SQL path's statements are schema-qualified, operators included).
-- ============================================================================================
ALTER FUNCTION idem_begin(text, text, jsonb, interval, interval, interval) RESET search_path;
ALTER FUNCTION idem_complete(text, text, jsonb, text, integer, integer) RESET search_path;
ALTER FUNCTION idem_fail(text, text, jsonb, boolean, integer, integer) RESET search_path;
ALTER FUNCTION idem_checkpoint(text, text, text, jsonb, integer) RESET search_path;
ALTER FUNCTION idem_check(text, text, jsonb) RESET search_path;
ALTER FUNCTION idem_purge(integer) RESET search_path;
ALTER FUNCTION idem_forget(text, text) RESET search_path;
-- END hot path

-- ============================================================================================
-- BEGIN roles (0.3.0; README, "Roles and grants")
--
-- pg_dump leaves out the records of roles that no longer exist (sql/idempotency.sql says
-- why): the dump registration gets a filter. Nothing else of the roles model is SQL: the
-- settings and the checks live in the library.
-- ============================================================================================
SELECT pg_catalog.pg_extension_config_dump('idempotency.records',
    'WHERE owner::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT r.oid FROM pg_catalog.pg_roles r))');
-- END roles
