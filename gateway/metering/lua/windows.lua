-- Shared prelude of every metering script: the clock and UTC calendar windows.
-- Mirrors gateway/metering/windows.py exactly; the contract tests hold both to the same answers.

-- ARGV[1] is the caller's clock (a test's FakeClock) or "" for Redis server time, so that
-- gateways with skewed clocks still agree on which window a call falls in.
local function clock_now()
  if ARGV[1] ~= "" then
    return tonumber(ARGV[1])
  end
  local t = redis.call("TIME")
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- days since 1970-01-01 -> year, month, day (proleptic Gregorian, H. Hinnant's algorithm)
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The suffix ":<period id>" of the window `now` falls in, the one gateway/metering/keys.py
-- documents, and when that window resets ("" and -1 for a gauge, which has no window).
local function window(period, now)
  if period == "" then
    return "", -1
  end
  local days = math.floor(now / 86400)
  local y, m, d = civil(days)
  if period == "day" then
    return ":" .. string.format("%04d-%02d-%02d", y, m, d), (days + 1) * 86400
  end
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return ":" .. string.format("%04d-%02d", y, m), days_from_civil(ny, nm, 1) * 86400
end

-- The exact key of a meter in the window `now` falls in, and when that window resets.
local function resolve(base, period, now)
  local suffix, reset = window(period, now)
  return base .. suffix, reset
end
