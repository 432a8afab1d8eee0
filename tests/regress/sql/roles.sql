-- roles: what a role may set, how long it may hold a key, who may evict it, what a dropped
-- role leaves behind, and who may call what.
-- Contract: no role can hold a key beyond a ttl ceiling that only a superuser sets:
-- idempotency.max_ttl (30 days by default) refuses a longer ttl, given or from
-- idempotency.ttl, with 22023 and a HINT naming it, never clamping it, and however long
-- (1,000,000 years, infinity); a lease needs no ceiling, since an expired record counts as
-- none whatever its lease. Only superusers set idempotency.max_ttl, max_command_size and
-- max_response_size: anyone else's SET, set_config or ALTER ROLE ... SET is 42501, and a value
-- a non-superuser set before the library was loaded is dropped with a WARNING (42501) when it
-- loads. idem_forget evicts a live key of a role the caller may act as or administers (ADMIN
-- OPTION, also through a role it is a member of); anyone else gets 42501, superusers may
-- evict any key. A dropped role's records are read by no other role, not by a new role of the
-- same name either. PUBLIC may execute the API and select idem_keys, not idem_stats,
-- idem_stats_reset, idem_distribute or the purge internals; pg_monitor may call idem_stats.
-- ADMIN OPTION without the right to act as the role (PostgreSQL 16 and later) is
-- roles_admin's; a dropped role's records across pg_dump and a restore are the dump test's
-- (scripts/dump-test.sh).
-- Roles are cluster-wide: the names are this file's own, dropped at the end.
\set VERBOSITY sqlstate
\pset null (null)
SELECT current_user AS superuser \gset
SELECT state FROM idem_check('roles', 'load');

-- who may set what
SELECT name, setting, unit, context FROM pg_settings
 WHERE name IN ('idempotency.max_ttl', 'idempotency.max_command_size', 'idempotency.max_response_size',
                'idempotency.log_refusals', 'idempotency.ttl', 'idempotency.lease', 'idempotency.wait')
 ORDER BY context, name;

CREATE ROLE idem_roles_app LOGIN;
CREATE ROLE idem_roles_mallory LOGIN;
CREATE ROLE idem_roles_ops;                     -- administers app
CREATE ROLE idem_roles_oncall;                  -- a member of ops: administers app through it
GRANT idem_roles_app TO idem_roles_ops WITH ADMIN OPTION;
GRANT idem_roles_ops TO idem_roles_oncall;

-- A non-superuser cannot raise the limits that protect the database, in any form.
SET ROLE idem_roles_mallory;
SET idempotency.max_response_size = '1GB';
SET idempotency.max_command_size = '1GB';
SET idempotency.max_ttl = '100 years';
SELECT set_config('idempotency.max_response_size', '1GB', false);
SELECT set_config('idempotency.max_ttl', '100 years', true);
ALTER ROLE idem_roles_mallory SET idempotency.max_response_size = '1GB';
ALTER ROLE idem_roles_mallory SET idempotency.max_ttl = '100 years';
SHOW idempotency.max_response_size;
SHOW idempotency.max_command_size;
SHOW idempotency.max_ttl;
-- so a response over the limit stays refused
SELECT outcome FROM idem_begin('roles', 'big', '{}');
SELECT idem_complete('roles', 'big', response => jsonb_build_object('pad', repeat('x', 1048576)));

