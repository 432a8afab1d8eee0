-- (4) The hand-written PL/pgSQL alternative (bench/alt.sql), same transaction, new keys.
\set amount random(100, 100000)
\set r random(1, 1125899906842624)
BEGIN;
SELECT outcome FROM bench.alt_begin('tenant:42 POST /v1/payments', :run::text || '-' || :client_id::text || '-' || :r::text, jsonb_build_object('amount', :amount::int, 'currency', 'EUR', 'customer', 'cus_' || :client_id::text));
INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, :amount, 'EUR') RETURNING id \gset
SELECT bench.alt_complete('tenant:42 POST /v1/payments', :run::text || '-' || :client_id::text || '-' || :r::text, p_resource => 'payments/' || :id::text, p_http_status => 201);
COMMIT;
