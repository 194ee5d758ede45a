-- Saves the sweep's progress only while the lease is held (server/reconcile/progress.py): a replica that lost its
-- lease can never move the progress of the one that took it over. KEYS[1] the lease, KEYS[2] the progress hash
-- (both with the project's hash tag), ARGV[1] the holder id, ARGV[2] the number of fields to delete, then those
-- fields, then field/value pairs to set. Replies 1 when saved, 0 when the lease is not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local deleted = tonumber(ARGV[2])
if deleted > 0 then
  redis.call('HDEL', KEYS[2], unpack(ARGV, 3, 2 + deleted))
end
if #ARGV > 2 + deleted then
  redis.call('HSET', KEYS[2], unpack(ARGV, 3 + deleted))
end
return 1
