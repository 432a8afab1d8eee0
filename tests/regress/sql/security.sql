-- security: two ordinary roles and an attacker's search_path.
-- Contract: a record belongs to the role that created it; another role (not a member of it,
-- not a superuser) can neither read nor change it through any function (42501), nor reach
-- the table directly (42501); the table grants nothing to PUBLIC. Objects an attacker
-- places earlier in search_path (a function named like a builtin, an operator = on text, a
-- table named records) change nothing: the extension schema-qualifies everything and pins
-- search_path; the attacker's function would write to a log table, which stays empty.
-- A member of the owning role may use the record; an expired record counts as none for
-- every role, so another role may claim the key afresh (and then owns it).
-- Roles are cluster-wide: the names are unique to this file and dropped at the end.
-- This file is the home of what the #[pg_test]s other_role_gets_42501_from_every_function,
-- other_role_may_reuse_expired_key, member_of_owner_role_may_use_record and
-- records_table_grants_nothing_to_public pinned.
\set VERBOSITY sqlstate
CREATE ROLE idem_sec_alice LOGIN;
CREATE ROLE idem_sec_mallory LOGIN;
CREATE ROLE idem_sec_alice_team;                 -- alice's team: a member of alice
GRANT idem_sec_alice TO idem_sec_alice_team;
GRANT CREATE ON SCHEMA public TO idem_sec_mallory;
DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO idem_sec_mallory', current_database()); END $$;
CREATE TABLE public.idem_sec_calls (who text, what text);   -- the attacker's trap log
GRANT INSERT, SELECT ON public.idem_sec_calls TO PUBLIC;

-- alice's records: one in progress, one completed
SET ROLE idem_sec_alice;
SELECT outcome, attempt FROM idem_begin('sec', 'k-open', '{"amount": 10}');
SELECT outcome FROM idem_begin('sec', 'k-done', '{"amount": 20}');
SELECT idem_complete('sec', 'k-done', response => '{"card": "4111 1111 1111 1111"}', resource => 'payments/7', http_status => 201);
-- and one that expires at once, and one for her team (below)
SELECT outcome FROM idem_begin('sec', 'k-expiring', '{"amount": 1}', ttl => '1 millisecond');
SELECT outcome FROM idem_begin('sec', 'k-team', '{"amount": 5}');
RESET ROLE;

-- mallory: every function on alice's keys is 42501, and reveals nothing
SET ROLE idem_sec_mallory;
SELECT * FROM idem_check('sec', 'k-open');
SELECT * FROM idem_check('sec', 'k-done');
SELECT * FROM idem_check('sec', 'k-done', '{"amount": 20}');
SELECT * FROM idem_check('sec', 'k-open', '{"amount": 10}');
SELECT * FROM idem_begin('sec', 'k-open', '{"amount": 10}');
SELECT * FROM idem_begin('sec', 'k-done', '{"amount": 20}');
SELECT * FROM idem_begin('sec', 'k-done', '{"amount": 999}');    -- 42501, not IK001: not even the command leaks
SELECT * FROM idem_begin('sec', 'k-open', '{"amount": 999}');
SELECT idem_complete('sec', 'k-open', resource => 'stolen', http_status => 200);
SELECT idem_complete('sec', 'k-open', attempt => 1);
SELECT idem_fail('sec', 'k-open', retryable => false);
SELECT idem_checkpoint('sec', 'k-open', 'p');
-- on the completed key too: 42501, not IK002 (its state is not revealed either)
SELECT idem_complete('sec', 'k-done');
SELECT idem_fail('sec', 'k-done');
SELECT idem_checkpoint('sec', 'k-done', 'p');
SELECT idem_forget('sec', 'k-open');
SELECT idem_forget('sec', 'k-done');
-- a key nobody has is mallory's to claim; absent keys say absent
SELECT state FROM idem_check('sec', 'k-nobody');
-- the table itself: every privilege is refused
SELECT * FROM idempotency.records;
SELECT count(*) FROM idempotency.records;
UPDATE idempotency.records SET owner = 'idem_sec_mallory';
DELETE FROM idempotency.records;
TRUNCATE idempotency.records;
INSERT INTO idempotency.records (scope, key) VALUES ('sec', 'forged');
COPY idempotency.records TO STDOUT;
-- a key of her own works as usual
SELECT outcome, state, attempt FROM idem_begin('sec', 'k-mallory', '{"amount": 1}');
-- alice's expired key counts as none, for mallory too (no 42501): absent, nothing to
-- forget, hers to claim with any command
SELECT pg_sleep(0.01);
SELECT * FROM idem_check('sec', 'k-expiring');
SELECT idem_forget('sec', 'k-expiring') AS forgot;
SELECT outcome, state, attempt FROM idem_begin('sec', 'k-expiring', '{"other": true}');
-- idem_purge deletes only expired records, whoever runs it: it reveals and changes no live one
SELECT idem_purge() AS purged_by_mallory;
RESET ROLE;
-- the key mallory claimed is now hers: alice gets 42501
SET ROLE idem_sec_alice;
SELECT * FROM idem_check('sec', 'k-expiring');
RESET ROLE;
-- a superuser sees every record and its owner
SELECT key, owner FROM idempotency.records WHERE scope = 'sec' ORDER BY key;

