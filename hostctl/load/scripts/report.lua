-- Appended to every shipped script: each thread draws its own random requests, and once the run ends one JSON
-- line gives the full latency distribution (milliseconds) and the error counts, after wrk's own text summary.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

local function ms(us)
  return us == us and us / 1000 or 0  -- NaN (no samples) reads 0
end

function done(summary, latency, requests)
  local percentiles = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9, 99.99}) do
    percentiles[#percentiles + 1] = string.format('"%g":%.3f', q, ms(latency:percentile(q)))
  end
  percentiles[#percentiles + 1] = string.format('"100":%.3f', ms(latency.max))  -- percentile(100) reads 0
  local e = summary.errors
  io.write(string.format(
    'hostctl-wrk-json {"percentiles_ms":{%s},"mean_ms":%.3f,"stdev_ms":%.3f,"max_ms":%.3f,'
      .. '"requests":%d,"duration_s":%.6f,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    table.concat(percentiles, ","), ms(latency.mean), ms(latency.stdev), ms(latency.max),
    summary.requests, summary.duration / 1e6, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout))
end
