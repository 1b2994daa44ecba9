-- wrk script: POST the body in $BODY_FILE as JSON to the chat route, as a
-- client that honours Retry-After: after a 429 or a 503 the thread's next
-- request waits that many seconds.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local wait_ms = 0

function response(status, headers, body)
  if status == 429 or status == 503 then
    wait_ms = 1000 * (tonumber(headers["Retry-After"] or headers["retry-after"]) or 1)
  else
    wait_ms = 0
  end
end

function delay()
  return wait_ms
end
