-- Records a recurring-subscription event (create, update, non-renewal, cancel) on the player's subscriptions
-- hash, once per event id, atomically, in the order the provider's own dates place it.
--
-- (After kinds.lua and index.lua.) KEYS[1] subscriptions hash, KEYS[2] applied-event marker, KEYS[3] ledger
-- stream, then the index keys (index.lua).
-- ARGV[1] event id, ARGV[2] marker TTL (ms), ARGV[3] actor, ARGV[4] action (created, updated, non_renewing,
-- canceled), ARGV[5] subscription id, ARGV[6] the event's fields as JSON (the record's keys; absent = unknown).
-- Replies JSON {r = "applied" | "stale" | "replayed", record = the stored record, why = why a stale event was
-- older (stale only)}.
--
-- Events arrive out of order (the provider's retries, dead-letter replays, several consumers) and carry no time of
-- their own, only dates: date_create, date_next_charge (a renewal moves it on; a non-renewal keeps it) and date_end
-- (a cancel). The rule, explained in server/store/subscriptions.py and docs/CONSUMER.md, places each event by
-- the dates against what the record keeps of the state in force:
--   date_next_charge_ms   the latest next charge applied (never lowered)
--   period_start_ms       when the period in force began: the create's date_create, or the charge of the renewal
--                         that set date_next_charge_ms (the next charge it replaced)
--   period_estimate_ms    the billing period as seen: the last renewal's step, or a create's first period
--   date_end_ms           the applied cancel's date_end (canceled only)
-- An event found older changes nothing (a late create only fills in details the record never had) and is
-- recorded on the ledger with applied = 0 and why.

local DAY_MS = 86400000
-- Calendar months differ by up to three days: a renewal placed by an estimated period may be off by that much.
local SLACK_MS = 4 * DAY_MS
-- How far the provider's clock may run ahead of the Redis server's.
local SKEW_MS = 3600000
-- Keys that place the state in time: never taken from an event found older.
local ORDERING = {date_next_charge_ms = true, date_end_ms = true, period_start_ms = true, period_estimate_ms = true}

local sub_id = ARGV[5]
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- A replay writes the marker as it is, so that the caller's durability wait covers the first apply (prologue.lua).
  redis.call('SET', KEYS[2], '1', 'KEEPTTL')
  local raw = redis.call('HGET', KEYS[1], sub_id)
  return cjson.encode({r = 'replayed', record = raw and cjson.decode(raw) or cjson.null})
end
local now = server_now()
local action = ARGV[4]
local incoming = cjson.decode(ARGV[6])
local before = redis.call('HGET', KEYS[1], sub_id)
local current = before and cjson.decode(before) or nil

-- A time for the ledger's `why`: ISO 8601 UTC to the second (civil_from_days is kinds.lua's, prepended).
local function iso(ms)
  if not ms then
    return 'unknown'
  end
  local seconds = math.floor(ms / 1000)
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local year, month, day = civil_from_days(days)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', year, month, day, math.floor(rest / 3600),
                       math.floor(rest % 3600 / 60), rest % 60)
end

