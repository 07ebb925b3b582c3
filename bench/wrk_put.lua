-- wrk script: PUT power targets round-robin over nodes b1..bN, alternating
-- on/off per node; counts responses by status across threads.
local counter = 0
local threads = {}
local nodes = tonumber(os.getenv("BENCH_NODES") or "100")

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  i = id
  flip = {}
  statuses = {}
end

function request()
  i = i + 1
  local n = (i % nodes) + 1
  flip[n] = not flip[n]
  local target = flip[n] and "power on" or "power off"
  local body = '{"target": "' .. target .. '"}'
  return wrk.format("PUT", "/v1/nodes/b" .. n .. "/states/power",
                    {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for code, count in pairs(s) do
      total[code] = (total[code] or 0) + count
    end
  end
  for code, count in pairs(total) do
    io.write(string.format("STATUS %d %d\n", code, count))
  end
  io.write(string.format("DURATION_US %d\n", summary.duration))
  io.write(string.format("LAT_P50_US %d\nLAT_P99_US %d\n", latency:percentile(50), latency:percentile(99)))
end
