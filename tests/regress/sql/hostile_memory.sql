-- hostile_memory: a 100 MB command and a jsonb nested 100,000 levels deep, against every
-- function that reads one. Pins the answer (22023 where a size limit applies, the exact
-- canonical text and fingerprint otherwise), that the backend survives, and that memory
-- stays bounded: each case runs in a fresh backend (\c) that reads its own peak resident
-- size (VmHWM in /proc/self/status, via pg_read_file, as superuser) before and after. The
-- same input built without the extension, in another fresh backend, is the reference:
-- the extension's share (case minus reference) must stay under a bound. The figures go to
-- the server log (RAISE LOG), where scripts/regress.sh prints them from.
-- Building a 100,000-deep jsonb needs PostgreSQL's recursive JSON parser to recurse that
-- deep: scripts/regress.sh starts the server with a 64 MiB stack and this file raises
-- max_stack_depth to 60MB. The extension's own walk is iterative (core/src/canonical.rs).
\set VERBOSITY sqlstate
CREATE FUNCTION hwm_kb() RETURNS bigint LANGUAGE sql AS
$$ SELECT substring(pg_read_file('/proc/self/status') FROM 'VmHWM:\s*(\d+) kB')::bigint $$;
CREATE FUNCTION bounded(name text, reference_kb bigint, case_kb bigint, bound_kb bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  RAISE LOG 'hostile_memory: % raised the peak RSS by % kB; the input alone by % kB; the extension''s share % kB (bound % kB)',
    name, case_kb, reference_kb, case_kb - reference_kb, bound_kb;
  RETURN case_kb - reference_kb <= bound_kb;
END $$;
-- Every measurement starts in a fresh backend with the library loaded and its plans prepared.
\set warm 'SET max_stack_depth = \'60MB\'; SELECT idem_fingerprint(\'{}\') IS NOT NULL AS warm, (SELECT state FROM idem_check(\'w\', \'w\')) AS w; SELECT hwm_kb() AS h0 \\gset'

-- The reference: a 100 MB jsonb built alone (the repeat() text and the jsonb: about 300 MB).
\c
:warm
SELECT pg_column_size(jsonb_build_object('pad', repeat('x', 104857600))) AS command_bytes;
SELECT hwm_kb() - :h0 AS ref100 \gset

-- 1. idem_begin refuses it (22023, over idempotency.max_command_size) without reading it.
\c
:warm
SELECT * FROM idem_begin('mem', 'k', jsonb_build_object('pad', repeat('x', 104857600)));
SELECT bounded('idem_begin(100 MB)', :ref100, hwm_kb() - :h0, 32768);
-- 2. idem_check likewise.
\c
:warm
SELECT * FROM idem_check('mem', 'k', jsonb_build_object('pad', repeat('x', 104857600)));
SELECT bounded('idem_check(100 MB)', :ref100, hwm_kb() - :h0, 32768);
-- 3. idem_fingerprint has no size limit: it streams the canonical text into SHA-256.
\c
:warm
SELECT idem_fingerprint(jsonb_build_object('pad', repeat('x', 10485760)))
     = sha256(convert_to('{"pad":"' || repeat('x', 10485760) || '"}', 'UTF8')) AS fingerprint_exact_10mb;
\c
:warm
SELECT length(idem_fingerprint(jsonb_build_object('pad', repeat('x', 104857600)))) AS fingerprint_bytes;
SELECT bounded('idem_fingerprint(100 MB)', :ref100, hwm_kb() - :h0, 32768);
-- 4. idem_canonical must return the 100 MB text: bound two copies of it (the text being
--    built and the text value returned) plus 32 MB.
\c
:warm
SELECT length(idem_canonical(jsonb_build_object('pad', repeat('x', 104857600)))) AS canonical_chars;
SELECT bounded('idem_canonical(100 MB)', :ref100, hwm_kb() - :h0, 2 * 102400 + 32768);
-- 5. a 100 MB response, error, resource, recovery data: 22023 (max_response_size).
SELECT outcome FROM idem_begin('mem', 'resp', '{}');
\c
:warm
SELECT idem_complete('mem', 'resp', response => jsonb_build_object('pad', repeat('x', 104857600)));
SELECT idem_fail('mem', 'resp', error => jsonb_build_object('pad', repeat('x', 104857600)));
SELECT idem_checkpoint('mem', 'resp', 'p', jsonb_build_object('pad', repeat('x', 104857600)));
SELECT bounded('idem_complete/fail/checkpoint(100 MB)', :ref100, hwm_kb() - :h0, 32768);
-- The reference for a 100 MB text argument.
\c
:warm
SELECT octet_length(repeat('x', 104857600)) AS text_bytes;
SELECT hwm_kb() - :h0 AS reftext \gset
\c
:warm
SELECT idem_complete('mem', 'resp', resource => repeat('x', 104857600));
SELECT * FROM idem_begin('mem', repeat('k', 104857600), '{}');   -- a 100 MB key: 22023
SELECT bounded('100 MB resource and key', :reftext, hwm_kb() - :h0, 32768);
SELECT state FROM idem_check('mem', 'resp');

-- The reference: a jsonb nested 100,000 levels deep, built alone.
\c
:warm
SELECT pg_column_size((repeat('[', 100000) || repeat(']', 100000))::jsonb) AS deep_bytes;
SELECT hwm_kb() - :h0 AS refdeep \gset
-- 6. canonical text and fingerprint of it, exact.
\c
:warm
SELECT idem_canonical((repeat('[', 100000) || repeat(']', 100000))::jsonb)
     = repeat('[', 100000) || repeat(']', 100000) AS canonical_exact,
       idem_fingerprint((repeat('[', 100000) || '{"a": -0.0}' || repeat(']', 100000))::jsonb)
     = sha256(convert_to(repeat('[', 100000) || '{"a":0}' || repeat(']', 100000), 'UTF8')) AS fingerprint_exact;
SELECT bounded('idem_canonical/fingerprint(100,000 deep)', :refdeep, hwm_kb() - :h0, 32768);
-- 7. as a command: claimed, replayed, and a different deep command is IK001.
\c
:warm
SELECT outcome, attempt FROM idem_begin('mem', 'deep', (repeat('[', 100000) || repeat(']', 100000))::jsonb);
SELECT idem_complete('mem', 'deep', resource => 'deep/1');
SELECT outcome, resource FROM idem_begin('mem', 'deep', (repeat('[', 100000) || repeat(']', 100000))::jsonb);
SELECT * FROM idem_begin('mem', 'deep', (repeat('[', 100000) || '1' || repeat(']', 100000))::jsonb);
SELECT state, matches FROM idem_check('mem', 'deep', (repeat('[', 100000) || repeat(']', 100000))::jsonb);
SELECT bounded('idem_begin/check(100,000 deep)', :refdeep, hwm_kb() - :h0, 32768);
-- 8. objects nested 100,000 deep (each level a member), against their own reference.
\c
:warm
SELECT pg_column_size((repeat('{"a":', 100000) || 'null' || repeat('}', 100000))::jsonb) AS deep_object_bytes;
SELECT hwm_kb() - :h0 AS refobj \gset
\c
:warm
SELECT length(idem_canonical((repeat('{"a":', 100000) || 'null' || repeat('}', 100000))::jsonb)) AS deep_object_chars;
SELECT bounded('idem_canonical(100,000 deep objects)', :refobj, hwm_kb() - :h0, 32768);
SELECT idem_forget('mem', 'deep'), idem_forget('mem', 'resp');
DROP FUNCTION bounded(text, bigint, bigint, bigint);
DROP FUNCTION hwm_kb();
