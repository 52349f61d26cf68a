-- Give units back on exact keys (refunds, freed live resources). Never below zero; a key
-- that has gone (its window expired) stays gone rather than coming back without an expiry.
-- KEYS[i]: exact key; ARGV[i]: units to give back.
for i = 1, #KEYS do
  local value = redis.call("GET", KEYS[i])
  if value then
    local left = tonumber(value) - tonumber(ARGV[i])
    if left < 0 then left = 0 end
    redis.call("SET", KEYS[i], left, "KEEPTTL")
  end
end
return #KEYS
