-- wrk script for the passthrough scenario: ~1 KiB JSON chat requests, each body
-- distinct (a per-thread counter), not streamed. Prints one JSON line at the end.
local counter = 0
local thread_id = 0
local filler = string.rep("lorem ipsum dolor sit amet ", 32)
local tag = os.getenv("BENCH_TAG") or "run"
local headers = { ["Content-Type"] = "application/json" }
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^%s*([^:]+):%s*(.*)$")
  headers[name] = value
end

local threads = {}
function setup(thread)
  thread_id = thread_id + 1
  thread:set("id", thread_id)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  local body = '{"model":"mock","stream":false,"messages":[{"role":"system","content":"'
    .. filler .. '"},{"role":"user","content":"request ' .. tag .. ' ' .. tostring(id) .. '-' .. counter
    .. '"}],"mock":{"tokens":16}}'
  return wrk.format("POST", "/v1/chat/completions", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
