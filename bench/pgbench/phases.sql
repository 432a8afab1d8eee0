-- (5) Phases: the claim commits on its own (autocommit), then the effect and the completion
-- commit together in a second transaction, fenced by the attempt.
\set amount random(100, 100000)
\set r random(1, 1125899906842624)
SELECT outcome FROM idem_begin('tenant:42 POST /v1/payments', :run::text || '-p' || :client_id::text || '-' || :r::text, jsonb_build_object('amount', :amount::int, 'currency', 'EUR', 'customer', 'cus_' || :client_id::text));
BEGIN;
INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, :amount, 'EUR') RETURNING id \gset
SELECT idem_complete('tenant:42 POST /v1/payments', :run::text || '-p' || :client_id::text || '-' || :r::text, resource => 'payments/' || :id::text, http_status => 201, attempt => 1);
COMMIT;
