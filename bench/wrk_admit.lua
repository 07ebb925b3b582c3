-- wrk script: one "power on" PUT per node x1..xN, nodes shared out between
-- threads so that no node is asked twice; counts responses by status.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  n = id + 1
  step = counter
  statuses = {}
end

function request()
  local path = "/v1/nodes/x" .. n .. "/states/power"
  n = n + 2
  return wrk.format("PUT", path, {["Content-Type"] = "application/json"}, '{"target": "power on"}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + count
    end
  end
  for code, count in pairs(total) do
    io.write(string.format("STATUS %d %d\n", code, count))
  end
  io.write(string.format("DURATION_US %d\n", summary.duration))
  io.write(string.format("LAT_P50_US %d\nLAT_P99_US %d\n", latency:percentile(50), latency:percentile(99)))
end
