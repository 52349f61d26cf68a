-- Give units back on exact keys (refunds, freed live resources). Never below zero; a key
-- that has gone (its window expired) stays gone rather than coming back without an expiry.
-- The units given back are the last drawn: they leave the overage counter first, then the
-- package counter, so the ledger stays positional.
-- KEYS[i]: exact key; ARGV[i]: units to give back.
local function take(key, units)
  local value = redis.call("GET", key)
  if not value or units <= 0 then return units end
  local have = tonumber(value)
  local taken = math.min(have, units)
  redis.call("SET", key, have - taken, "KEEPTTL")
  return units - taken
end
for i = 1, #KEYS do
  local value = redis.call("GET", KEYS[i])
  if value then
    local cost = tonumber(ARGV[i])
    local left = tonumber(value) - cost
    if left < 0 then left = 0 end
    redis.call("SET", KEYS[i], left, "KEEPTTL")
    take(KEYS[i] .. ":package", take(KEYS[i] .. ":overage", cost))
  end
end
return #KEYS
