-- fingerprint_canonical: idem_canonical's exact text and idem_fingerprint, on ordinary values.
-- Pins: the canonical text case by case (RFC 8785 structure, no whitespace, members sorted
-- by UTF-16 code units and recursively, the last duplicate wins, arrays in order; numbers by
-- exact value in the ECMAScript layout; RFC 8785 string escaping, everything else raw); the
-- fingerprint is the 32-byte SHA-256 of that text, equal for equal commands and different
-- for neighbouring large integers; both functions are IMMUTABLE, STRICT and PARALLEL SAFE.
-- Not repeated here: extreme numbers, the layout boundaries (-0, 1e-6, 1e-7, 123e-9, 1e20,
-- 1e21, 999999999999999999999, 1e+21 written out, 1.50, 10.0, 12345678901234567891), the
-- short escapes, duplicate keys and bare neighbouring integers, which hostile_numbers pins;
-- NULL in, NULL out, which hostile_null pins; the 402 frozen vectors, which
-- scripts/vectors.sh checks on every PostgreSQL version.
-- Characters outside printable ASCII are shown as <U+XXXX>, so that the output does not
-- depend on how a psql version measures their width.
\set VERBOSITY sqlstate
CREATE FUNCTION pg_temp.visible(t text) RETURNS text LANGUAGE sql AS $$
  SELECT string_agg(CASE WHEN ascii(c) BETWEEN 32 AND 126 THEN c
                         ELSE '<U+' || upper(lpad(h, greatest(4, length(h)), '0')) || '>' END, '' ORDER BY i)
    FROM regexp_split_to_table(t, '') WITH ORDINALITY AS s(c, i), LATERAL to_hex(ascii(c)) AS h $$;

-- canonical_text_is_exact
SELECT input, pg_temp.visible(idem_canonical(input::jsonb)) AS canonical
  FROM (VALUES
    -- structure: whitespace goes, members sorted, values canonical inside arrays
    (1, '{"b":1,"a":[2.0,1e21,-0,"x\ny"],"c":null}'),
    (2, '{ "a": 2, "b": 1.00 }'),
    -- numbers: the exact value, in the ECMAScript layout
    (3, '-0.000e5'),
    (4, '0.1'),
    (5, '0.000001'),
    (6, '-1.5E+300'),
    (7, '1E400'),
    (8, '5e-324'),
    (9, '0.30000000000000004'),
    (10, '123456789012345678901234'),
    (11, '-123.4500'),
    (12, '1.5e1'),
    (13, '12e-1'),
    -- literals and empty containers
    (14, 'null'),
    (15, 'true'),
    (16, 'false'),
    (17, '[]'),
    (18, '{}'),
    (19, '[ [ ] , { } ]'),
    -- strings: DEL, C1 controls and everything above are written raw, not escaped
    (20, '"\u007f\u0080\u00e9\u20ac\ud83d\ude00"'),
    (21, '"\u2028\u2029<>&''"'),
    -- members sorted by UTF-16 code units (U+1F600 is D83D DE00, before U+FB33), recursively
    (22, '{"\u20ac":1,"\r":2,"\ufb33":3,"1":4,"\ud83d\ude00":5,"\u0080":6,"\u00f6":7}'),
    (23, '{"z":{"b":[],"a":{}},"a":[{"y":true,"x":false}],"aa":1,"B":0}'),
    -- arrays keep their order
    (24, '["b","a",3,2,1]')
  ) AS v(n, input)
 ORDER BY n;

-- fingerprints_equal_commands_alike: one fingerprint for one command in two spellings, and
-- it is the SHA-256 of the canonical text (shown in hex)
SELECT idem_fingerprint('{"b":1,"a":2.0}') = idem_fingerprint('{ "a": 2, "b": 1.00 }') AS alike,
       encode(idem_fingerprint('{"b":1,"a":2.0}'), 'hex') AS fingerprint;

-- fingerprint_is_sha256_of_canonical_text: 32 bytes, SHA-256 over the UTF-8 of the
-- canonical text
SELECT octet_length(idem_fingerprint('{"b":1,"a":2.0}')) AS fingerprint_bytes;
SELECT bool_and(idem_fingerprint(c) = sha256(convert_to(idem_canonical(c), 'UTF8'))) AS sha256_of_canonical
  FROM (VALUES ('{"b":1,"a":[2.0,1e21,-0,"x\ny"],"c":null}'::jsonb),
               ('"é€😀"'), ('12345678901234567891'), ('[]')) v(c);
SELECT encode(idem_fingerprint('{"b":1,"a":2.0}'), 'hex') = encode(sha256('{"a":2,"b":1}'::bytea), 'hex') AS sha256_of_text;

-- fingerprint_tells_apart_neighbouring_large_integers: inside a command too (the bare
-- numbers are hostile_numbers'); equal values in other spellings share one
SELECT idem_fingerprint('{"amount": 12345678901234567891}')
       <> idem_fingerprint('{"amount": 12345678901234567890}') AS neighbours_differ,
       idem_fingerprint('1.50') = idem_fingerprint('15e-1') AS one_point_five,
       idem_fingerprint('-0') = idem_fingerprint('0.000') AS zero;

-- fingerprint_and_canonical_are_strict: IMMUTABLE, STRICT, PARALLEL SAFE (NULL in, NULL
-- out: hostile_null)
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict, p.proparallel
  FROM pg_proc p
 WHERE p.oid IN ('idem_fingerprint(jsonb)'::regprocedure, 'idem_canonical(jsonb)'::regprocedure)
 ORDER BY p.proname;
