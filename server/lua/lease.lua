-- A lease (server/leases.py). KEYS[1] the lease, ARGV[1] "renew" or "release", ARGV[2] the
-- holder id, ARGV[3] the lease's length (ms, renew only). Only the holder renews or releases it: a holder whose lease
-- expired and was taken by another replica changes nothing. Replies 1 when the holder held it, 0 when nobody holds it
-- (it expired), -1 when another holder does.
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[2] then
  if holder then
    return -1
  end
  return 0
end
if ARGV[1] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
