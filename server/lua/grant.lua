-- Grant (after kinds.lua, index.lua and prologue.lua). ARGV[8] kind (0 unspecified, 1 consumable, 2 permanent,
-- 3 time-limited), ARGV[9] quantity, ARGV[10] period in ms (0 when none), ARGV[11] maximum consumable total,
-- ARGV[12] metadata as JSON, ARGV[13] maximum expiry (ms since the epoch), ARGV[14] period in calendar months (0
-- when the period is ARGV[10]'s fixed length).
local kind = tonumber(ARGV[8])
local quantity = tonumber(ARGV[9])
local period = tonumber(ARGV[10])
local months = tonumber(ARGV[14])
if kind == 0 then
  if period > 0 or months > 0 then
    kind = 3
  elseif current then
    kind = current.k
  else
    kind = 1
  end
end
if current and current.k ~= kind then
  return redis.error_reply('KIND_MISMATCH ' .. current.k .. ' ' .. kind)
end
if kind == 3 and period <= 0 and months <= 0 then
  return redis.error_reply('DURATION_REQUIRED')
end
if kind == 2 and quantity ~= 1 then
  return redis.error_reply('PERMANENT_QUANTITY')
end

local record, err = granted_record(current, kind, quantity, period, months, now, tonumber(ARGV[11]), tonumber(ARGV[13]))
if not record then
  return redis.error_reply(err)
end

local record_raw = cjson.encode(record)
put_item(sku, record_raw, record, now)
return commit(record_raw, record_raw, {'quantity', ARGV[9], 'metadata', ARGV[12]})
