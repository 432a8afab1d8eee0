-- (6) The round-trip floor of (2): the same five statements, with a trivial SELECT of the same
-- arguments in place of idem_begin and of idem_complete. (2) / (6) is what the key costs on
-- top of the round trips that any client-side use of it needs.
\set amount random(100, 100000)
\set r random(1, 1125899906842624)
BEGIN;
SELECT 'execute'::text AS outcome, 'tenant:42 POST /v1/payments'::text AS scope, :run::text || '-' || :client_id::text || '-' || :r::text AS key, jsonb_build_object('amount', :amount::int, 'currency', 'EUR', 'customer', 'cus_' || :client_id::text) AS command;
INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, :amount, 'EUR') RETURNING id \gset
SELECT 'tenant:42 POST /v1/payments'::text AS scope, :run::text || '-' || :client_id::text || '-' || :r::text AS key, 'payments/' || :id::text AS resource, 201 AS http_status;
COMMIT;
