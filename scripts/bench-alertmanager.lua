-- wrk script: POST one alert per request to Alertmanager's /api/v2/alerts, with varied labels
-- (about 1 in 10 repeats an earlier one), the same shape of load as bench-report.lua.
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  local n = counter
  if counter % 10 == 0 then n = counter - 5 end
  local body = string.format('[{"labels":{"alertname":"load","app":"bench","n":"%d-%d"}}]', tid or 0, n)
  return wrk.format("POST", "/api/v2/alerts", { ["Content-Type"] = "application/json" }, body)
end