-- Squatting another role's key for ever: a ttl beyond idempotency.max_ttl is refused, however
-- long, and claims nothing.
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '1000000 years');
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '178000000 years', lease => '1 second');
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '30 days 00:00:00.000001');
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '1 mon 1 day');
-- infinity where the interval type has it (17 and later), else the longest one
SELECT CASE WHEN current_setting('server_version_num')::int >= 170000 THEN 'infinity'
            ELSE '178000000 years' END AS endless \gset
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => :'endless');
-- the message names the ceiling and who may raise it
\set VERBOSITY default
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '1000000 years');
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '31 days');
\set VERBOSITY sqlstate
SELECT state FROM idem_check('roles', 'order-1');
-- idempotency.ttl is any role's to set, but a value beyond the ceiling is refused where it is
-- used, with the setting named
SET idempotency.ttl = '60 days';
SHOW idempotency.ttl;
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}');
\set VERBOSITY default
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}');
\set VERBOSITY sqlstate
-- an explicit ttl within the ceiling still works with it
SELECT outcome FROM idem_begin('roles', 'own-1', '{}', ttl => '1 hour');
RESET idempotency.ttl;
SELECT state FROM idem_check('roles', 'order-1');
-- at the ceiling: 30 days, one interval month, with an endless lease
SELECT outcome FROM idem_begin('roles', 'order-1', '{"amount": 10}', ttl => '1 mon', lease => '1000000 years');
SELECT state, expires_at - created_at AS ttl, lease_expires_at = 'infinity' AS endless_lease
  FROM idem_check('roles', 'order-1');
-- an endless lease holds no key past its ttl: expired, the key is the next request's
SELECT outcome FROM idem_begin('roles', 'lease-1', '{}', ttl => '10 milliseconds', lease => '1000000 years');
SELECT pg_sleep(0.05);
RESET ROLE;
-- the application's role: mallory holds order-1 (for 30 days at most); lease-1 is free again
SET ROLE idem_roles_app;
SELECT * FROM idem_begin('roles', 'order-1', '{"amount": 10}');
SELECT outcome, attempt FROM idem_begin('roles', 'lease-1', '{}');
RESET ROLE;
-- app's administrators do not administer mallory: they cannot evict her key
SET ROLE idem_roles_ops;
SELECT idem_forget('roles', 'order-1');
RESET ROLE;
-- a superuser can, and the key is the application's again
SELECT idem_forget('roles', 'order-1') AS evicted_by_superuser;
SET ROLE idem_roles_app;
SELECT outcome, attempt FROM idem_begin('roles', 'order-1', '{"amount": 10}');
RESET ROLE;

-- A superuser may raise the ceiling (here for the session; per role, per database and by
-- ALTER SYSTEM as well) and lower it; a lowered ceiling applies to the ttl already in force.
SET idempotency.max_ttl = '400 days';
SELECT outcome FROM idem_begin('roles', 'year', '{}', ttl => '1 year');
SELECT expires_at - created_at AS ttl FROM idem_check('roles', 'year');
SET idempotency.ttl = '20 days';
SET idempotency.max_ttl = '10 days';
SELECT * FROM idem_begin('roles', 'lowered', '{}');
SELECT outcome FROM idem_begin('roles', 'lowered', '{}', ttl => '10 days');
RESET idempotency.ttl;
RESET idempotency.max_ttl;
SHOW idempotency.max_ttl;
-- max_ttl takes a positive duration
SET idempotency.max_ttl = 0;
SET idempotency.max_ttl = '-1 day';
SET idempotency.max_ttl = 'a month';
SET idempotency.max_ttl = 2592000;
SHOW idempotency.max_ttl;
RESET idempotency.max_ttl;
-- a role's ttl beyond the ceiling, set by a superuser (PostgreSQL applies it at connection,
-- unchecked against the ceiling): refused where it is used
ALTER ROLE idem_roles_app SET idempotency.ttl = '60 days';
\c - idem_roles_app
SHOW idempotency.ttl;
SELECT * FROM idem_begin('roles', 'role-ttl', '{}');
SELECT outcome FROM idem_begin('roles', 'role-ttl', '{}', ttl => '1 day');
-- a value mallory set before the library was loaded is a placeholder PostgreSQL could not
-- check; when the library loads it is dropped with a WARNING, and the default stays
\c - idem_roles_mallory
SET idempotency.max_response_size = '1GB';
SET idempotency.max_ttl = '100 years';
SELECT state FROM idem_check('roles', 'load');
SHOW idempotency.max_response_size;
SHOW idempotency.max_ttl;
\c - :superuser
ALTER ROLE idem_roles_app RESET ALL;

