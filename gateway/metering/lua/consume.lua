-- Check and consume every charge of one request, all or nothing, in one step, and record
-- which source (allowance, package, overage) paid for each unit a limited counter takes.
-- KEYS[i]: the base key of charge i (keys.meter_key without a period), all under one hash tag.
-- The script reads and writes KEYS[i] .. ":" .. <window>, computed here from the clock: such a
-- key is not declared, but it carries the same hash tag, so it lives in the same Cluster slot.
-- ARGV[1]: now, or "" for server time; ARGV[2]: ttl of per-source counters (statements);
-- ARGV[3..8]: the caller's guess of the month and day windows, each as ":<id>", start and
-- reset epochs: used only when `now` falls inside it, so a skewed caller changes nothing;
-- then per charge: period ("day"|"month"|""), cost, limit (-1: unlimited), ttl seconds for a
-- new window key, package capacity, overage (1|0), history ttl (0: none, -1: no expiry).
-- Returns {admitted (1|0), refused index (0-based, -1 if admitted), then per charge:
-- exact key, used (after, if admitted), reset epoch (-1 for a gauge), package units and
-- overage units of the window (after, if admitted; 0 for an unlimited charge or a gauge)}.
--
-- Every command here is on the decision path of every proxied request, so the script sends
-- only the ones a decision needs (docs/performance.md measures it):
--   * a window's suffix and reset are taken from the caller's guess once checked against
--     `now` (computing them here costs as much as a write), once per period, not per key;
--   * a limited counter is read with one MGET (usage and both source counters); an
--     unlimited counter is not read at all: its INCRBY's reply is its usage;
--   * a new key is told by its INCRBY's reply equal to the cost: EXPIRE only then;
--   * source counters are written only when a charge's units pass the allowance, and the
--     values returned are computed from what was read, not read again.
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
local server_now = nil -- read once: the guard's TIME is also the windows' clock
if guard_id ~= "" then
  guard_marker = string.match(KEYS[1], "^gw:{.-}") .. ":d:" .. guard_id
  if redis.call("EXISTS", guard_marker) == 1 then return {-1} end
  if guard_deadline > 0 then
    local t = redis.call("TIME")
    server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    if server_now > guard_deadline then return {-1} end
  end
end

local now = ARGV[1] == "" and server_now or clock_now()
local source_ttl = ARGV[2]
local n = #KEYS
local width = 7
local first = 8 -- ARGV index before the first charge's fields

-- ==== GCRA: rate meters (gateway/metering/rates.py has the same arithmetic) =============
-- Rate charges come after every quota charge (redis_store.py orders them so), with fields
-- "rate", cost, emission interval (microseconds), burst, and KEYS[i] their exact key
-- (keys.rate_key), holding one number: the theoretical arrival time (TAT), in whole
-- microseconds. `n` is cut to the quota charges, so the quota loops below never see them.
-- Reply per rate charge: key, TAT (after, if admitted), this decision's now (microseconds),
-- 0, 0. Checked after the quotas, applied only if every charge fits.
local rate_from = n + 1
while rate_from > 1 and ARGV[first + (rate_from - 2) * width + 1] == "rate" do
  rate_from = rate_from - 1
end
n = rate_from - 1
local now_us = math.floor(now * 1000000 + 0.5)
local rate_after = {}
local function rates_check(out, refused)
  for i = rate_from, #KEYS do
    local at, o = first + (i - 1) * width, 2 + (i - 1) * 5
    local emission = tonumber(ARGV[at + 3])
    local tat = math.max(tonumber(redis.call("GET", KEYS[i]) or "0"), now_us)
    local after = tat + tonumber(ARGV[at + 2]) * emission
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = KEYS[i], tat, now_us, 0, 0
    if after - now_us > tonumber(ARGV[at + 4]) * emission then
      if refused < 0 then refused = i - 1 end
    else
      rate_after[i] = after
    end
  end
  return refused
end
-- A key is kept until its bucket is full again: then a missing key means the same. Under a
-- caller's clock (ARGV[1], tests' FakeClock) Redis still expires keys in its own time, so
-- they are kept at least a minute there, lest real time empty a bucket fake time filled.
local rate_min_ttl = ARGV[1] == "" and 1 or 60000
local function rates_apply(out)
  for i = rate_from, #KEYS do
    local after = rate_after[i]
    redis.call("SET", KEYS[i], string.format("%.0f", after),
      "PX", math.max(math.ceil((after - now_us) / 1000), rate_min_ttl))
    out[2 + (i - 1) * 5 + 2] = after
  end
