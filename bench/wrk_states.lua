-- wrk script: GET /v1/nodes/b<n>/states over BENCH_NODES nodes, in turn.
local counter = 0
local nodes = tonumber(os.getenv("BENCH_NODES") or "100")

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  i = id * 37
end

function request()
  i = i + 1
  return wrk.format("GET", "/v1/nodes/b" .. ((i % nodes) + 1) .. "/states")
end

function done(summary, latency, requests)
  io.write(string.format("STATUS 200 %d\n", summary.requests - summary.errors.status))
  io.write(string.format("DURATION_US %d\n", summary.duration))
  io.write(string.format("LAT_P50_US %d\nLAT_P99_US %d\n", latency:percentile(50), latency:percentile(99)))
end