-- alice's records are untouched
SET ROLE idem_sec_alice;
SELECT state, attempt, http_status, resource FROM idem_check('sec', 'k-open');
SELECT state, attempt, http_status, resource, response FROM idem_check('sec', 'k-done');
-- alice cannot reach the table directly either
SELECT count(*) FROM idempotency.records;
RESET ROLE;
-- a member of alice (her team) may use alice's records, as the contract says
SET ROLE idem_sec_alice_team;
SELECT outcome, resource FROM idem_begin('sec', 'k-done', '{"amount": 20}');
-- on her key in progress: in_progress (409), IK001 for another command, and the member may
-- checkpoint, complete, read and forget it
SELECT outcome, state, attempt, http_status FROM idem_begin('sec', 'k-team', '{"amount": 5}');
SELECT * FROM idem_begin('sec', 'k-team', '{"amount": 6}');
SELECT idem_checkpoint('sec', 'k-team', 'p') IS NOT NULL AS checkpointed;
SELECT idem_complete('sec', 'k-team', resource => 'r/1');
SELECT state, matches, attempt, recovery_point, http_status, response, resource,
       created_at IS NOT NULL AS created, expires_at IS NOT NULL AS expires, lease_expires_at IS NOT NULL AS leased
  FROM idem_check('sec', 'k-team', '{"amount": 5}');
SELECT idem_forget('sec', 'k-team') AS forgot;
RESET ROLE;

-- PUBLIC has no privilege on the table, the schema, or anything in it
SELECT has_table_privilege('public', 'idempotency.records', 'SELECT') AS sel,
       has_table_privilege('public', 'idempotency.records', 'INSERT') AS ins,
       has_table_privilege('public', 'idempotency.records', 'UPDATE') AS upd,
       has_table_privilege('public', 'idempotency.records', 'DELETE') AS del,
       has_table_privilege('public', 'idempotency.records', 'TRUNCATE') AS trunc,
       has_table_privilege('public', 'idempotency.records', 'REFERENCES') AS refs,
       has_table_privilege('public', 'idempotency.records', 'TRIGGER') AS trig,
       has_schema_privilege('public', 'idempotency', 'USAGE') AS schema_usage,
       has_schema_privilege('public', 'idempotency', 'CREATE') AS schema_create;
SELECT count(*) AS public_grants
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.relnamespace = 'idempotency'::regnamespace AND a.grantee = 0;
SELECT has_table_privilege('idem_sec_mallory', 'idempotency.records', 'SELECT') AS mallory_select,
       has_table_privilege('idem_sec_alice', 'idempotency.records', 'SELECT') AS alice_select;
