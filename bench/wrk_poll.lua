-- wrk script: GET the paths of the file BENCH_PATHS (one a line: path, then a tab and
-- the If-None-Match to send, or nothing) in turn, with BENCH_TOKEN as a bearer
-- token when set; counts the responses by status across threads.
local counter = 0
local threads = {}
local paths, tags = {}, {}
for line in io.lines(os.getenv("BENCH_PATHS")) do
  local path, tag = line:match("^([^\t]+)\t?(.*)$")
  table.insert(paths, path)
  table.insert(tags, tag)
end
local token = os.getenv("BENCH_TOKEN") or ""

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  i = id * 37
  statuses = {}
end

function request()
  i = i + 1
  local n = (i % #paths) + 1
  local headers = {}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if tags[n] ~= "" then headers["If-None-Match"] = tags[n] end
  return wrk.format("GET", paths[n], headers)
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
  io.write(string.format("ERRORS %d\n", summary.errors.connect + summary.errors.read + summary.errors.write
                         + summary.errors.timeout))
  io.write(string.format("DURATION_US %d\n", summary.duration))
  io.write(string.format("LAT_P50_US %d\nLAT_P99_US %d\n", latency:percentile(50), latency:percentile(99)))
end
