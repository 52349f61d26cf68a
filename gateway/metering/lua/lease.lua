-- Lease allowance units to one gateway process, which admits from them locally
-- (gateway/metering/leases.py). Only the allowance is leased: packages and overage stay
-- decided per request by consume.lua, so a leased unit is never paid from a source.
-- KEYS[i]: the base key of counter i (keys.meter_key without a period), one hash tag.
-- ARGV[1]: now, or "" for server time; then per counter: period, cost, limit, ttl of a new
-- window key, lease size, history ttl (0: none, -1: no expiry), units given back, and the
-- exact window key and history key they were held on ("" when none). Keys given back on
-- are built from KEYS[i] by the caller, so they share its hash tag and Cluster slot.
-- Returns per counter: window key, history key ("" if none), units granted (0: not even
-- the cost was left), window usage after the grant, reset epoch.
local now = clock_now()
local out = {}
-- as release.lua: never below zero, a key gone stays gone; the units returned are the last
-- positions of the window, so a window's source counters give them back first
local function back(key, units)
  if key == "" or units <= 0 then return units end
  local value = redis.call("GET", key)
  if not value then return units end
  local have = tonumber(value)
  redis.call("SET", key, math.max(have - units, 0), "KEEPTTL")
  return units - math.min(have, units)
end
for i = 1, #KEYS do
  local at = 1 + (i - 1) * 9
  local cost, limit = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local returned = tonumber(ARGV[at + 7])
  if ARGV[at + 8] ~= "" then
    back(ARGV[at + 8], returned)
    back(ARGV[at + 8] .. ":package", back(ARGV[at + 8] .. ":overage", returned))
  end
  back(ARGV[at + 9], returned)
  local key, reset = resolve(KEYS[i], ARGV[at + 1], now)
  local used = tonumber(redis.call("GET", key) or "0")
  local units = math.min(math.max(tonumber(ARGV[at + 5]), cost), limit - used)
  local history = ""
  if units < cost then
    units = 0
  else
    used = redis.call("INCRBY", key, units)
    if used == units then redis.call("EXPIRE", key, ARGV[at + 4]) end
    local keep = ARGV[at + 6]
    if keep ~= "0" then
      history = KEYS[i] .. ":h" .. window("day", now)
      if redis.call("INCRBY", history, units) == units and keep ~= "-1" then
        redis.call("EXPIRE", history, keep)
      end
    end
  end
  local o = (i - 1) * 5
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = key, history, units, used, reset
end
return out
