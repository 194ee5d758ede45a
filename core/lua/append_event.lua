-- Appends an accepted notification to the event stream unless its event id was stored before (dedup at the
-- door), atomically. KEYS[1] dedup key, KEYS[2] stream. ARGV[1] dedup TTL (ms), ARGV[2] serialized event,
-- ARGV[3] raw body, ARGV[4] event type name, ARGV[5] approximate maximum stream length (0: no trimming),
-- ARGV[6] '1' when the caller waits for durability after this script (WAIT / WAITAOF on the same connection).
-- Replies with the new entry id, or false for a duplicate.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  if ARGV[6] == '1' then
    -- WAIT and WAITAOF wait for the calling connection's own write offset, which the server moves only after a
    -- command that propagated something (Valkey's call(): `if (old_primary_repl_offset !=
    -- server.primary_repl_offset) c->woff = ...`). A script that wrote nothing would leave it where this
    -- connection's last write put it (0 on a new connection), and the wait would answer at once, while the first
    -- copy of this event may still be on the primary alone, in memory. Refreshing the dedup key's expiry is a
    -- write: it propagates after the first copy (the server runs one command at a time), so waiting for it waits
    -- for the first copy too.
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
  return false
end
local maxlen = tonumber(ARGV[5])
if maxlen > 0 then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'event', ARGV[2], 'raw', ARGV[3], 'type', ARGV[4])
end
return redis.call('XADD', KEYS[2], '*', 'event', ARGV[2], 'raw', ARGV[3], 'type', ARGV[4])
