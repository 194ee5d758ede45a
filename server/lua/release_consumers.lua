-- Removes consumers that hold no pending entry from an event stream's group: this process's own consumer when it
-- stops (ARGV[2]), and consumers of processes gone for good (idle longer than ARGV[3] ms). A consumer holding
-- entries is never removed: XGROUP DELCONSUMER would drop its pending entries, and they must be claimed instead.
-- (A live consumer removed by mistake costs nothing: its next XREADGROUP creates it again.)
--
-- KEYS[1] event stream. ARGV[1] consumer group, ARGV[2] consumer name to release ('' for none),
-- ARGV[3] idle threshold in ms. Replies how many consumers were removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then
  return 0  -- no such group
end
local removed = 0
for _, info in ipairs(consumers) do
  local fields = {}
  for i = 1, #info, 2 do
    fields[info[i]] = info[i + 1]
  end
  if fields['pending'] == 0 and (fields['name'] == ARGV[2] or fields['idle'] > tonumber(ARGV[3])) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    removed = removed + 1
  end
end
return removed
