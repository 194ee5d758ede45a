-- One page of ListEntitlements (after kinds.lua and index.lua; its KEYS are the index keys alone), read in one
-- step so the page is consistent.
-- ARGV[1] "all" (include_expired: every held sku, from `skus`) or "live"; ARGV[2] where to start: "-", or "("
-- followed by the sku to continue after; ARGV[3] page size; ARGV[4] ("live") how many expired entries one call may
-- prune and skip, each at most.
-- Replies {"unindexed"} ("live" only: build the indexes first, index_build.lua), or {status, next, sku, record,
-- sku, record, ...}: status "more" (continue after the sku `next`) or "end" (`next` empty); a record is false for
-- a sku removed meanwhile (not possible within one script, kept for the reader's sake).
local size = tonumber(ARGV[3])

local function reply(status, next_sku, skus)
  local out = {status, next_sku or ''}
  if #skus > 0 then
    local records = redis.call('HMGET', IX.items, unpack(skus))
    for i, sku in ipairs(skus) do
      out[#out + 1] = sku
      out[#out + 1] = records[i]
    end
  end
  return out
end

if ARGV[1] == 'all' then
  local skus = redis.call('ZRANGEBYLEX', IX.skus, ARGV[2], '+', 'LIMIT', 0, size + 1)
  if #skus > size then
    skus[#skus] = nil
    return reply('more', skus[#skus], skus)
  end
  return reply('end', nil, skus)
end

index_status()
if not index_ready then
  return {'unindexed'}
end
local now = server_now()
local budget = tonumber(ARGV[4])

local function forget(skus)
  if #skus > 0 then
    redis.call('ZREM', IX.live, unpack(skus))
    redis.call('ZREM', IX.expiry, unpack(skus))
  end
end

-- The earliest expiries first, wherever they sit in sku order, so that `live` keeps close to what is live.
forget(redis.call('ZRANGEBYSCORE', IX.expiry, '-inf', score(now), 'LIMIT', 0, budget))

-- Then walk `live` from the start: a time-limited sku whose expiry has passed since is skipped (and forgotten).
-- The walk stops at the page and one more (to know whether more follow), or after `budget` skipped entries: the
-- page is then short, and continues after the last sku examined.
local found, skipped, start, last = {}, 0, ARGV[2], nil
while true do
  local want = math.max(size + 1 - #found, 64)
  local batch = redis.call('ZRANGEBYLEX', IX.live, start, '+', 'LIMIT', 0, want)
  if #batch == 0 then
    return reply('end', nil, found)
  end
  local expiries = redis.call('ZMSCORE', IX.expiry, unpack(batch))
  local expired = {}
  for i, sku in ipairs(batch) do
    local expires = expiries[i] and tonumber(expiries[i])
    if expires and expires <= now then
      expired[#expired + 1] = sku
      skipped = skipped + 1
    else
      found[#found + 1] = sku
      if #found > size then
        forget(expired)
        found[#found] = nil
        return reply('more', found[#found], found)
      end
    end
    last = sku
    if skipped >= budget then
      forget(expired)
      return reply('more', last, found)
    end
  end
  forget(expired)
  if #batch < want then
    return reply('end', nil, found)
  end
  start = '(' .. last
end
