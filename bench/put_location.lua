-- wrk script of the ingest benchmark: PUT /locations/NL/GFX/<id> with a unique id per request.
--
--   wrk -t2 -c64 -d<D>s --timeout 30s -s bench/put_location.lua <url> -- <prefix> <body-template> <measure-s> <token>
--
-- Each thread sends for <measure-s> seconds, then delay() parks every connection once its request
-- in flight has been answered, so that nothing is abandoned when wrk stops at -d: every request sent
-- has been answered and counted, which makes "stored events == 1000 answers" an exact check.
-- done() prints one JSON line starting with {"bench": with the counts, the send window and latencies.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC, the clock of Python's time.monotonic()
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  local f = assert(io.open(args[2], "rb"))
  local template = f:read("*a")
  f:close()
  head, tail = template:match("^(.-)@ID@(.*)$")
  measure = tonumber(args[3])
  hdrs = {["Authorization"] = "Token " .. args[4], ["Content-Type"] = "application/json"}
  sent, answered, ok, other = 0, 0, 0, 0
  first, last, stop_at = 0, 0, nil
  -- wrk builds one request in thread 0's state to check the script before any is sent: not counted
  probe = (tid == 0)
end

function request()
  if probe then
    probe = false
    return wrk.format("PUT", "/locations/NL/GFX/probe", hdrs, head .. "probe" .. tail)
  end
  if stop_at == nil then
    first = now()
    stop_at = first + measure
  end
  sent = sent + 1
  local id = prefix .. tid .. "-" .. sent
  return wrk.format("PUT", "/locations/NL/GFX/" .. id, hdrs, head .. id .. tail)
end

function delay()
  if stop_at ~= nil and now() >= stop_at then
    return 3600000
  end
  return 0
end

function response(status, headers, body)
  answered = answered + 1
  if status == 200 and body and body:find('"status_code":1000', 1, true) then
    ok = ok + 1
  else
    other = other + 1
  end
  last = now()
end

function done(summary, latency, requests)
  local s, a, o, x = 0, 0, 0, 0
  local t0, t1 = nil, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    a = a + t:get("answered")
    o = o + t:get("ok")
    x = x + t:get("other")
    local f, l = t:get("first"), t:get("last")
    if f > 0 and (t0 == nil or f < t0) then t0 = f end
    if l > t1 then t1 = l end
  end
  io.write(string.format(
    '{"bench":"wrk","sent":%d,"answered":%d,"ok":%d,"other":%d,"first":%.6f,"last":%.6f,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"socket_errors":%d}\n',
    s, a, o, x, t0 or 0, t1, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write))
end
