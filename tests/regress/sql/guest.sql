-- guest: once the library is loaded into a session, every other query behaves as it would
-- without it. Until 0.3.0 the planner hook (src/citus.rs) was installed in every backend that
-- loaded the library and called the planner through pgrx's guard, which turned any ERROR
-- raised while planning into a Rust panic that unwound into C: the backend aborted and the
-- postmaster restarted the cluster. The hook is now installed only where Citus is loaded,
-- and every way in from PostgreSQL goes through one guard (src/entry.rs). PostgreSQL's own
-- regression suite with the library preloaded (make test-guest) checks the rest.
\set VERBOSITY default
-- Load the library in this backend (pg_regress created the extension before it).
SELECT encode(idem_fingerprint('{}'), 'hex');
-- An ERROR while planning (constant folding) and while executing.
SELECT 1/0;
SELECT x / 0 FROM (VALUES (1)) AS t(x);
-- An ERROR in another function planned as SELECT f(...), the form the Citus hook inspects.
CREATE FUNCTION public.guest_noisy(i integer) RETURNS integer
  LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
  RAISE NOTICE 'guest_noisy(%) ran', i;
  IF i = 0 THEN
    RAISE EXCEPTION 'guest_noisy refuses 0' USING ERRCODE = '22012', DETAIL = 'as planned';
  END IF;
  RETURN i;
END $$;
-- Runs once (one NOTICE): the library evaluates nothing of others' calls.
SELECT public.guest_noisy(1);
SELECT * FROM public.guest_noisy(2);
-- Its error keeps its SQLSTATE, message and DETAIL, and no Rust backtrace is added.
\set SHOW_CONTEXT never
SELECT public.guest_noisy(0);
\set VERBOSITY sqlstate
SELECT public.guest_noisy(0);
\set VERBOSITY default
\set SHOW_CONTEXT errors
-- The session is still here (the regress runner also fails on any crash in the server log).
SELECT 1 AS still_connected;
DROP FUNCTION public.guest_noisy(integer);
