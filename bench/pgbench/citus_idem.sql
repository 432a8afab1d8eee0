-- Scale-out (bench/citus.sh): the one-transaction idempotent payment of bench/pgbench/idem.sql
-- with the scope the tenant (one of 64) and payments distributed by that tenant, co-located with
-- the records. The same script runs on the Citus coordinator and on the plain node.
\set amount random(100, 100000)
\set t random(1, 64)
\set r random(1, 1125899906842624)
BEGIN;
SELECT outcome FROM idem_begin('tenant:' || :t, :run::text || '-' || :client_id::text || '-' || :r::text, jsonb_build_object('amount', :amount::int, 'currency', 'EUR', 'customer', 'cus_' || :client_id::text));
INSERT INTO payments (tenant, amount, currency) VALUES ('tenant:' || :t, :amount, 'EUR') RETURNING id \gset
SELECT idem_complete('tenant:' || :t, :run::text || '-' || :client_id::text || '-' || :r::text, resource => 'payments/' || :id::text, http_status => 201);
COMMIT;
