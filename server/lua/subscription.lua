-- Records a recurring-subscription event (create, update, non-renewal, cancel) on the player's subscriptions
-- hash, once per event id, atomically.
--
-- (After kinds.lua and index.lua.) KEYS[1] subscriptions hash, KEYS[2] applied-event marker, KEYS[3] ledger
-- stream, then the index keys (index.lua).
-- ARGV[1] event id, ARGV[2] marker TTL (ms), ARGV[3] actor, ARGV[4] action (created, updated, non_renewing,
-- canceled), ARGV[5] subscription id, ARGV[6] the event's fields as JSON (the record's keys; absent = unknown).
--
-- Events can arrive out of order (Xsolla retries, several consumers). A cancel always applies. Any other event
-- changes a canceled or non-renewing subscription only when it moves the next charge past the date that ended
-- it (a re-activation); an older update retried late never resurrects it.
-- Replies JSON {r = "applied" | "stale" | "replayed", record = the stored record}.

local sub_id = ARGV[5]
if redis.call('EXISTS', KEYS[2]) == 1 then
  local raw = redis.call('HGET', KEYS[1], sub_id)
  return cjson.encode({r = 'replayed', record = raw and cjson.decode(raw) or cjson.null})
end
local now = server_now()
local action = ARGV[4]
local incoming = cjson.decode(ARGV[6])
local before = redis.call('HGET', KEYS[1], sub_id)
local current = before and cjson.decode(before) or nil

local fresh = true
if current and action ~= 'canceled' then
  local ended_at = nil
  if current.status == 'canceled' then
    ended_at = current.date_end_ms or current.date_next_charge_ms or 0
  elseif current.status == 'non_renewing' and action ~= 'non_renewing' then
    ended_at = current.date_next_charge_ms or 0
  end
  if ended_at then
    fresh = incoming.date_next_charge_ms ~= nil and incoming.date_next_charge_ms > ended_at
  end
end

local record = current or {id = sub_id}
local result = 'stale'
if fresh then
  result = 'applied'
  for name, value in pairs(incoming) do
    record[name] = value
  end
  local statuses = {created = 'active', updated = 'active', non_renewing = 'non_renewing', canceled = 'canceled'}
  record.status = statuses[action]
  record.updated_at_ms = now
  record.event_id = ARGV[1]
  if action == 'canceled' and not record.date_end_ms then
    record.date_end_ms = now
  end
end
local after = cjson.encode(record)
if fresh then
  put_subscription(sub_id, after, record)
end
local reason = action .. ' subscription ' .. sub_id
if not fresh then
  reason = reason .. ' (older than the stored state: ignored)'
end
redis.call('XADD', KEYS[3], '*', 'op', 'subscription', 'sku', '', 'idempotency_key', ARGV[1], 'actor', ARGV[3],
           'reason', reason, 'at_ms', tostring(now), 'before', before or '', 'after', fresh and after or (before or ''),
           'subscription_id', sub_id)
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return cjson.encode({r = result, record = record})
