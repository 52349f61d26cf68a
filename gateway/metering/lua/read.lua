-- Read exact keys of one account (0 for absent): statements and usage history.
-- KEYS[i]: exact key.
local out = {}
for i = 1, #KEYS do
  out[i] = tonumber(redis.call("GET", KEYS[i]) or "0")
end
return out
