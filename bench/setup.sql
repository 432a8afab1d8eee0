-- The benchmark's own objects, beside the extension: the business table every case writes,
-- the replay set, the row-of-the-same-size table for the primary-key SELECT, and the
-- fingerprint documents. Loaded by bench/run.sh into a scratch database. The extension at the
-- crate's version, unless the harness created it at another one first (BENCH_SQL_VERSION,
-- INSTR_SQL_VERSION: an older release's SQL served by the current library).
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS idempotency;
CREATE SCHEMA bench;

-- The business write of every case: one payment row.
CREATE TABLE bench.payments (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant     integer NOT NULL,
    amount     bigint NOT NULL,
    currency   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The replay set: :nreplay completed keys, stored as idem_complete stores them (a resource
-- reference and a status, no response body), with the fingerprint of the very command the
-- replay script sends.
INSERT INTO idempotency.records (created_at, expires_at, lease_expires_at, lease, owner,
    attempt, http_status, state, retryable, scope, key, fingerprint, resource)
SELECT now(), now() + interval '7 days', NULL, 60000000, 'postgres'::regrole,
       1, 201, 'c', NULL, 'bench replay', 'r-' || i,
       idem_fingerprint(jsonb_build_object('amount', i, 'currency', 'EUR', 'customer', 'cus_' || i)),
       'payments/' || i
FROM generate_series(1, :nreplay) AS i;

-- The primary-key SELECT that the replay is compared with: the same rows, same columns,
-- same primary key, in an ordinary table.
CREATE TABLE bench.replay_ref AS SELECT * FROM idempotency.records WHERE scope = 'bench replay';
ALTER TABLE bench.replay_ref ADD PRIMARY KEY (scope, key);

-- The least a one-transaction request can write (bench/pgbench/keyrow.sql): the key's record
-- once, into a plain table with idempotency.records' columns, primary key and BRIN index.
CREATE TABLE bench.key_rows (LIKE idempotency.records INCLUDING ALL) WITH (fillfactor = 100);

-- Fingerprint inputs: orders of about 100 bytes, 1 KB and 64 KB of jsonb text.
CREATE FUNCTION bench.order_doc(i integer, items integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object(
    'id', i, 'currency', 'EUR', 'customer', 'cus_' || i, 'amount', (i * 1.25)::numeric,
    'note', md5(i::text),
    'items', coalesce((SELECT jsonb_agg(jsonb_build_object(
                 'sku', 'sku-' || j, 'qty', j % 7, 'price', (j * 3.10)::numeric,
                 'name', md5((i * j)::text), 'gift', j % 2 = 0))
              FROM generate_series(1, items) AS j), '[]'::jsonb))
$$;
CREATE TABLE bench.docs_100 AS SELECT i, bench.order_doc(i, 0)   AS doc FROM generate_series(1, 5000) AS i;
CREATE TABLE bench.docs_1k  AS SELECT i, bench.order_doc(i, 8)   AS doc FROM generate_series(1, 2000) AS i;
CREATE TABLE bench.docs_64k AS SELECT i, bench.order_doc(i, 540) AS doc FROM generate_series(1, 40)   AS i;
-- Both fingerprint cases read (and detoast) the same stored values, so they differ only in
-- what they compute from them.
VACUUM ANALYZE bench.payments, bench.replay_ref, bench.docs_100, bench.docs_1k, bench.docs_64k,
    idempotency.records;
