-- library_contract: the library refuses a call whose argument count is not the one it
-- declares for the function (src/signature.rs), instead of reading past the arguments the
-- call has. Such a call comes from SQL objects of another version of the extension than
-- the installed library (an upgrade of the files without ALTER EXTENSION UPDATE); here a
-- function is declared by hand on the library's symbol with too few and too many arguments.
\set VERBOSITY default
CREATE FUNCTION public.begin_of_another_version(scope text, key text)
  RETURNS record AS '$libdir/idempotency', 'idem_begin' LANGUAGE c;
SELECT * FROM public.begin_of_another_version('contract', 'k-1')
  AS t(outcome text, state text, attempt integer, recovery_point text, recovery_data jsonb,
       http_status integer, response jsonb, resource text, fingerprint bytea,
       expires_at timestamptz);
CREATE FUNCTION public.purge_of_another_version(max_rows integer, extra integer)
  RETURNS bigint AS '$libdir/idempotency', 'idem_purge' LANGUAGE c;
SELECT public.purge_of_another_version(10, 1);
\set VERBOSITY sqlstate
SELECT public.purge_of_another_version(10, 1);
-- Nothing was written.
SELECT count(*) FROM idempotency.records WHERE scope = 'contract';
DROP FUNCTION public.begin_of_another_version(text, text);
DROP FUNCTION public.purge_of_another_version(integer, integer);
