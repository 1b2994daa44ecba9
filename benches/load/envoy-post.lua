-- wrk script of benches/load/envoy.sh: POST $BODY_FILE as JSON; with
-- $MODEL_HEADER set, also send X-Gateway-Model-Name (the header-routing floor).
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local model = os.getenv("MODEL_HEADER")
if model and model ~= "" then
  wrk.headers["X-Gateway-Model-Name"] = model
end
