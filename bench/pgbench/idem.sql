-- (2) One-transaction idempotency: the same transaction between idem_begin and idem_complete,
-- with a new key every time (run tag, client, 50 random bits).
\set amount random(100, 100000)
\set r random(1, 1125899906842624)
BEGIN;
SELECT outcome FROM idem_begin('tenant:42 POST /v1/payments', :run::text || '-' || :client_id::text || '-' || :r::text, jsonb_build_object('amount', :amount::int, 'currency', 'EUR', 'customer', 'cus_' || :client_id::text));
INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, :amount, 'EUR') RETURNING id \gset
SELECT idem_complete('tenant:42 POST /v1/payments', :run::text || '-' || :client_id::text || '-' || :r::text, resource => 'payments/' || :id::text, http_status => 201);
COMMIT;
