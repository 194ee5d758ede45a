-- One page of ListSubscriptions (after kinds.lua and index.lua; its KEYS are the index keys alone): the recurring
-- subscriptions (newest first, then by id), then the time-limited items (newest grant first, then by sku), paged
-- by offset over both. Reads the page's records only: `subs_order` / `subs_active` and `timed` give the order, and
-- the time-limited items in force are those of `expiry` expiring after now (their number, not the player's
-- history, bounds that read; expired ones still in `expiry` are not read).
-- ARGV[1] "1" to include what is no longer in force, ARGV[2] offset, ARGV[3] limit.
-- Replies {"unindexed"} (build the indexes first, index_build.lua), or {recurring total, time-limited total,
-- number of recurring in the page, id, record, ..., sku, record, ...}.
index_status()
if not index_ready then
  return {'unindexed'}
end
local inactive = ARGV[1] == '1'

-- Byte order, as sorted sets order their members (Lua's `<` on strings follows the server's locale).
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end
local offset, limit = tonumber(ARGV[2]), tonumber(ARGV[3])

local recurring_key = inactive and IX.subs_order or IX.subs_active
local recurring_total = redis.call('ZCARD', recurring_key)
local ids = {}
if offset < recurring_total then
  ids = redis.call('ZRANGE', recurring_key, offset, offset + limit - 1)
end
local timed_offset = math.max(0, offset - recurring_total)
local timed_limit = limit - #ids
local timed_total, skus = 0, {}

if inactive then
  timed_total = redis.call('ZCARD', IX.timed)
  if timed_limit > 0 and timed_offset < timed_total then
    skus = redis.call('ZRANGE', IX.timed, timed_offset, timed_offset + timed_limit - 1)
  end
else
  local active = redis.call('ZRANGEBYSCORE', IX.expiry, '(' .. score(server_now()), '+inf')
  timed_total = #active
  if timed_limit > 0 and timed_offset < timed_total then
    -- Ordered as `timed` orders them. unpack() takes a few thousand values at most: chunks.
    local order = {}
    for first = 1, #active, 1000 do
      local chunk = {unpack(active, first, math.min(first + 999, #active))}
      local scores = redis.call('ZMSCORE', IX.timed, unpack(chunk))
      for i, sku in ipairs(chunk) do
        order[#order + 1] = {tonumber(scores[i]) or 0, sku}
      end
    end
    table.sort(order, function(a, b)
      if a[1] ~= b[1] then
        return a[1] < b[1]
      end
      return bytes_less(a[2], b[2])
    end)
    for i = timed_offset + 1, math.min(timed_offset + timed_limit, #order) do
      skus[#skus + 1] = order[i][2]
    end
  end
end

local out = {recurring_total, timed_total, #ids}
local function add(hash, names)
  if #names > 0 then
    local records = redis.call('HMGET', hash, unpack(names))
    for i, name in ipairs(names) do
      out[#out + 1] = name
      out[#out + 1] = records[i]
    end
  end
end
add(IX.subs, ids)
add(IX.items, skus)
return out
