-- The kind rules every grant follows, shared by grant.lua and the order scripts
-- (server/store/entitlement_store.py prepends this file). Kinds: 1 consumable (quantities add up), 2 permanent
-- (owned once), 3 time-limited (active until `e`).
-- Records are the JSON kept in the items hash: {k kind, q quantity, g granted_at, u updated_at, e expires_at,
-- p period}, times in ms since the epoch on the Redis server's clock.

-- The record after granting `quantity` units of `kind` (time-limited: `quantity` periods of `period` ms) on top
-- of `current` (the decoded stored record of the same kind, or nil). Returns the new record, or nil and an
-- error code for server/store/replies.py.
local function granted_record(current, kind, quantity, period, now, max_total, max_expires)
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
  local expires = base + quantity * period
  if expires > max_expires then
    return nil, 'EXPIRY_LIMIT'
  end
  return {k = 3, q = 1, g = granted_at, u = now, e = expires, p = period}
end

-- The Redis server's clock in ms: one clock for every replica (all of one player's keys are on one shard).
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
