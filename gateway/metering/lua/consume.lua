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
-- overage units of the window (after, if admitted)}.
--
-- Late decisions apply nothing (issue 17). The LAST THREE ARGV, after every charge's fields,
-- are: deadline (Redis epoch seconds, 0: none), decision id ("": unguarded), marker ttl (ms).
-- The decision's marker key is <account hash tag part of KEYS[1]> .. ":d:" .. id, as
-- keys.decision_key builds it. The script returns {-1} and changes nothing when Redis TIME
-- is past the deadline (the gateway has given up by then) or when the marker already
-- exists (the gateway voided this id after giving up; void.lua). Otherwise, once the
-- decision is admitted, the marker records the `now` it was decided at, so void.lua can
-- find and undo it if the gateway never read the answer. Redis runs this script and
-- void.lua one at a time, so exactly one of them wins.
local guard_deadline = tonumber(ARGV[#ARGV - 2])
local guard_id = ARGV[#ARGV - 1]
local guard_marker = nil
if guard_id ~= "" then
  guard_marker = string.match(KEYS[1], "^gw:{.-}") .. ":d:" .. guard_id
  if redis.call("EXISTS", guard_marker) == 1 then return {-1} end
  if guard_deadline > 0 then
    local t = redis.call("TIME")
    if tonumber(t[1]) + tonumber(t[2]) / 1000000 > guard_deadline then return {-1} end
  end
end

local now = clock_now()
local source_ttl = tonumber(ARGV[2])
local n = #KEYS
local width = 7
local keys, used, resets, packaged, over = {}, {}, {}, {}, {}
local refused = -1
for i = 1, n do
  local at = 2 + (i - 1) * width
  keys[i], resets[i] = resolve(KEYS[i], ARGV[at + 1], now)
  used[i] = tonumber(redis.call("GET", keys[i]) or "0")
  local limit = tonumber(ARGV[at + 3])
  local capacity = limit + tonumber(ARGV[at + 5])
  if refused < 0 and limit >= 0 and ARGV[at + 6] ~= "1"
      and used[i] + tonumber(ARGV[at + 2]) > capacity then
    refused = i - 1
  end
end

-- the units a window's positions (before, after] take from [low, high)
local function share(before, after, low, high)
  local from = math.max(before, low)
  local to = math.min(after, high)
  if to > from then return to - from end
  return 0
end

local function add_source(key, units)
  if units > 0 then
    local fresh = redis.call("EXISTS", key) == 0
    redis.call("INCRBY", key, units)
    if fresh then redis.call("EXPIRE", key, source_ttl) end
  end
end

if refused < 0 then
  for i = 1, n do
    local at = 2 + (i - 1) * width
    local period, cost, limit = ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    local fresh = redis.call("EXISTS", keys[i]) == 0
    local before = used[i]
    used[i] = redis.call("INCRBY", keys[i], cost)
    -- every window key expires, set once when the window's key is created
    if fresh and period ~= "" then
      redis.call("EXPIRE", keys[i], tonumber(ARGV[at + 4]))
    end
    if period ~= "" and limit >= 0 then
      local capacity = limit + tonumber(ARGV[at + 5])
      add_source(keys[i] .. ":package", share(before, used[i], limit, capacity))
      add_source(keys[i] .. ":overage", share(before, used[i], capacity, math.huge))
    end
    local history_ttl = tonumber(ARGV[at + 7])
    if period ~= "" and history_ttl ~= 0 then
      local day = resolve(KEYS[i] .. ":h", "day", now)
      local new_day = redis.call("EXISTS", day) == 0
      redis.call("INCRBY", day, cost)
      if new_day and history_ttl > 0 then redis.call("EXPIRE", day, history_ttl) end
    end
  end
end
-- Late decisions (see the top): an admitted guarded decision leaves its marker.
if guard_marker and refused < 0 then
  redis.call("SET", guard_marker, string.format("%.17g", now), "PX", tonumber(ARGV[#ARGV]))
end
local out = {refused < 0 and 1 or 0, refused}
for i = 1, n do
  out[#out + 1] = keys[i]
  out[#out + 1] = used[i]
  out[#out + 1] = resets[i]
  out[#out + 1] = tonumber(redis.call("GET", keys[i] .. ":package") or "0")
  out[#out + 1] = tonumber(redis.call("GET", keys[i] .. ":overage") or "0")
end
return out
