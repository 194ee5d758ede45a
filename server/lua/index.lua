-- A player's read indexes, kept by every script that writes the items or recurring-subscriptions hash
-- (server/store/entitlement_store.py prepends this file to them, and to the scripts that build and read the
-- indexes). With them a listing reads what its page needs, however many expired items the player's history holds.
--
-- The last nine KEYS of such a script are always, in this order (core.keys.UserKeys.indexes):
--   state        string: "ready" once the indexes are complete; "items <cursor>" or "subs <cursor>" while the
--                data of a player written before they existed is being indexed (index_build.lua); absent before
--   items, subs  the items hash and the recurring-subscriptions hash
--   skus         sorted set, scores 0: every held sku (ListEntitlements with include_expired)
--   live         sorted set, scores 0: the held skus not known to be expired. A time-limited sku leaves it when a
--                write or a listing sees it expired, or when `expiry` is pruned (list_page.lua)
--   expiry       sorted set: the time-limited skus of `live`, scored by expires_at (ms)
--   timed        sorted set: every held time-limited sku, scored by -granted_at (ms), so that it reads newest
--                first, then by sku
--   subs_order   sorted set: every recurring subscription id, scored by -date_create (ms; 0 when unknown)
--   subs_active  sorted set: the recurring subscriptions in force (active, non_renewing), scored as subs_order
--
-- Scores are written with %.17g: exact for any double (expiries stay below 10^14 ms).

local IX = {}
do
  local n = #KEYS - 9
  IX.state, IX.items, IX.subs, IX.skus = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
  IX.live, IX.expiry, IX.timed = KEYS[n + 5], KEYS[n + 6], KEYS[n + 7]
  IX.subs_order, IX.subs_active = KEYS[n + 8], KEYS[n + 9]
end

-- index_state: the state key's value (false when absent). index_kept: writes keep the indexes once they exist,
-- complete or being built (a record the build already passed stays right); a player with no data yet starts
-- with complete ones. index_ready: the indexes can be read: complete, or the player has no data at all (then
-- nothing is written: a read of an unknown player leaves no key behind).
-- Read by index_status() on first use, which comes before the script's first write to the items or
-- subscriptions hash (put_item and put_subscription ask first): a replayed write never pays for it.
local index_state, index_kept, index_ready

local function index_status()
  if index_kept == nil then
    index_state = redis.call('GET', IX.state)
    index_kept = index_state ~= false or redis.call('EXISTS', IX.items, IX.subs) == 0
    index_ready = index_state == 'ready' or (not index_state and index_kept)
  end
end

local function score(value)
  return string.format('%.17g', value)
end

local function index_started()
  if not index_state then
    redis.call('SET', IX.state, 'ready')
    index_state = 'ready'
  end
end

-- Puts one sku in the indexes as `record` (the decoded record; nil: no longer held) says, at `now` (ms).
local function index_item(sku, record, now)
  if record and record.k == 3 then
    redis.call('ZADD', IX.timed, score(-(tonumber(record.g) or 0)), sku)
    local expires = tonumber(record.e)
    if expires and expires > now then
      redis.call('ZADD', IX.live, 0, sku)
      redis.call('ZADD', IX.expiry, score(expires), sku)
      return
    end
  else
    redis.call('ZREM', IX.timed, sku)
    if record then
      redis.call('ZADD', IX.live, 0, sku)
      redis.call('ZREM', IX.expiry, sku)
      return
    end
  end
  redis.call('ZREM', IX.live, sku)
  redis.call('ZREM', IX.expiry, sku)
end

-- Puts one recurring subscription in the indexes (`record` decoded; nil: unreadable, listed only with the
-- inactive ones).
local function index_subscription(id, record)
  local created = record and tonumber(record.date_create_ms) or 0
  redis.call('ZADD', IX.subs_order, score(-created), id)
  if record and (record.status == 'active' or record.status == 'non_renewing') then
    redis.call('ZADD', IX.subs_active, score(-created), id)
  else
    redis.call('ZREM', IX.subs_active, id)
  end
end

