-- One bounded step of indexing a player written before the indexes existed (after kinds.lua and index.lua; its
-- KEYS are the index keys alone). Scans about ARGV[1] entries (HSCAN COUNT) of the items hash, then of the
-- subscriptions hash, and remembers in `state` where it stopped, so that no step holds Redis for long whatever the
-- player's history. Writes keep the indexes as soon as a build has started (index.lua), so a record changed
-- after the scan passed it is right too, and one the scan meets twice is simply indexed again. (`skus` is older
-- than the indexes: every write has kept it.)
-- Replies 1 once the indexes are complete, 0 while more steps are needed.
index_status()
if index_ready then
  return 1
end
local now = server_now()
local phase, cursor = 'items', '0'
if index_state then
  phase, cursor = string.match(index_state, '^(%a+) (%d+)$')
  if phase ~= 'items' and phase ~= 'subs' then
    phase, cursor = 'items', '0' -- not a state this version writes: start again (every step is idempotent)
  end
end

local function decoded(raw)
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then
    return value
  end
  return nil
end

-- One ZADD or ZREM per sorted set for the whole step: a command per entry would cost several times more.
local batches = {}
local function add(command, key, ...)
  local id = command .. ' ' .. key
  local batch = batches[id]
  if not batch then
    batch = {command, key}
    batches[id] = batch
  end
  for _, value in ipairs({...}) do
    batch[#batch + 1] = value
  end
end

local reply = redis.call('HSCAN', phase == 'items' and IX.items or IX.subs, cursor, 'COUNT', ARGV[1])
local entries = reply[2]
for i = 1, #entries, 2 do
  local name, record = entries[i], decoded(entries[i + 1])
  if phase == 'subs' then
    local created = record and tonumber(record.date_create_ms) or 0
    add('ZADD', IX.subs_order, score(-created), name)
    if record and (record.status == 'active' or record.status == 'non_renewing') then
      add('ZADD', IX.subs_active, score(-created), name)
    else
      add('ZREM', IX.subs_active, name)
    end
  elseif record and record.k == 3 then
    add('ZADD', IX.timed, score(-(tonumber(record.g) or 0)), name)
    local expires = tonumber(record.e)
    if expires and expires > now then
      add('ZADD', IX.live, 0, name)
      add('ZADD', IX.expiry, score(expires), name)
    else
      add('ZREM', IX.live, name)
      add('ZREM', IX.expiry, name)
    end
  else
    -- Another kind, or unreadable: listed (its reader then reports an unreadable one).
    add('ZADD', IX.live, 0, name)
    add('ZREM', IX.expiry, name)
    add('ZREM', IX.timed, name)
  end
end
for _, batch in pairs(batches) do
  redis.call(unpack(batch))
end

if reply[1] ~= '0' then
  redis.call('SET', IX.state, phase .. ' ' .. reply[1])
  return 0
end
if phase == 'items' then
  redis.call('SET', IX.state, 'subs 0')
  return 0
end
redis.call('SET', IX.state, 'ready')
return 1
