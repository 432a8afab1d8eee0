-- hostile_numbers: what the canonical form and the fingerprint make of extreme JSON numbers
-- and strings. Contract: numbers keep their exact decimal value (never through a double),
-- -0 is 0, trailing zeros go, ECMAScript layout (exponent form from 1e21 up and below 1e-6);
-- RFC 8785 string escaping; members sorted by UTF-16 code units.
\set VERBOSITY sqlstate

-- 1e1000000 is beyond PostgreSQL's numeric range: jsonb input refuses it (22003) before
-- the extension sees anything. The largest and smallest exponents numeric holds do pass.
SELECT idem_canonical('1e1000000');
SELECT idem_canonical('[1e131071]') = '[1e+131071]' AS largest_exponent;
SELECT idem_canonical('1e-16383') AS smallest_exponent;
SELECT length(idem_canonical(('1' || repeat('0', 131071))::jsonb)) AS digits_of_10e131071_written_out_as_exponent,
       idem_canonical(('1' || repeat('0', 131071))::jsonb) = '1e+131071' AS same_as_1e131071;
-- -0, tiny and huge values, the layout boundaries
SELECT idem_canonical('[-0, -0.0, 0.0e5, 0.000000000000000000001, 1e-6, 1e-7, 0.0000001, 123e-9]');
SELECT idem_canonical('[1e20, 1e21, 999999999999999999999, 1000000000000000000000, -1e21, 1.5e300]');
SELECT idem_canonical('[1.50, 10.0, 1e1, 100e-2, 0.1000000000000000000001, 12345678901234567891]');
-- equal values share a fingerprint; values a double would confuse do not
SELECT idem_fingerprint('-0') = idem_fingerprint('0') AS minus_zero_is_zero,
       idem_fingerprint('1e1') = idem_fingerprint('10.000') AS one_e1_is_ten,
       idem_fingerprint('0.000000000000000000001') = idem_fingerprint('1e-21') AS tiny,
       idem_fingerprint('12345678901234567891') = idem_fingerprint('12345678901234567890') AS neighbours_confused,
       idem_fingerprint('0.1000000000000000000001') = idem_fingerprint('0.1') AS beyond_double_confused;
-- the fingerprint is SHA-256 of the canonical text, for these extreme values too
SELECT bool_and(idem_fingerprint(v) = sha256(convert_to(idem_canonical(v), 'UTF8'))) AS fingerprint_is_sha256_of_canonical
  FROM unnest(ARRAY['-0', '1e131071', '1e-16383', '0.000000000000000000001', '[1e21, "é\u0001"]']::jsonb[]) AS v;
-- strings: RFC 8785 escaping (short escapes, \u00XX for other controls, nothing else)
SELECT idem_canonical('["\u0000x"]');   -- jsonb itself refuses \u0000 (22P05)
SELECT idem_canonical('"\ud800"');      -- a lone surrogate: refused by jsonb input (22P02)
-- (DEL and U+2028 are written as they are, raw; shown here as <DEL> and <U+2028>)
SELECT replace(replace(idem_canonical('["\b\f\n\r\t", "\u0001\u001f", "\u007f", "\"\\/", "é€😀", "\u2028"]'),
               chr(127), '<DEL>'), chr(8232), '<U+2028>') AS canonical;
-- member order: UTF-16 code units, not UTF-8 bytes (U+1F600 sorts before U+FFFF in UTF-16)
SELECT idem_canonical('{"\uffff": 1, "😀": 2, "z": 3, "é": 4, "": 5, "aa": 6, "b": 7}');
-- duplicate keys: jsonb keeps the last one, and so does the fingerprint
SELECT idem_canonical('{"a": 1, "a": 2}'), idem_fingerprint('{"a": 1, "a": 2}') = idem_fingerprint('{"a": 2}') AS last_wins;
-- deep but narrow and wide but flat values
SELECT idem_canonical((repeat('[', 1000) || repeat(']', 1000))::jsonb) = repeat('[', 1000) || repeat(']', 1000) AS deep_1000;
SELECT length(idem_canonical((SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 100000) i))) AS wide_100000;
-- a command with such values is accepted by idem_begin and replays under its equal spelling
SELECT outcome FROM idem_begin('num', 'k', '{"amount": 1.50, "z": -0, "big": 1e131071}');
SELECT outcome FROM idem_begin('num', 'k', '{"z": 0, "big": 1e131071, "amount": 1.5000}');
SELECT outcome FROM idem_begin('num', 'k', '{"z": 0, "big": 1e131070, "amount": 1.5}');
SELECT idem_forget('num', 'k');
