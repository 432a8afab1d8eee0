-- (6') The least one transaction of this key layer can do, in plain SQL: (6)'s five statements,
-- the first one computing the command's fingerprint (idem_fingerprint, as idem_begin does) and
-- the fourth one writing the key's record once, completed, into bench.key_rows (the columns
-- and indexes of idempotency.records). No lock, no look for an existing key, no claim written
-- before the payment and updated after it. (6') / (6) is the ceiling of (2) / (6) for an
-- implementation in SQL that writes the key's record; (2) / (6') is idem_begin and
-- idem_complete against it.
\set amount random(100, 100000)
\set r random(1, 1125899906842624)
BEGIN;
SELECT 'execute'::text AS outcome, idem_fingerprint(jsonb_build_object('amount', :amount::int, 'currency', 'EUR', 'customer', 'cus_' || :client_id::text)) AS fingerprint \gset
INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, :amount, 'EUR') RETURNING id \gset
INSERT INTO bench.key_rows (created_at, expires_at, lease, owner, attempt, http_status, state, scope, key, fingerprint, resource) VALUES (now(), now() + interval '24 hours', 60000000, to_regrole(current_user), 1, 201, 'c', 'tenant:42 POST /v1/payments', :run::text || '-' || :client_id::text || '-' || :r::text, :fingerprint::bytea, 'payments/' || :id::text);
COMMIT;
