-- order_canceled (after kinds.lua and order.lua): undoes exactly what the order's order_paid granted, newest
-- line first, and marks the order canceled. A cancel that arrives before its order_paid is remembered
-- (`canceled_before_paid`), so the late order_paid grants nothing.
-- Results: "applied", "replayed", "canceled_before_paid". The cancel of an order whose order_paid granted nothing by
-- policy (`withheld`) undoes nothing and says so on the ledger.
--
-- Undoing a line, against the record as it is now (other grants may have happened since):
--   consumable     the quantity the order added is taken back, not below 0; at 0 the sku is removed;
--   permanent      removed if this order granted it, left alone if the player held it before;
--   time-limited   the expiry moves back by the time the order added; if that is not after the expiry the
--                  player had before the order, or not after now, the record from before the order is restored
--                  (or the sku removed, when it was not held).
-- A sku no longer held, or held as another kind, is left alone (revoked or re-granted since).

local status = redis.call('HGET', order_key, 'status')
if status == 'canceled' then
  return reply(replayed(status))
end
if status ~= 'paid' then
  save_order({'status', 'canceled', 'granted', '0', 'canceled_event_id', ARGV[1], 'canceled_at_ms', tostring(now),
              'canceled_before_paid', '1'})
  ledger('order_canceled', 'order_canceled ' .. order_id .. ' before its order_paid: nothing to undo', '')
  return reply('canceled_before_paid')
end

local grants = cjson.decode(redis.call('HGET', order_key, 'grants') or '[]')
local undone = 0
for i = #grants, 1, -1 do
  local grant = grants[i]
  local entry = held(grant.s)
  local current = entry.rec
  if current and current.k == grant.k then
    local before = entry.raw
    local record, restore = nil, false
    if grant.k == 1 then
      local quantity = current.q - grant.q
      if quantity > 0 then
        record = {k = 1, q = quantity, g = current.g, u = now}
      end
    elseif grant.k == 2 then
      if not grant.new then
        record = current
      end
    else
      local previous = grant.b and cjson.decode(grant.b) or nil
      local expires = current.e - grant.ms
      if expires <= now or (previous and previous.e and expires <= previous.e) then
        restore = true
      else
        record = {k = 3, q = 1, g = current.g, u = now, e = expires, p = current.p, m = current.m}
      end
    end
    if restore then
      entry.raw = grant.b
      entry.rec = grant.b and cjson.decode(grant.b) or nil
    elseif record ~= current then
      entry.raw = record and cjson.encode(record) or nil
      entry.rec = record
    end
    if entry.raw ~= before then
      undone = undone + 1
      ledger('cancel', 'order_canceled ' .. order_id, grant.s, before, entry.raw,
             {'quantity', string.format('%d', grant.n or 1)})
    end
  end
end

local withheld = redis.call('HGET', order_key, 'withheld')
if withheld then
  ledger('order_canceled', 'order_canceled ' .. order_id .. ' of a ' .. withheld .. ' order that granted nothing: '
         .. 'nothing to undo', '', '', '', {'withheld', withheld})
end
write_items()
save_order({'status', 'canceled', 'granted', '0', 'canceled_event_id', ARGV[1], 'canceled_at_ms', tostring(now)})
return reply('applied', undone)
