-- wrk script for POST /orders: the k6 body, a unique client_order_id per
-- request, and a count of non-202 answers.
--
--   wrk -t1 -c35 -d30s -s bench/wrk/orders.lua http://127.0.0.1:8080
--
-- Prints one JSON line at the end (`wrk-json {...}`) that `just bench` (scripts/omsbench) reads.

local currencies = { "USD", "GBP", "JPY", "CHF", "AUD", "CAD" }
local channels = { 0, 1, 2, 3, 4, 11, 12, 13, 14, 21, 23, 31, 32, 33, 34, 41, 42, 51, 52, 53, 54, 61 }
local run = string.format("%x", os.time())
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  rejected = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  -- oms refuses order requests without an API key; the relay ignores it.
  local key = os.getenv("OMS_KEY")
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
end

function request()
  n = n + 1
  local body = string.format(
    '{"src_currency":"%s","dst_currency":"EUR","side":"%s","price":"%d.25","quantity":"%d","channel":%d,"description":"wrk load","client_order_id":"wrk-%s-%d-%d"}',
    currencies[n % #currencies + 1],
    (n % 2 == 0) and "buy" or "sell",
    100 + n % 900,
    1 + n % 50,
    channels[n % #channels + 1],
    run, id, n)
  return wrk.format(nil, "/orders", nil, body)
end

function response(status, headers, body)
  if status ~= 202 then
    rejected = rejected + 1
  end
end

function done(summary, latency, requests)
  local rejected_total = 0
  for _, thread in ipairs(threads) do
    rejected_total = rejected_total + thread:get("rejected")
  end
  io.write(string.format(
    'wrk-json {"requests":%d,"seconds":%.3f,"errors":%d,"rejected":%d,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    rejected_total,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3))
end
