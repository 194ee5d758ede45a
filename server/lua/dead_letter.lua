-- Moves an event-stream entry that keeps failing to the partition's dead-letter stream and acknowledges it, in
-- one step, so it is neither lost nor applied again. Only the consumer holding the entry may move it (another
-- one may have claimed it since).
--
-- KEYS[1] event stream, KEYS[2] dead-letter stream (same hash tag). ARGV[1] consumer group, ARGV[2] entry id,
-- ARGV[3] consumer name, ARGV[4] error text, ARGV[5] deliveries so far, ARGV[6] now (ms, for the record).
-- Replies the dead-letter entry id, or false when this consumer does not hold the entry.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then
  return false
end
local rows = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local fields = {}
if #rows > 0 then
  fields = rows[1][2]
end
for _, v in ipairs({'original_id', ARGV[2], 'error', ARGV[4], 'deliveries', ARGV[5], 'consumer', ARGV[3],
                    'dead_lettered_at_ms', ARGV[6]}) do
  fields[#fields + 1] = v
end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
