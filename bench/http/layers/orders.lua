-- wrk script of bench/http/layers/run.sh: POST /orders, every request a new Idempotency-Key
-- (PREFIX-<thread>-<n>, a bare token), the same headers and body for every variant.
--   wrk ... -s orders.lua URL -- PREFIX
-- done() prints one line of JSON: requests, seconds, latency (microseconds), the answers that
-- were not 201, those that said Idempotent-Replayed, and the socket errors.
local threads = {}
local prefix

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  counter = 0
  not201 = 0
  replayed = 0
end

local body = '{"sku": "A-1", "qty": 2, "note": "bench"}'

function request()
  counter = counter + 1
  return wrk.format("POST", "/orders", {
    ["X-Tenant"] = "bench",
    ["Idempotency-Key"] = string.format("%s-%d-%d", prefix, id, counter),
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  if status ~= 201 then not201 = not201 + 1 end
  for name, _ in pairs(headers) do
    if string.lower(name) == "idempotent-replayed" then replayed = replayed + 1 end
  end
end

function done(summary, latency, requests)
  local bad, rep = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("not201")
    rep = rep + t:get("replayed")
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "mean_us": %.1f, "p50_us": %d, "p99_us": %d, "not_201": %d, "replayed": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency.mean, latency:percentile(50), latency:percentile(99),
    bad, rep, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
