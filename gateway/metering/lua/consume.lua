-- Check and consume every charge of one request, all or nothing, in one step, and record
-- which source (allowance, package, overage) paid for each unit a limited counter takes.
-- KEYS[i]: the base key of charge i (keys.meter_key without a period), all under one hash tag.
-- The script reads and writes KEYS[i] .. ":" .. <window>, computed here from the clock: such a
-- key is not declared, but it carries the same hash tag, so it lives in the same Cluster slot.
-- ARGV[1]: now, or "" for server time; ARGV[2]: ttl of per-source counters (statements);
-- then per charge: period ("day"|"month"|""), cost, limit (-1: unlimited), ttl seconds for a
-- new window key, package capacity, overage (1|0), history ttl (0: none, -1: no expiry).
-- Returns {admitted (1|0), refused index (0-based, -1 if admitted), then per charge:
-- exact key, used (after, if admitted), reset epoch (-1 for a gauge), package units and
-- overage units of the window (after, if admitted; 0 for an unlimited charge or a gauge)}.
--
-- Every command here is on the decision path of every proxied request, so the script sends
-- only the ones a decision needs (docs/performance.md measures it):
--   * a window's suffix and reset are computed once per period, not once per key;
--   * a limited counter is read with one MGET (usage and both source counters); an
--     unlimited counter is not read at all: its INCRBY's reply is its usage;
--   * a new key is told by its INCRBY's reply equal to the cost: EXPIRE only then;
--   * source counters are written only when a charge's units pass the allowance, and the
--     values returned are computed from what was read, not read again.
local now = clock_now()
local source_ttl = tonumber(ARGV[2])
local n = #KEYS
local width = 7

local windows = {}
local function window_of(period)
  local found = windows[period]
  if found == nil then
    local suffix, reset = window(period, now)
    found = {suffix, reset}
    windows[period] = found
  end
  return found[1], found[2]
end

-- a new key (its INCRBY's reply is the units just added) gets its expiry; ttl <= 0: none
local function add(key, units, ttl)
  local after = redis.call("INCRBY", key, units)
  if after == units and ttl > 0 then redis.call("EXPIRE", key, ttl) end
  return after
end

-- the units a window's positions (before, after] take from [low, high)
local function share(before, after, low, high)
  local from = math.max(before, low)
  local to = math.min(after, high)
  if to > from then return to - from end
  return 0
end

local keys, resets, used, packaged, over = {}, {}, {}, {}, {}
local limits, ledger = {}, {}
local refused = -1
for i = 1, n do
  local at = 2 + (i - 1) * width
  local period = ARGV[at + 1]
  local suffix, reset = window_of(period)
  keys[i], resets[i] = KEYS[i] .. suffix, reset
  limits[i] = tonumber(ARGV[at + 3])
  packaged[i], over[i] = 0, 0
  -- only a limited counter has a ledger; only a limited charge without overage can refuse
  ledger[i] = period ~= "" and limits[i] >= 0
  local can_refuse = limits[i] >= 0 and ARGV[at + 6] ~= "1"
  if ledger[i] then
    local found = redis.call("MGET", keys[i], keys[i] .. ":package", keys[i] .. ":overage")
    used[i] = tonumber(found[1] or "0")
    packaged[i], over[i] = tonumber(found[2] or "0"), tonumber(found[3] or "0")
  elseif can_refuse then
    used[i] = tonumber(redis.call("GET", keys[i]) or "0")
  end
  if refused < 0 and can_refuse
      and used[i] + tonumber(ARGV[at + 2]) > limits[i] + tonumber(ARGV[at + 5]) then
    refused = i - 1
  end
end

if refused < 0 then
  for i = 1, n do
    local at = 2 + (i - 1) * width
    local period, cost = ARGV[at + 1], tonumber(ARGV[at + 2])
    -- every window key expires, set once when the window's key is created
    used[i] = add(keys[i], cost, period ~= "" and tonumber(ARGV[at + 4]) or 0)
    if ledger[i] then
      local before = used[i] - cost
      local capacity = limits[i] + tonumber(ARGV[at + 5])
      local to_package = share(before, used[i], limits[i], capacity)
      local to_overage = share(before, used[i], capacity, math.huge)
      if to_package > 0 then
        packaged[i] = add(keys[i] .. ":package", to_package, source_ttl)
      end
      if to_overage > 0 then
        over[i] = add(keys[i] .. ":overage", to_overage, source_ttl)
      end
    end
    local history_ttl = tonumber(ARGV[at + 7])
    if period ~= "" and history_ttl ~= 0 then
      local day = window_of("day")
      add(KEYS[i] .. ":h" .. day, cost, history_ttl)
    end
  end
else
  -- refused: the charges not read above (unlimited counters) report their usage too
  for i = 1, n do
    if used[i] == nil then used[i] = tonumber(redis.call("GET", keys[i]) or "0") end
  end
end

local out = {refused < 0 and 1 or 0, refused}
for i = 1, n do
  out[#out + 1] = keys[i]
  out[#out + 1] = used[i]
  out[#out + 1] = resets[i]
  out[#out + 1] = packaged[i]
  out[#out + 1] = over[i]
end
return out
