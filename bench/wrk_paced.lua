-- wrk script for the router benchmark (bench/router.py): fixed-rate load. Each connection waits on average
-- $WRK_DELAY_MS between a response and its next request, so C connections send about
-- C * 1000 / WRK_DELAY_MS requests per second (a paced, nearly open-loop load; wrk2 is not packaged).
-- POST bodies cycle through the lines of $WRK_BODIES; the summary is printed as one "WRK_JSON " line.
local bodies = {}
local next_body = 0
local pause_ms = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  for line in io.lines(os.getenv("WRK_BODIES")) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  pause_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
  next_body = math.random(#bodies) - 1
end

-- Exponentially distributed pauses (mean pause_ms): connections do not fire in lockstep, so arrivals are
-- close to a Poisson stream at the target rate instead of bursts of C requests every pause_ms.
function delay()
  return math.floor(-math.log(1 - math.random()) * pause_ms + 0.5)
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/v1/act", headers, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
