-- wrk script for bench/shared_state.py: POST a small chat message as JSON, each request with an
-- Idempotency-Key of its own (so each one claims, finishes and stores a key in the shared state).
local threads = 0
local stamp = tostring(os.time())

function setup(thread)
   threads = threads + 1
   thread:set("tid", stamp .. "-" .. threads)
end

local counter = 0

function request()
   counter = counter + 1
   return wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = "bench-" .. tid .. "-" .. counter,
   }, '{"message":"x","sessionId":"bench"}')
end