end
-- ==== end GCRA =========================================================================

-- period -> {suffix, reset}, filled on first use
local windows = {[""] = {"", -1}}
local guesses = {month = 3, day = 6}
local function window_of(period)
  local found = windows[period]
  if found == nil then
    local at = guesses[period]
    local reset = tonumber(ARGV[at + 2])
    if tonumber(ARGV[at + 1]) <= now and now < reset then
      found = {ARGV[at], reset}
    else
      found = {window(period, now)}
    end
    windows[period] = found
  end
  return found[1], found[2]
end

-- A new key (its INCRBY's reply is the units just added) gets its expiry. `text` is `units`
-- as sent when there is such a string: Lua's number-to-string conversion is not free.
local function add(key, units, text, ttl)
  local after = redis.call("INCRBY", key, text)
  if after == units and ttl then redis.call("EXPIRE", key, ttl) end
  return after
end

-- the units a window's positions (before, after] take from [low, high)
local function share(before, after, low, high)
  local from = math.max(before, low)
  local to = math.min(after, high)
  if to > from then return to - from end
  return 0
end

-- The reply is built in place: per charge, at o = 2 + 5 * (i - 1): o+1 exact key, o+2 used,
-- o+3 reset, o+4 package units, o+5 overage units.
local out = {1, -1}
local refused = -1
for i = 1, n do
  local at, o = first + (i - 1) * width, 2 + (i - 1) * 5
  local suffix, reset = window_of(ARGV[at + 1])
  local key = KEYS[i] .. suffix
  local limit = tonumber(ARGV[at + 3])
  out[o + 1], out[o + 3], out[o + 4], out[o + 5] = key, reset, 0, 0
  -- only a limited counter has a ledger; only a limited charge without overage can refuse
  if limit >= 0 then
    local used
    if suffix ~= "" then
      local found = redis.call("MGET", key, key .. ":package", key .. ":overage")
      used = tonumber(found[1] or "0")
      out[o + 4], out[o + 5] = tonumber(found[2] or "0"), tonumber(found[3] or "0")
    elseif ARGV[at + 6] ~= "1" then
      used = tonumber(redis.call("GET", key) or "0")
    end
    out[o + 2] = used
    if refused < 0 and ARGV[at + 6] ~= "1"
        and used + tonumber(ARGV[at + 2]) > limit + tonumber(ARGV[at + 5]) then
      refused = i - 1
    end
  end
end

refused = rates_check(out, refused)
if refused < 0 then
  rates_apply(out)
  for i = 1, n do
    local at, o = first + (i - 1) * width, 2 + (i - 1) * 5
    local period, cost = ARGV[at + 1], tonumber(ARGV[at + 2])
    local key = out[o + 1]
    -- every window key expires, set once when the window's key is created
    local after = add(key, cost, ARGV[at + 2], period ~= "" and ARGV[at + 4])
    local limit = tonumber(ARGV[at + 3])
    if period ~= "" and limit >= 0 then
      local before = after - cost
      local capacity = limit + tonumber(ARGV[at + 5])
      local to_package = share(before, after, limit, capacity)
      if to_package > 0 then
        out[o + 4] = add(key .. ":package", to_package, to_package, source_ttl)
      end
      local to_overage = share(before, after, capacity, math.huge)
      if to_overage > 0 then
        out[o + 5] = add(key .. ":overage", to_overage, to_overage, source_ttl)
      end
    end
    out[o + 2] = after
    local history = ARGV[at + 7]
    if period ~= "" and history ~= "0" then
      add(KEYS[i] .. ":h" .. window_of("day"), cost, ARGV[at + 2], history ~= "-1" and history)
    end
  end
else
  out[1], out[2] = 0, refused
  -- the charges not read above (unlimited ones) report their usage too
  for i = 1, n do
    local o = 2 + (i - 1) * 5
    if out[o + 2] == nil then out[o + 2] = tonumber(redis.call("GET", out[o + 1]) or "0") end
  end
end
-- Late decisions (see the top): an admitted guarded decision leaves its marker.
if guard_marker and refused < 0 then
  redis.call("SET", guard_marker, string.format("%.17g", now), "PX", ARGV[#ARGV])
end
return out