-- Eviction: idem_forget takes a live key of a role the caller may act as or administers.
SET ROLE idem_roles_app;
SELECT outcome FROM idem_begin('roles', 'k-stuck', '{"amount": 1}', lease => '1 hour');
SELECT outcome FROM idem_begin('roles', 'k-done', '{"amount": 2}');
SELECT idem_complete('roles', 'k-done', response => '{"card": "4111"}', http_status => 201);
RESET ROLE;
-- neither a member of app nor its administrator: 42501, and the DETAIL says both
SET ROLE idem_roles_mallory;
SELECT idem_forget('roles', 'k-stuck');
\set VERBOSITY default
SELECT idem_forget('roles', 'k-done');
\set VERBOSITY sqlstate
RESET ROLE;
-- ADMIN OPTION, held through a role the caller is a member of
SET ROLE idem_roles_oncall;
SELECT idem_forget('roles', 'k-stuck') AS evicted;
SELECT idem_forget('roles', 'k-stuck') AS again;
RESET ROLE;
-- ADMIN OPTION held directly; an absent key is false
SET ROLE idem_roles_ops;
SELECT idem_forget('roles', 'k-done') AS evicted;
SELECT idem_forget('roles', 'k-nobody') AS absent;
RESET ROLE;
-- the keys are new again, for their role
SET ROLE idem_roles_app;
SELECT outcome, attempt FROM idem_begin('roles', 'k-stuck', '{"amount": 1}');
SELECT outcome, attempt FROM idem_begin('roles', 'k-done', '{"amount": 2}');
RESET ROLE;

-- A dropped role's records: DROP ROLE succeeds (owner is a regrole, which records no
-- dependency), its records stay with the bare oid until they expire, and no other role reads
-- them, not even a new role of the same name.
CREATE ROLE idem_roles_gone;
SET ROLE idem_roles_gone;
SELECT outcome FROM idem_begin('roles', 'k-gone', '{"amount": 3}');
SELECT idem_complete('roles', 'k-gone', response => '{"card": "5500"}', resource => 'payments/3');
RESET ROLE;
DROP ROLE idem_roles_gone;
SELECT owner::text ~ '^[0-9]+$' AS bare_oid, state FROM idempotency.records WHERE scope = 'roles' AND key = 'k-gone';
CREATE ROLE idem_roles_gone;
SET ROLE idem_roles_gone;
SELECT * FROM idem_check('roles', 'k-gone');
SELECT * FROM idem_begin('roles', 'k-gone', '{"amount": 3}');
SELECT idem_forget('roles', 'k-gone');
SELECT count(*) AS keys_listed FROM idem_keys WHERE scope = 'roles' AND key = 'k-gone';
RESET ROLE;
SET ROLE idem_roles_mallory;
SELECT * FROM idem_check('roles', 'k-gone');
RESET ROLE;
SET ROLE idem_roles_ops;
SELECT idem_forget('roles', 'k-gone');
RESET ROLE;
-- a superuser can still evict it
SELECT idem_forget('roles', 'k-gone') AS evicted_by_superuser;

-- Who may call what: PUBLIC executes the API (and selects idem_keys); idem_stats is
-- pg_monitor's; idem_stats_reset, idem_distribute and the purge internals are superusers'.
SELECT p.oid::regprocedure AS function,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public,
       has_function_privilege('pg_monitor', p.oid, 'EXECUTE') AS pg_monitor
  FROM pg_depend d
  JOIN pg_proc p ON p.oid = d.objid
 WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
   AND d.deptype = 'e' AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')
 ORDER BY p.pronamespace = 'idempotency'::regnamespace, public DESC, pg_monitor DESC, p.oid::regprocedure::text;
SELECT has_table_privilege('public', 'idem_keys', 'SELECT') AS public_selects_idem_keys;

-- leave nothing behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope = 'roles';
DROP ROLE idem_roles_oncall, idem_roles_ops, idem_roles_app, idem_roles_mallory, idem_roles_gone;
