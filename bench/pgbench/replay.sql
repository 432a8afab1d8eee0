-- (3) Replay: idem_begin on a completed key (the command is fingerprinted and compared).
\set k random(1, :nreplay)
SELECT * FROM idem_begin('bench replay', 'r-' || :k::text, jsonb_build_object('amount', :k::int, 'currency', 'EUR', 'customer', 'cus_' || :k::text));
