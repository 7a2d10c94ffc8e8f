-- wrk script for benchmarks/gateway_latency.py: POST /v1/chat/completions, rotating a few prompts.
--
--   wrk -t1 -c100 -d10s --latency --timeout 10s -s benchmarks/wrk_chat.lua \
--       http://127.0.0.1:8000/v1/chat/completions -- router-ml/auto
--
-- The arguments after `--`: the request's model (default router-ml/auto) and the bearer token to send
-- (default sk-bench; the LiteLLM proxy checks it against its master key). done() prints one line
-- "WRK_JSON {...}": requests, duration, errors and exact latency percentiles in microseconds
-- (wrk's own --latency table rounds them).

local prompts = {
  "What is 17 * 23?",
  "Write a haiku about routers.",
  "Explain TCP slow start in two sentences.",
  "Translate 'good morning' into French.",
  "Which is larger, 2^10 or 10^3?",
}
local requests = {}
local counter = 0

function init(args)
  local model = args[1] or "router-ml/auto"
  local key = args[2] or "sk-bench"
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  for i, prompt in ipairs(prompts) do
    local body = string.format('{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}', model, prompt)
    requests[i] = wrk.format("POST", nil, headers, body)
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
    '"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p99_9": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
