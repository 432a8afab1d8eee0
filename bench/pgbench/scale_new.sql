-- Scale: begin latency on a new, random (UUID-like) key; rolled back so the table keeps its size.
\set r random(1, 1125899906842624)
BEGIN;
SELECT outcome FROM idem_begin('tenant:7 POST /v1/payments', md5(:r::text)::uuid::text, jsonb_build_object('amount', 1, 'currency', 'EUR'));
ROLLBACK;