-- The one way the write scripts change the items hash: writes `raw` (the record's JSON, `record` decoded) for
-- `sku`, or removes the sku when `raw` is nil, and keeps `skus` and the indexes right.
local function put_item(sku, raw, record, now)
  index_status()
  if raw then
    redis.call('HSET', IX.items, sku, raw)
    redis.call('ZADD', IX.skus, 0, sku)
  else
    redis.call('HDEL', IX.items, sku)
    redis.call('ZREM', IX.skus, sku)
  end
  if index_kept then
    index_started()
    index_item(sku, raw and record or nil, now)
  end
end

-- The one way a script changes the subscriptions hash: writes `raw` (`record` decoded) for subscription `id`.
local function put_subscription(id, raw, record)
  index_status()
  redis.call('HSET', IX.subs, id, raw)
  if index_kept then
    index_started()
    index_subscription(id, record)
  end
end

-- The change feed (core/feed.py), for the scripts that change the items hash (five keys of their own, then the
-- index keys). On a single server, where a script may touch keys of any slot, the writer (server/store/writes.py)
-- passes the player's feed partition's stream, `relayed` hash and `pending` set as keys 6 to 8, and as the last
-- two ARGV the retention (ms) and the user id: each change is then appended to the feed by the script itself,
-- atomically with it, when it is the player's next version there (relayed + 1, the rule of feed_relay.lua).
-- Otherwise (an earlier change is missing from the feed: one made by a writer without a feed) the script records
-- the write's intent ("<the version, 16 hex digits>:<user>", unique per write, scored by now) and leaves its
-- changes to the writer's relay, which fills the gap from the ledger. On a cluster (another slot) the writer
-- passes none of this, records the intent itself and relays.
local FEED = nil
if #KEYS - 9 == 8 then
  FEED = {stream = KEYS[6], relayed = KEYS[7], pending = KEYS[8], retention = tonumber(ARGV[#ARGV - 1]),
          user = ARGV[#ARGV]}
end
-- Whether every change of this script so far was appended here (false: left to the writer's relay).
local feed_appended = FEED ~= nil
-- The intent recorded when a change was left to the relay, for the reply (its member).
local feed_intent = nil
local feed_last = nil

local function feed_hold(version)
  if feed_appended then
    feed_appended = false
    local t = redis.call('TIME')
    feed_intent = string.format('%016x', version) .. ':' .. FEED.user
    redis.call('ZADD', FEED.pending, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), feed_intent)
  end
end

-- What the reply says of the feed: 1 when the script appended its changes itself, else the intent it recorded
-- for the writer's relay (a single server), else 0 (a cluster: the writer's own intent).
local function feed_reply()
  if feed_appended then
    return 1
  end
  return feed_intent or 0
end

-- Appends one change (version, sku, operation, ms, record after or '') to the feed when the script may (above).
local function feed_append(version, sku, op, at, after)
  if not feed_appended then
    return
  end
  if feed_last == nil then
    feed_last = tonumber(redis.call('HGET', FEED.relayed, FEED.user) or '0')
  end
  if version ~= feed_last + 1 then
    feed_hold(version)
    return
  end
  redis.call('XADD', FEED.stream, '*', 'u', FEED.user, 's', sku, 'v', tostring(version), 'op', op,
             'at', tostring(at), 'e', after or '')
  redis.call('HSET', FEED.relayed, FEED.user, version)
  feed_last = version
  -- A few entries past the retention go with each append (XDEL: see feed_relay.lua); the repair does the rest.
  local bound = at - FEED.retention - 1
  if bound > 0 then
    local old = redis.call('XRANGE', FEED.stream, '-', tostring(bound), 'COUNT', 4)
    for _, entry in ipairs(old) do
      redis.call('XDEL', FEED.stream, entry[1])
    end
  end
end

-- A replay changes nothing, but its first call may have been applied after its caller gave up and never reached
-- the feed: true when the player's `version` is not all in the feed here (or cannot be told: a cluster), so that
-- the reply carries it for the writer's relay to fill (with the intent recorded).
local function feed_behind(version)
  if not FEED then
    return true
  end
  if version <= tonumber(redis.call('HGET', FEED.relayed, FEED.user) or '0') then
    return false
  end
  feed_hold(version)
  return true
end
