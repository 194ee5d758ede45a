-- Puts a dead letter back on its event stream as a new entry (the event and its id unchanged, so applying it
-- stays idempotent) and removes it from the dead-letter stream, in one step.
--
-- KEYS[1] dead-letter stream, KEYS[2] event stream (same hash tag). ARGV[1] dead-letter entry id.
-- Replies the new event-stream entry id, or false when there is no such dead letter.
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then
  return false
end
-- The dead-letter record's own fields are dropped; the entry's original fields are copied as they were.
local record = {original_id = true, error = true, deliveries = true, consumer = true, dead_lettered_at_ms = true,
                replay_of = true}
local fields, original = {}, ''
local stored = rows[1][2]
for i = 1, #stored, 2 do
  local name, value = stored[i], stored[i + 1]
  if name == 'original_id' then
    original = value
  end
  if not record[name] then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
fields[#fields + 1] = 'replay_of'
fields[#fields + 1] = original
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
