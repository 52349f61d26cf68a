-- Void a decision the gateway gave up on (its answer did not arrive within the budget), so
-- that a call answered 503 is never charged. Redis runs this and consume.lua one at a time:
-- - the decision ran and was admitted: its marker holds the time it was decided at; its
--   units are given back from the very keys it charged (as release.lua gives units back,
--   overage first, then packages), and its history day loses them too;
-- - it has not run yet (a frozen server holds it) or was refused: nothing to give back;
-- either way the marker becomes a tombstone ("void"), so a copy still queued applies nothing.
-- KEYS[1]: the marker (keys.decision_key); KEYS[1 + i]: base key of charge i.
-- ARGV[1]: tombstone ttl (ms); then per charge: period, cost, history (1|0). A rate charge
-- (period "rate", KEYS[1 + i] its exact key) gives back cost times its emission interval:
-- its TAT moves back as release.lua moves it (never below zero: at or before now is full).
local decided = redis.call("GET", KEYS[1])
redis.call("SET", KEYS[1], "void", "PX", tonumber(ARGV[1]))
if not decided or decided == "void" then
  return 0
end
local now = tonumber(decided)

local function take(key, units)
  local value = redis.call("GET", key)
  if not value or units <= 0 then return units end
  local have = tonumber(value)
  local taken = math.min(have, units)
  redis.call("SET", key, have - taken, "KEEPTTL")
  return units - taken
end

for i = 2, #KEYS do
  local at = 2 + (i - 2) * 3
  local period, cost = ARGV[at], tonumber(ARGV[at + 1])
  local key = period == "rate" and KEYS[i] or resolve(KEYS[i], period, now)
  if take(key, cost) < cost then
    take(key .. ":package", take(key .. ":overage", cost))
  end
  if period ~= "" and ARGV[at + 2] == "1" then
    take(resolve(KEYS[i] .. ":h", "day", now), cost)
  end
end
return 1
