-- settings_syntax: idempotency.ttl, lease and wait take interval syntax ('2 hours', '1 day', '90 s',
-- '01:30:00') and unit syntax ('2h', '500ms'); a bare number is in the unit of earlier
-- releases (ttl: seconds; lease, wait: milliseconds). A value PostgreSQL lets the extension
-- check is refused with 22023 when it is set; a value PostgreSQL stores unchecked (set before
-- the library is loaded) is kept as written and never replaced by the default: a call that
-- needs it fails with 22023 naming the setting, its value and where it was set.
-- Each \c starts a backend in which the library is not loaded yet; pg_settings lists the
-- settings only once it is (before, they are placeholders).
-- Roles are cluster-wide: the names are unique to this file and dropped at the end.
-- Each error is shown with its message, DETAIL and HINT, then its SQLSTATE (psql's
-- LAST_ERROR_SQLSTATE).
\set VERBOSITY default
SELECT idem_canonical('{}') AS loads_the_library;
-- (direct_access shows its built-in default: the suites run once with it off, on the SQL path.)
SELECT name, CASE name WHEN 'idempotency.direct_access' THEN boot_val ELSE setting END AS setting,
       vartype, context
  FROM pg_settings WHERE name LIKE 'idempotency.%' ORDER BY name;

-- After the library is loaded: every spelling, and what idem_begin makes of it
-- (expires_at - created_at is the ttl, lease_expires_at - created_at the lease, exactly).
CREATE FUNCTION pg_temp.claim(k text) RETURNS TABLE (ttl interval, lease interval)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM idem_begin('set', k, '{}');
    RETURN QUERY SELECT c.expires_at - c.created_at, c.lease_expires_at - c.created_at
                 FROM idem_check('set', k) c;
END
$$;
SET idempotency.ttl = '2 hours';
SHOW idempotency.ttl;
SELECT * FROM pg_temp.claim('ttl-2-hours');
SET idempotency.ttl = '1 day';
SELECT * FROM pg_temp.claim('ttl-1-day');
SET idempotency.ttl = '90 s';
SELECT * FROM pg_temp.claim('ttl-90-s');
SET idempotency.ttl = '2h';
SELECT * FROM pg_temp.claim('ttl-2h');
SET idempotency.ttl = 3600;
SHOW idempotency.ttl;
SELECT * FROM pg_temp.claim('ttl-bare');
SET idempotency.ttl = '1 day 12 hours';
SELECT * FROM pg_temp.claim('ttl-1-day-12-hours');
SET idempotency.ttl = '01:30:00';
SELECT * FROM pg_temp.claim('ttl-clock');
SET idempotency.ttl = '1.5h';
SELECT * FROM pg_temp.claim('ttl-fraction');
SET idempotency.ttl = '1 week';
SELECT * FROM pg_temp.claim('ttl-week');
SET idempotency.lease = '500ms';
SELECT * FROM pg_temp.claim('lease-500ms');
SET idempotency.lease = '90 s';
SELECT * FROM pg_temp.claim('lease-90-s');
SET idempotency.lease = 1500;
SELECT * FROM pg_temp.claim('lease-bare');
SET idempotency.lease = '2 minutes';
SELECT * FROM pg_temp.claim('lease-2-minutes');
SET idempotency.wait = '250ms';
SHOW idempotency.wait;
SET idempotency.wait = '2 seconds';
SHOW idempotency.wait;
SET idempotency.wait = 0;
-- an explicit argument wins over the setting
SELECT outcome FROM idem_begin('set', 'explicit', '{}', ttl => '5 minutes');
SELECT expires_at - created_at AS ttl FROM idem_check('set', 'explicit');

-- Invalid values are refused when set, and the value in force stays.
SET idempotency.ttl = '2 hourz';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = 'two hours';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = '';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = '1 day 2';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = 'P1D';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = '2 hours ago';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = '300000 years';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = 0;
\echo :LAST_ERROR_SQLSTATE
SET idempotency.ttl = '-1 h';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.lease = '0 s';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.wait = '-1ms';
\echo :LAST_ERROR_SQLSTATE
SELECT set_config('idempotency.ttl', 'soon', false);
\echo :LAST_ERROR_SQLSTATE
SHOW idempotency.ttl;
SHOW idempotency.lease;
SHOW idempotency.wait;
-- ALTER ROLE ... SET checks the value while the library is loaded
CREATE ROLE idem_set_role LOGIN;
ALTER ROLE idem_set_role SET idempotency.ttl = '2 hourz';
\echo :LAST_ERROR_SQLSTATE
ALTER ROLE idem_set_role SET idempotency.ttl = '90 s';
SELECT setconfig FROM pg_db_role_setting WHERE setrole = 'idem_set_role'::regrole;
-- only superusers may log refusals
SET ROLE idem_set_role;
SET idempotency.log_refusals = on;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Before the library is loaded: a valid value is used as written.
\c
SELECT count(*) AS loaded FROM pg_settings WHERE name = 'idempotency.ttl';
SET idempotency.ttl = '90 s';
SHOW idempotency.ttl;
SELECT count(*) AS loaded FROM pg_settings WHERE name = 'idempotency.ttl';
SELECT outcome FROM idem_begin('set', 'before-valid', '{}');
SELECT expires_at - created_at AS ttl FROM idem_check('set', 'before-valid');
SELECT count(*) AS loaded FROM pg_settings WHERE name = 'idempotency.ttl';

-- Before the library is loaded: an invalid value is kept, not replaced by 1 day; the calls
-- that need it fail and say why; the others work; a valid SET repairs it.
\c
SET idempotency.ttl = '2 hourz';
SELECT outcome FROM idem_begin('set', 'before-invalid', '{}');
\echo :LAST_ERROR_SQLSTATE
SHOW idempotency.ttl;
SELECT count(*) AS loaded FROM pg_settings WHERE name = 'idempotency.ttl';
SELECT outcome FROM idem_begin('set', 'before-invalid', '{}', ttl => '1 hour');
SELECT state FROM idem_check('set', 'before-invalid');
SET idempotency.ttl = '2 hours';
SELECT outcome FROM idem_begin('set', 'repaired', '{}');
SELECT expires_at - created_at AS ttl FROM idem_check('set', 'repaired');
-- SET LOCAL of an invalid value before the library is loaded, in a transaction
\c
BEGIN;
SET LOCAL idempotency.lease = 'forever';
SELECT outcome FROM idem_begin('set', 'local-invalid', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SHOW idempotency.lease;
SELECT outcome FROM idem_begin('set', 'local-invalid', '{}');

-- Per role: a value set by ALTER ROLE from a session without the library is not checked
-- then; the role's sessions keep it and refuse to use it.
\c
ALTER ROLE idem_set_role SET idempotency.lease = 'a while';
ALTER ROLE idem_set_role SET idempotency.wait = '100ms';
\c - idem_set_role
SHOW idempotency.lease;
SHOW idempotency.wait;
SHOW idempotency.ttl;
SELECT outcome FROM idem_begin('set-role', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT outcome FROM idem_begin('set-role', 'k', '{}', lease => '1 minute');
SELECT expires_at - created_at AS ttl FROM idem_check('set-role', 'k');
SET idempotency.lease = '1 minute';
SELECT outcome FROM idem_begin('set-role', 'k2', '{}');
RESET idempotency.lease;
SELECT outcome FROM idem_begin('set-role', 'k3', '{}');
\echo :LAST_ERROR_SQLSTATE
\c - postgres
ALTER ROLE idem_set_role RESET ALL;
DELETE FROM idempotency.records WHERE scope IN ('set', 'set-role');
DROP ROLE idem_set_role;
