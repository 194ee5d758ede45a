-- Records a provider event that changes no entitlement (payment, refund, partial refund) on the player's ledger,
-- once per event id, atomically (after kinds.lua, for server_now).
--
-- KEYS[1] applied-event marker, KEYS[2] ledger stream. ARGV[1] marker TTL (ms), ARGV[2..] the ledger entry's
-- field names and values (the script adds `at_ms`). Replies "replayed" or "applied".
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- A replay writes the marker as it is, so that the caller's durability wait covers the first apply (prologue.lua).
  redis.call('SET', KEYS[1], '1', 'KEEPTTL')
  return 'replayed'
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'at_ms'
fields[#fields + 1] = tostring(server_now())
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 'applied'
