-- hostile_ranges: out-of-domain numbers, durations and sizes.
-- Contract: http_status outside 100..599, ttl or lease not positive, wait negative, a
-- response or command over its size limit: 22023. max_rows below 1: 22023. A refused call
-- changes nothing. This file is the home of what the #[pg_test]s
-- http_status_outside_100_to_599_is_22023, ttl_and_lease_not_positive_and_negative_wait_are_22023,
-- command_over_max_command_size_is_22023 and response_over_max_response_size_is_22023 pinned.
\set VERBOSITY sqlstate

SELECT outcome FROM idem_begin('rng', 'k', '{}');
-- http_status: 99 and 600 are refused, 100 and 599 accepted; also extreme integers
SELECT idem_complete('rng', 'k', http_status => 99);
SELECT idem_complete('rng', 'k', http_status => 600);
SELECT idem_complete('rng', 'k', http_status => -2147483648);
SELECT idem_complete('rng', 'k', http_status => 2147483647);
SELECT idem_complete('rng', 'k', http_status => 65735);  -- 200 + 65536: no smallint wrap-around
SELECT idem_fail('rng', 'k', http_status => 99);
SELECT idem_fail('rng', 'k', http_status => 600);
SELECT idem_complete('rng', 'k', http_status => 0);
SELECT idem_complete('rng', 'k', http_status => -200);
SELECT idem_fail('rng', 'k', http_status => 0);
SELECT idem_fail('rng', 'k', http_status => -200);
SELECT idem_fail('rng', 'k', http_status => 2147483647);
SELECT idem_complete('rng', 'k', http_status => 599);
SELECT http_status FROM idem_check('rng', 'k');
SELECT outcome FROM idem_begin('rng', 'k100', '{}');
SELECT idem_fail('rng', 'k100', http_status => 100, retryable => false);
SELECT outcome, http_status FROM idem_begin('rng', 'k100', '{}');
-- and the other way round: a retryable failure with 599, its retry completed with 100
SELECT outcome FROM idem_begin('rng', 'k599', '{}');
SELECT idem_fail('rng', 'k599', http_status => 599);
SELECT outcome, attempt FROM idem_begin('rng', 'k599', '{}');
SELECT idem_complete('rng', 'k599', http_status => 100);
SELECT state, attempt, http_status FROM idem_check('rng', 'k599');
-- ttl and lease must be positive, wait not negative
SELECT * FROM idem_begin('rng', 'd', '{}', ttl => '0');
SELECT * FROM idem_begin('rng', 'd', '{}', ttl => '-1 second');
SELECT * FROM idem_begin('rng', 'd', '{}', ttl => '1 month -30 days');   -- sums to zero
SELECT * FROM idem_begin('rng', 'd', '{}', ttl => '-1 microsecond');
SELECT * FROM idem_begin('rng', 'd', '{}', lease => '0');
SELECT * FROM idem_begin('rng', 'd', '{}', lease => '-5 minutes');
SELECT * FROM idem_begin('rng', 'd', '{}', lease => '1 day -24 hours');
SELECT * FROM idem_begin('rng', 'd', '{}', wait => '-1 millisecond');
SELECT * FROM idem_begin('rng', 'd', '{}', wait => '1 month -31 days');
SELECT * FROM idem_begin('rng', 'd', '{}', ttl => '-1 day');
SELECT * FROM idem_begin('rng', 'd', '{}', lease => '-1 mon');
SELECT * FROM idem_begin('rng', 'd', '{}', wait => '-1 day');
-- none of them claimed the key
SELECT state FROM idem_check('rng', 'd');
-- the smallest positive values and wait 0 are accepted; huge ones saturate instead of wrapping
-- (a ttl that long only under a ceiling raised as far as it goes: roles pins the ceiling)
SELECT outcome FROM idem_begin('rng', 'd1', '{}', ttl => '1 microsecond', lease => '1 microsecond', wait => '0');
SET idempotency.max_ttl = '9223372036854775807 us';
SELECT outcome, expires_at > clock_timestamp() + interval '1000 years' AS far_future
  FROM idem_begin('rng', 'd2', '{}', ttl => '178000000 years', lease => '178000000 years');
SELECT outcome FROM idem_begin('rng', 'd3', '{}', ttl => '1 day', lease => '1 minute', wait => '-0');
-- a ttl or lease that lands past the last instant a timestamptz holds (294277-01-01) is
-- stored as infinity, never as a value that prints but cannot be read back (a dump of it
-- would not restore): each stored time must survive a text round trip, as in pg_restore
SELECT ((9223371331200000000 - (extract(epoch FROM clock_timestamp() - '2000-01-01 00:00:00+00') * 1e6)::bigint)
        / 86400000000 + 2)::int AS days_past_end \gset