-- no privilege of any kind for a role granted nothing, and none granted to PUBLIC on the
-- schema itself
SELECT has_table_privilege('idem_sec_mallory', 'idempotency.records',
                           'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS mallory_any_table_privilege,
       has_schema_privilege('idem_sec_mallory', 'idempotency', 'USAGE, CREATE') AS mallory_any_schema_privilege;
SELECT count(*) AS public_schema_grants
  FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
 WHERE n.nspname = 'idempotency' AND a.grantee = 0;

-- The attacker's objects, first in search_path: a function named like a builtin that the
-- extension's SQL uses or might use, an operator = on text (and <= on timestamptz), a table
-- named records, and a schema named like the extension's own in a place searched first.
-- Each trap logs to idem_sec_calls when called (and the operator's function answers true
-- for everything, so that a lookup using it would find the wrong row).
SET ROLE idem_sec_mallory;
CREATE SCHEMA idem_sec_trap;
CREATE FUNCTION idem_sec_trap.trap_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'text = text in: ' || current_query()); RETURN true; END $$;
CREATE OPERATOR idem_sec_trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = idem_sec_trap.trap_eq);
CREATE FUNCTION idem_sec_trap.trap_le(a timestamptz, b timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'timestamptz <= timestamptz'); RETURN true; END $$;
CREATE OPERATOR idem_sec_trap.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = idem_sec_trap.trap_le);
CREATE FUNCTION idem_sec_trap.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'now()'); RETURN '2000-01-01'; END $$;
CREATE FUNCTION idem_sec_trap.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'clock_timestamp()'); RETURN '2000-01-01'; END $$;
CREATE FUNCTION idem_sec_trap.sha256(bytea) RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'sha256()'); RETURN '\x00'; END $$;
CREATE FUNCTION idem_sec_trap.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'pg_advisory_xact_lock()'); END $$;
CREATE FUNCTION idem_sec_trap.format(text, VARIADIC text[]) RETURNS text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'format()'); RETURN ''; END $$;
CREATE TABLE idem_sec_trap.records (LIKE public.idem_sec_calls);
CREATE TABLE public.records (scope text, key text);                 -- a schema-less twin
CREATE FUNCTION idem_sec_trap.records_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.idem_sec_calls VALUES (current_user, 'records ' || TG_OP); RETURN NEW; END $$;
CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON idem_sec_trap.records
  FOR EACH ROW EXECUTE FUNCTION idem_sec_trap.records_trigger();
CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON public.records
  FOR EACH ROW EXECUTE FUNCTION idem_sec_trap.records_trigger();
-- and a temporary table named records: pg_temp is on the extension's pinned search_path
-- (after pg_catalog), so this is the one place a name could still be found; the extension
-- names idempotency.records, never records
CREATE TEMP TABLE records (scope text, key text);
CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON pg_temp.records
  FOR EACH ROW EXECUTE FUNCTION idem_sec_trap.records_trigger();
GRANT ALL ON pg_temp.records TO PUBLIC;
GRANT USAGE ON SCHEMA idem_sec_trap TO PUBLIC;
GRANT ALL ON idem_sec_trap.records, public.records TO PUBLIC;
-- the traps work: the operator is found first when the schema leads search_path
SET search_path = idem_sec_trap, pg_catalog, public;
SELECT 'a' = 'b' AS trap_operator_answers_true;
SELECT count(*) AS trap_calls_so_far FROM public.idem_sec_calls;
RESET search_path;
RESET ROLE;
TRUNCATE public.idem_sec_calls;

