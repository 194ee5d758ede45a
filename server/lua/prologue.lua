-- Shared head of every write script (server/store/entitlement_store.py prepends it).
--
-- KEYS[1] items hash, KEYS[2] skus sorted set, KEYS[3] idempotency key, KEYS[4] audit ledger stream, KEYS[5] the
-- player's version (core/feed.py), on a single server KEYS[6..8] the player's change feed partition (index.lua's
-- FEED), then the index keys (index.lua, prepended before this file).
-- ARGV[1] request fingerprint, ARGV[2] idempotency TTL (ms), ARGV[3] operation name, ARGV[4] sku,
-- ARGV[5] actor (API key name), ARGV[6] reason, ARGV[7] idempotency key in clear (for the ledger).
--
-- Replies "R<json>" for a replay of an earlier call with the same key ({"R<json>", version, feed} when the change
-- feed may lack some of the player's version: for the writer's relay), "N<json>" for a new result that changed
-- nothing, {"N<json>", version, at_ms, feed} for a new result that changed the sku (the player's version after it
-- and the commit time), where feed is index.lua's feed_reply(), or an error reply whose first word is a code that
-- server/store/replies.py translates.

local saved = redis.call('GET', KEYS[3])
if saved then
  local fp, op, result = string.match(saved, '^([^\n]*)\n([^\n]*)\n(.*)$')
  if fp ~= ARGV[1] then
    return redis.error_reply('IDEMPOTENCY_CONFLICT ' .. (op or '?'))
  end
  -- A replay writes too: the caller waits for this connection's write to be durable (WAIT / WAITAOF) before it
  -- answers, and a script that wrote nothing moves no write offset, so the wait would answer at once while the
  -- first call's write may still be on the primary alone. Rewriting the record as it is (same value, same expiry)
  -- propagates after that first write (core/lua/append_event.lua does the same for a duplicate webhook).
  redis.call('SET', KEYS[3], saved, 'KEEPTTL')
  -- With the player's version when the feed may lack some of it (feed_behind, index.lua): the first call may have
  -- been applied after its caller gave up (a timeout) and so never relayed; the relay fills the gap.
  local version = tonumber(redis.call('GET', KEYS[5]) or '0')
  if version > 0 and feed_behind(version) then
    return {'R' .. result, version, feed_reply()}
  end
  return 'R' .. result
end

-- One clock for every replica: the Redis server's (same shard for all of one user's keys).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sku = ARGV[4]
local current_raw = redis.call('HGET', KEYS[1], sku)
local current = nil
if current_raw then
  current = cjson.decode(current_raw)
end

-- Remembers the result under the idempotency key and replies with it.
local function remember(result)
  redis.call('SET', KEYS[3], ARGV[1] .. '\n' .. ARGV[3] .. '\n' .. result, 'PX', ARGV[2])
  return 'N' .. result
end

-- Counts the change in the player's version, records it in the audit ledger with that version (`v`: the change
-- feed's relay reads a missed change back from there), then remembers and replies.
local function commit(result, after_raw, extra_fields)
  local version = redis.call('INCR', KEYS[5])
  local fields = {'op', ARGV[3], 'sku', sku, 'idempotency_key', ARGV[7], 'actor', ARGV[5],
                  'reason', ARGV[6], 'at_ms', tostring(now),
                  'before', current_raw or '', 'after', after_raw or '', 'v', tostring(version)}
  for _, v in ipairs(extra_fields) do
    fields[#fields + 1] = v
  end
  redis.call('XADD', KEYS[4], '*', unpack(fields))
  feed_append(version, sku, ARGV[3], now, after_raw)
  return {remember(result), version, now, feed_reply()}
end