SELECT outcome, expires_at FROM idem_begin('rng', 'd4', '{}', ttl => make_interval(days => :days_past_end),
                                           lease => make_interval(days => :days_past_end));
SELECT expires_at, lease_expires_at FROM idem_check('rng', 'd4');
SELECT idem_checkpoint('rng', 'd4', 'p');
RESET idempotency.max_ttl;
SELECT count(*) AS records_not_restorable FROM idempotency.records
 WHERE expires_at::text::timestamptz IS DISTINCT FROM expires_at
    OR lease_expires_at::text::timestamptz IS DISTINCT FROM lease_expires_at;
-- the settings refuse the same values
SET idempotency.ttl = 0;
SET idempotency.lease = '-1s';
SET idempotency.wait = -1;
SET idempotency.max_command_size = 0;
-- sizes: the limits are 1 MB by default, on the stored (uncompressed) size
SELECT * FROM idem_begin('rng', 'big', jsonb_build_object('pad', repeat('x', 1048576)));
SELECT * FROM idem_check('rng', 'big', jsonb_build_object('pad', repeat('x', 1048576)));
SELECT outcome FROM idem_begin('rng', 'big', jsonb_build_object('pad', repeat('x', 1048000)));
SELECT idem_complete('rng', 'big', response => jsonb_build_object('r', repeat('x', 1048576)));
SELECT idem_complete('rng', 'big', resource => repeat('x', 1048577));
SELECT idem_fail('rng', 'big', error => jsonb_build_object('e', repeat('x', 1048576)));
SELECT idem_checkpoint('rng', 'big', repeat('p', 1048577));
SELECT idem_checkpoint('rng', 'big', 'p', jsonb_build_object('d', repeat('x', 1048576)));
-- compressible is not smaller: a highly compressible response counts by its raw size
SELECT idem_complete('rng', 'big', response => to_jsonb(repeat('a', 2000000)));
-- lowering the limit applies at once, to every stored value; the refused calls leave the
-- record in progress
SET idempotency.max_response_size = '1kB';
SELECT idem_complete('rng', 'big', resource => repeat('x', 1025));
SELECT outcome FROM idem_begin('rng', 'small', '{}');
SELECT idem_complete('rng', 'small', jsonb_build_object('pad', repeat('x', 2000)));
SELECT idem_complete('rng', 'small', resource => repeat('r', 2000));
SELECT idem_fail('rng', 'small', jsonb_build_object('pad', repeat('x', 2000)));
SELECT idem_checkpoint('rng', 'small', 'p', jsonb_build_object('pad', repeat('x', 2000)));
SELECT idem_checkpoint('rng', 'small', repeat('p', 2000));
SELECT state, attempt, recovery_point, response FROM idem_check('rng', 'small');
SELECT idem_complete('rng', 'small', jsonb_build_object('pad', repeat('x', 900)));
SELECT state, octet_length(response::text) AS response_chars FROM idem_check('rng', 'small');
RESET idempotency.max_response_size;
-- and so does lowering max_command_size (for idem_begin and idem_check); idem_fingerprint
-- and idem_canonical have no limit
SET idempotency.max_command_size = '1kB';
SELECT * FROM idem_begin('rng', 'small-cmd', jsonb_build_object('pad', repeat('x', 2000)));
SELECT * FROM idem_check('rng', 'small-cmd', jsonb_build_object('pad', repeat('x', 2000)));
SELECT outcome FROM idem_begin('rng', 'small-cmd', jsonb_build_object('pad', repeat('x', 900)));
SELECT octet_length(idem_fingerprint(jsonb_build_object('pad', repeat('x', 2000)))) AS fingerprint_bytes,
       length(idem_canonical(jsonb_build_object('pad', repeat('x', 2000)))) AS canonical_chars;
RESET idempotency.max_command_size;
SELECT idem_complete('rng', 'big', response => jsonb_build_object('r', repeat('x', 1000000)));
SELECT state, pg_column_size(response) > 0 AS stored FROM idem_check('rng', 'big');
-- idem_purge: max_rows must be at least 1
SELECT idem_purge(0);
SELECT idem_purge(-2147483648);
SELECT idem_purge(2147483647) >= 0 AS purged;
-- attempt: any integer is just compared (IK003 when it is not the record's)
SELECT outcome FROM idem_begin('rng', 'att', '{}');
SELECT idem_checkpoint('rng', 'att', 'p', attempt => 0);
SELECT idem_checkpoint('rng', 'att', 'p', attempt => -2147483648);
SELECT idem_complete('rng', 'att', attempt => 2147483647);
SELECT idem_complete('rng', 'att', attempt => 1);
