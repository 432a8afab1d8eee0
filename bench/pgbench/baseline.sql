-- (1) Baseline: the payment transaction without idempotency.
\set amount random(100, 100000)
BEGIN;
INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, :amount, 'EUR') RETURNING id;
COMMIT;
