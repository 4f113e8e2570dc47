-- wrk script: POST one report per request with varied labels (about 1 in 10 repeats an earlier
-- one, so dedup is part of the load). BENCH_TARGET=alertmanager sends the same load to
-- Alertmanager's /api/v2/alerts (one alert per request) instead of phoenix's /v1/faults.
local counter = 0
local thread_id = 0
local alertmanager = os.getenv("BENCH_TARGET") == "alertmanager"

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  local n = counter
  if counter % 10 == 0 then n = counter - 5 end
  local headers = { ["Content-Type"] = "application/json" }
  if alertmanager then
    local body = string.format('[{"labels":{"alertname":"load","app":"bench","n":"%d-%d"}}]', tid or 0, n)
    return wrk.format("POST", "/api/v2/alerts", headers, body)
  end
  local body = string.format('{"app":"bench","kind":"load","labels":{"n":"%d-%d"}}', tid or 0, n)
  return wrk.format("POST", "/v1/faults", headers, body)
end
