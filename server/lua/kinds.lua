-- The kind rules every grant follows, shared by grant.lua and the order scripts
-- (server/store/entitlement_store.py prepends this file). Kinds: 1 consumable (quantities add up), 2 permanent
-- (owned once), 3 time-limited (active until `e`).
-- Records are the JSON kept in the items hash: {k kind, q quantity, g granted_at, u updated_at, e expires_at,
-- p period, m months}, times in ms since the epoch on the Redis server's clock. A time-limited item's period is
-- either a fixed length (`p`, ms: minutes, hours, days, weeks) or a number of calendar months (`m`: months and
-- years, a year being 12); a record holds the one its last grant used.

-- Calendar arithmetic in UTC on the proleptic Gregorian calendar (H. Hinnant's days_from_civil and
-- civil_from_days): days since 1970-01-01 of a date, and back. Exact in Lua's doubles far past MAX_EXPIRES_AT_MS.
local function days_from_civil(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then
    y = y + 1
  end
  return y, m, d
end

local function days_in_month(y, m)
  if m == 2 then
    if (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 then
      return 29
    end
    return 28
  elseif m == 4 or m == 6 or m == 9 or m == 11 then
    return 30
  end
  return 31
end

-- `ms` plus `months` calendar months, in UTC: the same day of the month at the same time of day, or the month's
-- last day when it is shorter (Jan 31 + 1 month = Feb 28, or 29 in a leap year).
local function add_months(ms, months)
  local day_ms = 86400000
  local days = math.floor(ms / day_ms)
  local time_of_day = ms - days * day_ms
  local y, m, d = civil_from_days(days)
  local index = y * 12 + (m - 1) + months
  local year = math.floor(index / 12)
  local month = index - year * 12 + 1
  return days_from_civil(year, month, math.min(d, days_in_month(year, month))) * day_ms + time_of_day
end

-- The record after granting `quantity` units of `kind` (time-limited: `quantity` periods of `months` calendar
-- months when `months` > 0, else of `period` ms) on top of `current` (the decoded stored record of the same kind,
-- or nil). Returns the new record, or nil and an error code for server/store/replies.py.
local function granted_record(current, kind, quantity, period, months, now, max_total, max_expires)
  local granted_at = now
  if current then
    granted_at = current.g
  end
  if kind == 1 then
    local total = quantity
    if current then
      total = total + current.q
    end
    if total > max_total then
      return nil, 'QUANTITY_LIMIT ' .. total
    end
    return {k = 1, q = total, g = granted_at, u = now}
  elseif kind == 2 then
    return {k = 2, q = 1, g = granted_at, u = now}
  end
  -- Still active: the periods add up. Expired or never held: a new period starts now.
  local base = now
  if current and current.e and current.e > now then
    base = current.e
  end
  -- Calendar months are added in one step (Jan 31 + 2 months = Mar 31), so a line of quantity n ends where n
  -- months from its start end; successive grants each add to the expiry they find.
  local expires
  if months > 0 then
    expires = add_months(base, quantity * months)
  else
    expires = base + quantity * period
  end
  if expires > max_expires then
    return nil, 'EXPIRY_LIMIT'
  end
  if months > 0 then
    return {k = 3, q = 1, g = granted_at, u = now, e = expires, m = months}
  end
  return {k = 3, q = 1, g = granted_at, u = now, e = expires, p = period}
end

-- The Redis server's clock in ms: one clock for every replica (all of one player's keys are on one shard).
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
