-- (3') What replay is compared with: a primary-key SELECT of one row of the same size.
\set k random(1, :nreplay)
SELECT * FROM bench.replay_ref WHERE scope = 'bench replay' AND key = 'r-' || :k::text;