-- alice and mallory now call every function with the trap schema first in search_path:
-- the outcomes are exactly those of a clean search_path, and no trap is ever called.
SET ROLE idem_sec_alice;
SET search_path = idem_sec_trap, public, pg_catalog;
SELECT outcome, state, attempt FROM public.idem_begin('sec', 'k-trap', '{"amount": 30}', lease => '1 minute');
SELECT outcome, state FROM public.idem_begin('sec', 'k-trap', '{"amount": 30}');
SELECT * FROM public.idem_begin('sec', 'k-trap', '{"amount": 31}');          -- IK001 still
SELECT public.idem_checkpoint('sec', 'k-trap', 'charged', '{"c": 1}', attempt => 1) > pg_catalog.clock_timestamp() AS lease_renewed;
SELECT public.idem_complete('sec', 'k-trap', resource => 'payments/30', http_status => 201, attempt => 1);
SELECT outcome, http_status, resource FROM public.idem_begin('sec', 'k-trap', '{"amount": 30}');
SELECT state, matches, attempt, http_status, resource FROM public.idem_check('sec', 'k-trap', '{"amount": 30}');
SELECT outcome FROM public.idem_begin('sec', 'k-trap-fail', '{}');
SELECT public.idem_fail('sec', 'k-trap-fail', '{"e": 1}', retryable => false, http_status => 402);
SELECT outcome, http_status, response FROM public.idem_begin('sec', 'k-trap-fail', '{}');
SELECT encode(public.idem_fingerprint('{"b": 1, "a": [1.50, -0]}'), 'hex') OPERATOR(pg_catalog.=) encode(pg_catalog.sha256('{"a":[1.5,0],"b":1}'), 'hex') AS fingerprint_unchanged,
       public.idem_canonical('{"b": 1, "a": [1.50, -0]}') AS canonical;
SELECT public.idem_purge() >= 0 AS purge_ran;
SELECT public.idem_forget('sec', 'k-trap-fail') AS forgot, public.idem_forget('sec', 'k-nothing') AS forgot_nothing;
-- alice's own open key reads as before
SELECT state, attempt FROM public.idem_check('sec', 'k-open');
RESET search_path;
RESET ROLE;
-- the other role's keys are still 42501, not answered through the trap's operator
SET ROLE idem_sec_mallory;
SET search_path = idem_sec_trap, public, pg_catalog;
SELECT * FROM public.idem_check('sec', 'k-open');
SELECT * FROM public.idem_begin('sec', 'k-trap', '{"amount": 30}');
SELECT public.idem_complete('sec', 'k-open');
SELECT public.idem_forget('sec', 'k-done');
RESET search_path;
RESET ROLE;
-- a superuser with the trap first in search_path: same outcomes, no trap called
SET search_path = idem_sec_trap, public, pg_catalog;
SELECT state, attempt, resource FROM public.idem_check('sec', 'k-done');
SELECT outcome, resource FROM public.idem_begin('sec', 'k-done', '{"amount": 20}');
RESET search_path;

-- not one trap was called, and the twin tables were never written
SELECT count(*) AS trap_calls, string_agg(what, ', ') AS traps FROM public.idem_sec_calls;
SELECT (SELECT count(*) FROM idem_sec_trap.records) AS trap_table_rows, (SELECT count(*) FROM public.records) AS twin_rows,
       (SELECT count(*) FROM pg_temp.records) AS temp_twin_rows;

-- clean up: the records, the attacker's objects, the roles
SELECT idem_forget('sec', k) FROM unnest(ARRAY['k-open', 'k-done', 'k-trap', 'k-mallory', 'k-expiring']) AS k;
DROP SCHEMA idem_sec_trap CASCADE;
DROP TABLE public.records, pg_temp.records, public.idem_sec_calls;
REVOKE CREATE ON SCHEMA public FROM idem_sec_mallory;
DO $$ BEGIN EXECUTE format('REVOKE CREATE ON DATABASE %I FROM idem_sec_mallory', current_database()); END $$;
DROP ROLE idem_sec_alice_team;
DROP ROLE idem_sec_mallory;
DROP ROLE idem_sec_alice;
