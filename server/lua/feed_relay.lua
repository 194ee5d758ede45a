-- Relays committed changes to partitions of a project's change feed (server/feed/relay.py), exactly once and in
-- each player's version order, and trims each partition to the retention (with no changes: only trims).
--
-- KEYS: for each partition, its stream, its `relayed` hash (user id -> the last version relayed) and its `pending`
-- sorted set (the writes' intents): core/feed.py's FeedKeys. On a cluster one partition per call (one slot); on a
-- single server any number.
-- ARGV[1] retention (ms): entries older than that are removed (by their id's time, as XTRIM MINID would), so that
-- XINFO STREAM's max-deleted-entry-id tells a reader that a cursor is older than the history kept. Then for each
-- partition: n, the number of changes; m, the number of intents; n changes of six values each (user, sku,
-- version, operation, at_ms, record after or ""), each player's in increasing version (an operation "" is a
-- probe: see below); m intents to remove (members of `pending`: "<16 hex digits>:<user id>").
--
-- A change is appended when its version is the player's relayed version + 1, skipped when it is not above it (a
-- duplicate relay: a replayed write, a repair racing the relay), and held back when it is further ahead (a gap:
-- an earlier change of the player has not been relayed yet; the relayer reads the missing ones from the player's
-- ledger and calls again). The intents of a player with a gap stay, so that a relayer that dies now leaves the
-- player to the repair.
--
-- Replies {now_ms, then for each partition: {index of each change appended (1-based)}, {user, relayed version,
-- ...} of each gap}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retention = tonumber(ARGV[1])
-- Trimmed with XDEL, not XTRIM MINID: only XDEL moves max-deleted-entry-id, which tells a reader whose cursor
-- is older than the first entry whether something after its cursor was removed. At most TRIM_STEP entries per
-- partition per call: the relays of busy partitions and the repair's passes keep up; a backlog goes in steps.
local TRIM_STEP = 1000
local reply = {now}
local pos = 2

for p = 0, #KEYS / 3 - 1 do
  local stream, relayed_key, pending = KEYS[3 * p + 1], KEYS[3 * p + 2], KEYS[3 * p + 3]
  local n, m = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  pos = pos + 2
  local relayed, moved, gaps, gap_list, appended = {}, {}, {}, {}, {}

  for i = 0, n - 1 do
    local at = pos + i * 6
    local user, version = ARGV[at], tonumber(ARGV[at + 2])
    local last = relayed[user]
    if last == nil then
      last = tonumber(redis.call('HGET', relayed_key, user) or '0')
      relayed[user] = last
    end
    if ARGV[at + 3] == '' then
      -- A replay's probe (no change of its own): the player's version when a write was replayed. Above the
      -- relayed one, the first call's changes were never relayed (applied after its caller gave up): a gap.
      if version > last and not gaps[user] then
        gaps[user] = true
        gap_list[#gap_list + 1] = user
        gap_list[#gap_list + 1] = last
      end
    elseif version == last + 1 then
      redis.call('XADD', stream, '*', 'u', user, 's', ARGV[at + 1], 'v', ARGV[at + 2], 'op', ARGV[at + 3],
                 'at', ARGV[at + 4], 'e', ARGV[at + 5])
      relayed[user] = version
      moved[user] = true
      appended[#appended + 1] = i + 1
    elseif version > last + 1 and not gaps[user] then
      gaps[user] = true
      gap_list[#gap_list + 1] = user
      gap_list[#gap_list + 1] = last
    end
  end
  pos = pos + n * 6

  for user in pairs(moved) do
    redis.call('HSET', relayed_key, user, relayed[user])
  end

  local done = {}
  for i = pos, pos + m - 1 do
    local member = ARGV[i]
    if not gaps[string.sub(member, 18)] then
      done[#done + 1] = member
    end
    if #done == 500 or (i == pos + m - 1 and #done > 0) then  -- unpack's stack is bounded
      redis.call('ZREM', pending, unpack(done))
      done = {}
    end
  end
  pos = pos + m

  local bound = now - retention - 1
  if bound > 0 then
    local old = redis.call('XRANGE', stream, '-', tostring(bound), 'COUNT', TRIM_STEP)
    local ids = {}
    for i, entry in ipairs(old) do
      ids[#ids + 1] = entry[1]
      if #ids == 500 or i == #old then  -- unpack's stack is bounded
        redis.call('XDEL', stream, unpack(ids))
        ids = {}
      end
    end
  end

  reply[#reply + 1] = appended
  reply[#reply + 1] = gap_list
end
return reply
