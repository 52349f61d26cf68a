-- Set one meter's usage in its current window (an admin correction).
-- KEYS[1]: base key; ARGV[1]: now or ""; ARGV[2]: period; ARGV[3]: value; ARGV[4]: ttl.
-- Returns {exact key, value, reset epoch (-1 for a gauge)}.
local now = clock_now()
local key, reset = resolve(KEYS[1], ARGV[2], now)
local fresh = redis.call("EXISTS", key) == 0
redis.call("SET", key, ARGV[3], "KEEPTTL")
if fresh and ARGV[2] ~= "" then
  redis.call("EXPIRE", key, tonumber(ARGV[4]))
end
return {key, tonumber(ARGV[3]), reset}
