-- An order's upstream record (server/status_channel/states.py, UpstreamRecords): the furthest status the provider
-- reported to the replica following the order there. KEYS[1] the record (a hash: rank, message), ARGV[1] the
-- status's rank (new 1 < paid 2 < done 3 < canceled, expired 4), ARGV[2] the message, ARGV[3] how long the record
-- lasts (ms). Forward-only: a status at or below the recorded rank changes nothing. Replies 1 when recorded.
local current = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
if current >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'message', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
