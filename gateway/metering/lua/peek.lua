-- Read meters in their current windows without changing anything.
-- KEYS[i]: base key; ARGV[1]: now or ""; then per charge: period.
-- Returns per charge: exact key, used, reset epoch (-1 for a gauge), package units,
-- overage units.
local now = clock_now()
local out = {}
for i = 1, #KEYS do
  local key, reset = resolve(KEYS[i], ARGV[i + 1], now)
  out[#out + 1] = key
  out[#out + 1] = tonumber(redis.call("GET", key) or "0")
  out[#out + 1] = reset
  out[#out + 1] = tonumber(redis.call("GET", key .. ":package") or "0")
  out[#out + 1] = tonumber(redis.call("GET", key .. ":overage") or "0")
end
return out
