-- order_paid (after kinds.lua and order.lua): grants the order's lines unless the order was paid already
-- (replay) or canceled first (its cancel arrived before this event: nothing is granted).
-- ARGV[5] grantable lines as JSON [{s = sku, k = catalog kind (0 plain), p = catalog period ms, m = catalog period
-- in calendar months (0 when `p` applies), q = quantity}],
-- ARGV[6] maximum consumable total, ARGV[7] maximum expiry (ms since the epoch), ARGV[8] why the order is to
-- grant nothing by policy ("sandbox": a test payment the project's policy ignores; "" to grant), ARGV[9] the
-- ledger's reason for that.
-- Results: "applied", "replayed", "ignored" (paid after canceled), "withheld" (paid, nothing granted by policy:
-- the order hash says `withheld`, its grants are empty, so its cancel undoes nothing). Errors
-- "QUANTITY_LIMIT <total> <sku>" and "EXPIRY_LIMIT <sku>" are raised before anything is written.

local status = redis.call('HGET', order_key, 'status')
if status == 'paid' then
  return reply(replayed(status))
end
if status == 'canceled' then
  if redis.call('HEXISTS', order_key, 'paid_event_id') == 1 then
    return reply(replayed(status))
  end
  redis.call('HSET', order_key, 'paid_event_id', ARGV[1], 'paid_after_cancel', '1', 'paid_seen_at_ms',
             tostring(now))
  ledger('order_paid', 'order_paid ' .. order_id .. ' after its order_canceled: nothing granted', '')
  return reply('ignored')
end

local withheld = ARGV[8]
if withheld ~= '' then
  local lines = cjson.decode(ARGV[4]).lines or '[]'
  ledger('order_paid', ARGV[9], '', '', '', {'withheld', withheld, 'lines', lines})
  save_order({'status', 'paid', 'granted', '0', 'withheld', withheld, 'paid_event_id', ARGV[1],
              'paid_at_ms', tostring(now), 'grants', '[]'})
  return reply('withheld')
end

-- Plan every line before writing anything, so a limit error leaves no partial order behind.
local max_total, max_expires = tonumber(ARGV[6]), tonumber(ARGV[7])
local grants, conflicts = {}, 0
for _, line in ipairs(cjson.decode(ARGV[5])) do
  local entry = held(line.s)
  local current = entry.rec
  local kind, period, months, quantity = line.k, line.p, line.m or 0, line.q
  local conflict = false
  if current then
    -- The kind the player holds wins over the catalog: games read that record, and re-kinding it would drop
    -- what the player had. The consumer counts and logs the conflict.
    if kind ~= 0 and kind ~= current.k then
      conflict = true
      conflicts = conflicts + 1
    end
    if current.k == 3 and (kind ~= 3 or (period <= 0 and months <= 0)) then
      period, months = current.p or 0, current.m or 0
    end
    kind = current.k
  elseif kind == 0 then
    kind = 1
  end
  if kind == 2 then
    quantity = 1
  end
  local record, err = granted_record(current, kind, quantity, period, months, now, max_total, max_expires)
  if not record then
    return redis.error_reply(err .. ' ' .. line.s)
  end
  local after = cjson.encode(record)
  -- What a cancel needs to undo exactly this line: the record before it, and what the line added.
  local grant = {s = line.s, k = kind, n = quantity, b = entry.raw, a = after}
  if conflict then
    grant.conflict = true
  end
  if kind == 1 then
    grant.q = quantity
  elseif kind == 2 then
    grant.new = current == nil
  else
    -- The time this line added (a calendar month's length depends on where it starts): a cancel takes it back.
    local base = now
    if current and current.e and current.e > now then
      base = current.e
    end
    grant.ms = record.e - base
  end
  grants[#grants + 1] = grant
  entry.raw, entry.rec = after, record
end

write_items()
for _, grant in ipairs(grants) do
  ledger('grant', 'order_paid ' .. order_id, grant.s, grant.b, grant.a, {'quantity', string.format('%d', grant.n)})
end
save_order({'status', 'paid', 'granted', '1', 'paid_event_id', ARGV[1], 'paid_at_ms', tostring(now),
            'grants', #grants > 0 and cjson.encode(grants) or '[]'})
return reply('applied', #grants, conflicts)
