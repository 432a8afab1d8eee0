-- Scale-out (bench/citus.sh): the payment transaction of citus_idem.sql without idempotency.
\set amount random(100, 100000)
\set t random(1, 64)
BEGIN;
INSERT INTO payments (tenant, amount, currency) VALUES ('tenant:' || :t, :amount, 'EUR') RETURNING id;
COMMIT;
