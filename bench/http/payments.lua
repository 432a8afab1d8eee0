-- wrk script of bench/http/run.sh: POST /v1/payments.
--   wrk ... -s payments.lua URL -- new PREFIX      every request a new Idempotency-Key
--   wrk ... -s payments.lua URL -- replay PREFIX N  keys PREFIX-0 .. PREFIX-(N-1), created
--                                                   before the run, sent again in turn
-- done() prints one line of JSON for run.sh: requests, seconds, latency (microseconds) and
-- the count of answers that were not 201.
local threads = {}
local mode, prefix, nkeys

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode, prefix, nkeys = args[1], args[2], tonumber(args[3] or "0")
  counter = 0
  not201 = 0
end

local body = '{"amount": "10.00", "currency": "EUR", "card": "tok_visa"}'

function request()
  counter = counter + 1
  local key
  if mode == "new" then
    key = string.format("%s-%d-%d", prefix, id, counter)
  else
    key = string.format("%s-%d", prefix, (counter * 7 + id) % nkeys)
  end
  return wrk.format("POST", "/v1/payments", {
    ["Authorization"] = "Bearer bench",
    ["Idempotency-Key"] = '"' .. key .. '"',
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  if status ~= 201 then not201 = not201 + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("not201") end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "mean_us": %.1f, "p50_us": %d, "p99_us": %d, "not_201": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency.mean, latency:percentile(50), latency:percentile(99),
    bad, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
