-- Read meters in their current windows without changing anything.
-- KEYS[i]: base key; ARGV[1]: now or ""; then per charge: period.
-- Returns per charge: exact key, used, reset epoch (-1 for a gauge), package units,
-- overage units. A rate charge (period "rate", KEYS[i] its exact key) returns as
-- consume.lua does: key, TAT (microseconds, at least now), now (microseconds), 0, 0.
local now = clock_now()
local out = {}
for i = 1, #KEYS do
  if ARGV[i + 1] == "rate" then
    local now_us = math.floor(now * 1000000 + 0.5)
    out[#out + 1] = KEYS[i]
    out[#out + 1] = math.max(tonumber(redis.call("GET", KEYS[i]) or "0"), now_us)
    out[#out + 1] = now_us
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local key, reset = resolve(KEYS[i], ARGV[i + 1], now)
    out[#out + 1] = key
    out[#out + 1] = tonumber(redis.call("GET", key) or "0")
    out[#out + 1] = reset
    out[#out + 1] = tonumber(redis.call("GET", key .. ":package") or "0")
    out[#out + 1] = tonumber(redis.call("GET", key .. ":overage") or "0")
  end
end
return out
