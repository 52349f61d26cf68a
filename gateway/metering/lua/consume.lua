-- Check and consume every charge of one request, all or nothing, in one step.
-- KEYS[i]: the base key of charge i (keys.meter_key without a period), all under one hash tag.
-- The script reads and writes KEYS[i] .. ":" .. <window>, computed here from the clock: such a
-- key is not declared, but it carries the same hash tag, so it lives in the same Cluster slot.
-- ARGV[1]: now, or "" for server time; then per charge: period ("day"|"month"|""), cost,
-- limit (-1: unlimited), ttl seconds for a new window key.
-- Returns {admitted (1|0), refused index (0-based, -1 if admitted), then per charge:
-- exact key, used (after, if admitted), reset epoch (-1 for a gauge)}.
local now = clock_now()
local n = #KEYS
local keys, used, resets = {}, {}, {}
local refused = -1
for i = 1, n do
  local at = 1 + (i - 1) * 4
  keys[i], resets[i] = resolve(KEYS[i], ARGV[at + 1], now)
  used[i] = tonumber(redis.call("GET", keys[i]) or "0")
  local limit = tonumber(ARGV[at + 3])
  if refused < 0 and limit >= 0 and used[i] + tonumber(ARGV[at + 2]) > limit then
    refused = i - 1
  end
end
if refused < 0 then
  for i = 1, n do
    local at = 1 + (i - 1) * 4
    local fresh = redis.call("EXISTS", keys[i]) == 0
    used[i] = redis.call("INCRBY", keys[i], tonumber(ARGV[at + 2]))
    -- every window key expires, set once when the window's key is created
    if fresh and ARGV[at + 1] ~= "" then
      redis.call("EXPIRE", keys[i], tonumber(ARGV[at + 4]))
    end
  end
end
local out = {refused < 0 and 1 or 0, refused}
for i = 1, n do
  out[#out + 1] = keys[i]
  out[#out + 1] = used[i]
  out[#out + 1] = resets[i]
end
return out