-- The first period of a create without a trial: date_next_charge - date_create (with a trial it is the trial's).
local function first_period(event)
  if event.date_create_ms and event.date_next_charge_ms and not event.trial_value
     and event.date_next_charge_ms > event.date_create_ms then
    return event.date_next_charge_ms - event.date_create_ms
  end
  return nil
end

-- Places the event against `current`. Returns nil and why when it is older than the state in force; otherwise
-- the period start and period estimate the record keeps once it is applied.
local function place()
  if not current then
    if action == 'created' then
      return incoming.date_create_ms, first_period(incoming)
    end
    return nil, nil
  end
  local start, estimate = current.period_start_ms, current.period_estimate_ms
  if action == 'created' then
    return nil, 'a create is older than any state already recorded'
  end
  if action == 'canceled' then
    local ended = incoming.date_end_ms or now
    if current.status == 'canceled' then
      if current.date_end_ms and ended <= current.date_end_ms then
        return nil, 'its date_end is not after the cancel already applied (' .. iso(current.date_end_ms) .. ')'
      end
    elseif start and ended < start then
      return nil, 'its date_end is before the period in force began (' .. iso(start) .. '): a later renewal'
    end
    return start, estimate
  end
  -- updated, non_renewing: placed by date_next_charge.
  local next_charge, stored = incoming.date_next_charge_ms, current.date_next_charge_ms
  if not next_charge then
    return nil, 'it carries no date_next_charge to place it by'
  end
  if stored and next_charge < stored then
    return nil, 'its date_next_charge is before the one already applied (' .. iso(stored) .. ')'
  end
  if stored and next_charge == stored then
    if current.status == 'active' or (action == 'non_renewing' and current.status == 'non_renewing') then
      return start, estimate
    end
    return nil, 'same period as the stored ' .. current.status .. ' state: a late delivery cannot be told from a '
      .. 'later change, so the next renewal decides'
  end
  -- A renewal to next_charge happened, charged when the period ending at `stored` ended.
  if current.status ~= 'canceled' then
    return stored, stored and (next_charge - stored) or estimate
  end
  local ended = current.date_end_ms or 0
  if stored and stored > ended then
    -- Charged at `stored`, after the cancel: the subscription was taken up again, unless that date is still to
    -- come (then nothing was charged: the event moved the date, before the cancel).
    if stored > now + SKEW_MS then
      return nil, 'the charge it reports (' .. iso(stored) .. ') is still to come: it moved the date before the cancel'
    end
    return stored, next_charge - stored
  end
  if not estimate then
    return nil, 'the billing period is unknown, so it cannot be shown to come after the cancel (' .. iso(ended) .. ')'
  end
  local charged = next_charge - estimate
  if charged <= ended + SLACK_MS or charged > now + SKEW_MS then
    return nil, 'its charge, about ' .. iso(charged) .. ', is not clearly after the cancel (' .. iso(ended) .. ')'
  end
  return charged, estimate
end

local start, estimate_or_why = place()
local fresh = type(estimate_or_why) ~= 'string'
local record = current or {id = sub_id}
local changed = fresh
if fresh then
  for name, value in pairs(incoming) do
    if name ~= 'date_next_charge_ms' or not record.date_next_charge_ms or value > record.date_next_charge_ms then
      record[name] = value
    end
  end
  local statuses = {created = 'active', updated = 'active', non_renewing = 'non_renewing', canceled = 'canceled'}
  record.status = statuses[action]
  if action == 'canceled' then
    record.date_end_ms = incoming.date_end_ms or now
  elseif incoming.date_end_ms == nil then
    record.date_end_ms = nil  -- taken up again after a cancel
  end
  record.period_start_ms = start
  record.period_estimate_ms = estimate_or_why
  record.updated_at_ms = now
  record.event_id = ARGV[1]
elseif action == 'created' then
  -- The create is older, but what it alone says (date_create, trial, gift) no later event contradicts.
  changed = false
  for name, value in pairs(incoming) do
    if record[name] == nil and not ORDERING[name] then
      record[name] = value
      changed = true
    end
  end
  if record.period_estimate_ms == nil and first_period(incoming) then
    record.period_estimate_ms = first_period(incoming)
    changed = true
  end
end
local after = before
if changed then
  after = cjson.encode(record)
  put_subscription(sub_id, after, record)
end
local reason = action .. ' subscription ' .. sub_id
local fields = {'op', 'subscription', 'sku', '', 'idempotency_key', ARGV[1], 'actor', ARGV[3], 'reason', reason,
                'at_ms', tostring(now), 'before', before or '', 'after', after or '', 'subscription_id', sub_id,
                'applied', fresh and '1' or '0'}
if not fresh then
  fields[#fields + 1] = 'why'
  fields[#fields + 1] = 'older than the stored state: ' .. estimate_or_why
end
redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
if fresh then
  return cjson.encode({r = 'applied', record = record})
end
return cjson.encode({r = 'stale', record = record, why = estimate_or_why})
