-- Scale: begin latency on a random stored key (a replay).
\set i random(1, :nkeys)
SELECT outcome FROM idem_begin('tenant:' || (:i % 1000)::text || ' POST /v1/payments', md5(:i::text)::uuid::text, jsonb_build_object('amount', :i::int, 'currency', 'EUR'));
