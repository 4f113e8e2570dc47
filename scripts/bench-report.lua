-- wrk script: POST fault reports with varied fingerprints (about 1 in 10 repeats an earlier one,
-- so dedup is part of the load).
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
  local body = string.format('{"app":"bench","kind":"load","labels":{"n":"%d-%d"}}', tid or 0, n)
  return wrk.format("POST", "/v1/faults", { ["Content-Type"] = "application/json" }, body)
end
