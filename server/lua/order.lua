-- Shared head of the order scripts (after kinds.lua and index.lua; server/store/entitlement_store.py prepends them). The order
-- hash is the order's idempotency record: its `status` says which events were applied, its `grants` what a cancel undoes.
--
-- KEYS[1] items hash, KEYS[2] skus sorted set, KEYS[3] ledger stream, KEYS[4] order hash, KEYS[5] the player's
-- version (core/feed.py), on a single server KEYS[6..8] the player's change feed partition (index.lua's FEED),
-- then the index keys (index.lua).
-- ARGV[1] event id (the idempotency key written to the ledger), ARGV[2] order id, ARGV[3] actor,
-- ARGV[4] order fields to record as JSON {name: string}; the scripts' own arguments follow.
--
-- Both scripts reply JSON {r = result, status, granted, at = updated_at_ms, n = lines changed, c = conflicts,
-- w = why the paid order grants nothing by policy ("sandbox"; "" when it grants), pe = the event id of the
-- order_paid that was applied ("" if none), pa = when it was (ms, 0 if not), f = the changes for the change feed,
-- in order: [[version, sku, record after ("" when removed)], ...], absent when none; every change was made at
-- `now`; pv = the player's version, on a replay when the feed may lack some of it; h = index.lua's feed_reply()
-- with either}.

local order_key = KEYS[4]
local order_id = ARGV[2]
local now = server_now()

-- A replay writes the order's status as it is: the consumer waits for this connection's write to be durable
-- before its XACK, and a script that wrote nothing moves no write offset (see prologue.lua).
-- The reply of a replay carries the player's version (`pv`) when the feed may lack some of it: see prologue.lua.
local replay_version = nil
local function replayed(status)
  redis.call('HSET', order_key, 'status', status)
  local version = tonumber(redis.call('GET', KEYS[5]) or '0')
  if version > 0 and feed_behind(version) then
    replay_version = version
  end
  return 'replayed'
end

-- The changes to the player's skus this script made, for the reply (`ledger` adds them).
local changes = {}

local function reply(result, n, c)
  local stored = redis.call('HMGET', order_key, 'status', 'granted', 'updated_at_ms', 'withheld', 'paid_event_id',
                            'paid_at_ms')
  local answer = {r = result, status = stored[1], granted = stored[2] == '1',
                  at = tonumber(stored[3]) or 0, n = n or 0, c = c or 0, w = stored[4] or '',
                  pe = stored[5] or '', pa = tonumber(stored[6]) or 0}
  if #changes > 0 then
    answer.f = changes
  end
  if replay_version then
    answer.pv = replay_version
  end
  if #changes > 0 or replay_version then
    answer.h = feed_reply()
  end
  return cjson.encode(answer)
end

-- Writes the order hash: the recorded order fields, then `fields` (name, value, ...).
local function save_order(fields)
  local all = {'order_id', order_id, 'updated_at_ms', tostring(now)}
  for name, value in pairs(cjson.decode(ARGV[4])) do
    all[#all + 1] = name
    all[#all + 1] = tostring(value)
  end
  for _, v in ipairs(fields) do
    all[#all + 1] = v
  end
  redis.call('HSET', order_key, unpack(all))
end

-- An order line's ledger operation -> the change's operation in the feed (server/feed/relay.py says the same).
local FEED_OPERATIONS = {grant = 'order_paid', cancel = 'order_canceled'}

-- Appends one ledger entry in the format of prologue.lua's, plus the order id. An entry that names a sku is a change
-- to it: counted in the player's version, recorded with it (`v`) and added to the reply's changes.
local function ledger(op, reason, sku, before, after, extra)
  local fields = {'op', op, 'sku', sku, 'idempotency_key', ARGV[1], 'actor', ARGV[3], 'reason', reason,
                  'at_ms', tostring(now), 'before', before or '', 'after', after or '', 'order_id', order_id}
  if sku ~= '' then
    local version = redis.call('INCR', KEYS[5])
    fields[#fields + 1] = 'v'
    fields[#fields + 1] = tostring(version)
    changes[#changes + 1] = {version, sku, after or ''}
    feed_append(version, sku, FEED_OPERATIONS[op] or op, now, after)
  end
  for _, v in ipairs(extra or {}) do
    fields[#fields + 1] = v
  end
  redis.call('XADD', KEYS[3], '*', unpack(fields))
end

-- Reads a sku's record once per script; later reads see this script's own changes (`state`).
local state, touched = {}, {}
local function held(sku)
  local entry = state[sku]
  if not entry then
    local raw = redis.call('HGET', KEYS[1], sku)
    entry = {raw = raw or nil, rec = raw and cjson.decode(raw) or nil}
    state[sku] = entry
    touched[#touched + 1] = sku
  end
  return entry
end

-- Writes every sku `held` saw, as this script left it (removed when its record is nil).
local function write_items()
  for _, sku in ipairs(touched) do
    local entry = state[sku]
    put_item(sku, entry.raw, entry.rec, now)
  end
end
