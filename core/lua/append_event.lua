-- Appends an accepted notification to the event stream unless its event id was stored before (dedup at the
-- door), atomically. KEYS[1] dedup key, KEYS[2] stream. ARGV[1] dedup TTL (ms), ARGV[2] serialized event,
-- ARGV[3] raw body, ARGV[4] event type name, ARGV[5] approximate maximum stream length (0: no trimming).
-- Replies with the new entry id, or false for a duplicate.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return false
end
local maxlen = tonumber(ARGV[5])
if maxlen > 0 then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'event', ARGV[2], 'raw', ARGV[3], 'type', ARGV[4])
end
return redis.call('XADD', KEYS[2], '*', 'event', ARGV[2], 'raw', ARGV[3], 'type', ARGV[4])
