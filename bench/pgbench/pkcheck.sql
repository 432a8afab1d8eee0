-- (3'') The least a replay of this key layer can do in plain SQL: (3')'s primary-key SELECT
-- with the command's fingerprint (idem_fingerprint: its canonical form, as idem_begin computes
-- it) compared with the stored one. No function scan around a call, no state, no lease, no
-- owner. (3'') / (3') is the ceiling of (3) / (3') for an implementation in SQL (the
-- extension's direct path reads the record without starting an executor, so its replay can
-- cost fewer instructions than this); (3) / (3'') is idem_begin against it.
\set k random(1, :nreplay)
SELECT *, fingerprint = idem_fingerprint(jsonb_build_object('amount', :k::int, 'currency', 'EUR', 'customer', 'cus_' || :k::text)) AS same_command FROM bench.replay_ref WHERE scope = 'bench replay' AND key = 'r-' || :k::text;
