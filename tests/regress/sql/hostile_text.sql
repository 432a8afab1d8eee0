-- hostile_text: scopes and keys at and beyond their limits.
-- Contract: empty scope or key, scope or key longer than 255 bytes (bytes, not characters)
-- or holding a control character (Unicode category Cc: U+0000..U+001F, U+007F..U+009F) is
-- 22023. Everything else is an opaque string, compared byte for byte: quotes, backslashes,
-- SQL that looks like injection, format characters (Cf) and separators (Zl) are just bytes.
-- This file is the home of what the #[pg_test]s empty_or_control_character_scope_or_key_is_22023
-- and scope_and_key_limit_is_255_bytes pinned.
\set VERBOSITY sqlstate

-- A helper that runs idem_begin and answers the outcome, or the SQLSTATE of its error.
CREATE FUNCTION try_begin(s text, k text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RETURN (SELECT outcome FROM idem_begin(s, k, '{"v": 1}'));
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;
-- The same for any statement: 'ok', or the SQLSTATE of its error.
CREATE FUNCTION try_sql(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE sql;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;

-- empty
SELECT try_begin('', 'k') AS empty_scope, try_begin('s', '') AS empty_key;
-- ASCII at the limit (255 bytes) and over it (256 bytes), for scope and key
SELECT try_begin(repeat('s', 255), 'k') AS scope_255, try_begin(repeat('s', 256), 'k') AS scope_256,
       try_begin('s', repeat('k', 255)) AS key_255,  try_begin('s', repeat('k', 256)) AS key_256;
-- multibyte characters: the limit counts bytes. 'é' is 2 bytes, '€' 3, '😀' 4.
SELECT octet_length(repeat('é', 127) || 'a') AS b255, octet_length(repeat('é', 128)) AS b256,
       char_length(repeat('é', 128)) AS chars_of_256_bytes;
SELECT try_begin('mb', repeat('é', 127) || 'a') AS key_2byte_255,
       try_begin('mb', repeat('é', 128)) AS key_2byte_256,
       try_begin('mb', repeat('a', 254) || 'é') AS key_2byte_straddles_256,
       try_begin('mb', repeat('€', 85)) AS key_3byte_255,
       try_begin('mb', repeat('a', 253) || '€') AS key_3byte_straddles_256,
       try_begin('mb', repeat('😀', 63) || 'abc') AS key_4byte_255,
       try_begin('mb', repeat('😀', 64)) AS key_4byte_256,
       try_begin('mb', repeat('a', 252) || '😀') AS key_4byte_straddles_256;
SELECT try_begin('mb', repeat('a', 251) || '😀') AS key_4byte_ends_at_255;
SELECT try_begin(repeat('€', 85), 'k') AS scope_3byte_255, try_begin(repeat('€', 86), 'k') AS scope_3byte_258;
-- control characters: \x01, tab, newline, carriage return, escape, DEL, and U+0085, U+009F (C1)
SELECT try_begin('ctl', 'a' || chr(1) || 'b') AS key_x01,
       try_begin('ctl', E'a\tb') AS key_tab,
       try_begin('ctl', E'a\nb') AS key_newline,
       try_begin('ctl', E'a\rb') AS key_cr,
       try_begin('ctl', E'\x1b[31m') AS key_escape,
       try_begin('ctl', 'a' || chr(127)) AS key_del,
       try_begin('ctl', 'a' || chr(133)) AS key_u0085,
       try_begin('ctl', chr(159)) AS key_u009f;
SELECT try_begin(E'sc\nope', 'k') AS scope_newline, try_begin('sc' || chr(31), 'k') AS scope_x1f;
-- not control characters (accepted): space, U+00A0, zero-width space U+200B (Cf),
-- line separator U+2028 (Zl), right-to-left override U+202E (Cf), BOM U+FEFF
SELECT try_begin('ok', ' ') AS key_space, try_begin('ok', chr(160)) AS key_nbsp,
       try_begin('ok', chr(8203)) AS key_zwsp, try_begin('ok', chr(8232)) AS key_u2028,
       try_begin('ok', chr(8238) || 'txt.exe') AS key_rlo, try_begin('ok', chr(65279)) AS key_bom;
-- printable Unicode, spaces and punctuation in scope and key
SELECT try_begin('tenant:42 POST /v1/payments', 'ключ €😀 "x"') AS key_unicode_quotes;
-- the error names the offending character, in DETAIL
\set VERBOSITY default
SELECT * FROM idem_begin('ctl', E'a\tb', '{}');
SELECT * FROM idem_begin('s', repeat('é', 128), '{}');
\set VERBOSITY sqlstate
-- the same rules on every function that takes a scope and key
SELECT idem_complete('s', repeat('k', 256));
SELECT idem_fail('', 'k');
SELECT idem_checkpoint('s', E'k\n', 'p');
SELECT * FROM idem_check('s', '');
SELECT idem_forget(repeat('s', 256), 'k');
SELECT * FROM idem_check('s', repeat('k', 256));
SELECT idem_forget('s', repeat('k', 256));
-- every function, as scope and as key, with each kind of bad text: empty, newline, tab,
-- carriage return, \x01, DEL, U+0085 and \x1f (the first column names the function and the
-- argument; each other column is one bad text)
SELECT call,
       try_sql(replace(sql, '$1', quote_literal(''))) AS empty,
       try_sql(replace(sql, '$1', quote_literal(E'k\n1'))) AS newline,
       try_sql(replace(sql, '$1', quote_literal(E'k\t1'))) AS tab,
       try_sql(replace(sql, '$1', quote_literal(E'\r'))) AS cr,
       try_sql(replace(sql, '$1', quote_literal(E'k\x01'))) AS x01,
       try_sql(replace(sql, '$1', quote_literal('k' || chr(127)))) AS del,
       try_sql(replace(sql, '$1', quote_literal('k' || chr(133)))) AS u0085,
       try_sql(replace(sql, '$1', quote_literal(chr(31) || 'k'))) AS x1f
  FROM (VALUES (1, 'begin scope',      $$SELECT idem_begin($1, 'k', '{}')$$),
               (2, 'begin key',        $$SELECT idem_begin('ctl', $1, '{}')$$),
               (3, 'complete scope',   $$SELECT idem_complete($1, 'k')$$),
               (4, 'complete key',     $$SELECT idem_complete('ctl', $1)$$),
               (5, 'fail key',         $$SELECT idem_fail('ctl', $1)$$),
               (6, 'checkpoint key',   $$SELECT idem_checkpoint('ctl', $1, 'p')$$),
               (7, 'check scope',      $$SELECT idem_check($1, 'k')$$),
               (8, 'check key',        $$SELECT idem_check('ctl', $1)$$),
               (9, 'forget key',       $$SELECT idem_forget('ctl', $1)$$)) AS c(n, call, sql)
 ORDER BY n;

-- keys and scopes that look like SQL injection are stored and compared as plain bytes
SELECT outcome, attempt FROM idem_begin($i$'); DROP TABLE idempotency.records; --$i$,
                                        $i$' OR '1'='1$i$, '{"amount": 10}');
SELECT idem_complete($i$'); DROP TABLE idempotency.records; --$i$, $i$' OR '1'='1$i$,
                     resource => $i$payments/1'); DELETE FROM idempotency.records; --$i$);
SELECT outcome, resource FROM idem_begin($i$'); DROP TABLE idempotency.records; --$i$,
                                         $i$' OR '1'='1$i$, '{"amount": 10}');
-- a key that would match every row as a LIKE pattern or a regex matches only itself
SELECT outcome FROM idem_begin($i$'); DROP TABLE idempotency.records; --$i$, '%', '{"amount": 10}');
SELECT outcome FROM idem_begin($i$'); DROP TABLE idempotency.records; --$i$, '.*', '{"amount": 10}');
SELECT state FROM idem_check($i$'); DROP TABLE idempotency.records; --$i$, '_');
SELECT outcome FROM idem_begin('x"); SELECT pg_sleep(10); --', E'\\''; --', '{}');
SELECT to_regclass('idempotency.records') IS NOT NULL AS table_still_there,
       (SELECT count(*) FROM idempotency.records WHERE scope = $i$'); DROP TABLE idempotency.records; --$i$) AS keys_in_that_scope;
-- the key is compared byte for byte: trailing space, case, Unicode normalisation forms
SELECT outcome FROM idem_begin('norm', 'café', '{"v": 1}');
SELECT outcome FROM idem_begin('norm', 'café ', '{"v": 2}');
SELECT outcome FROM idem_begin('norm', 'CAFÉ', '{"v": 3}');
SELECT outcome FROM idem_begin('norm', 'cafe' || chr(769), '{"v": 4}');  -- e + combining acute: other bytes
SELECT outcome FROM idem_begin('norm', 'café', '{"v": 1}');              -- the first key again: its committed claim's lease holds
-- scope and key are not confused by where the boundary falls ('ab','c' vs 'a','bc')
SELECT outcome FROM idem_begin('ab', 'c', '{"v": 1}');
SELECT outcome FROM idem_begin('a', 'bc', '{"v": 2}');
DROP FUNCTION try_begin(text, text);
DROP FUNCTION try_sql(text);
