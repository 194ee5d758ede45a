-- Records what this service learned of one order (server/reconcile/index.py): whom it belongs to, and whether its
-- order_paid was applied here. KEYS[1] players hash, KEYS[2] known orders (sorted set), KEYS[3] applied orders
-- (sorted set), all with the project's hash tag. ARGV[1] order id, ARGV[2] player, ARGV[3] authority: "w" (a signed
-- webhook, or the provider's own record) or "s" (a stream the provider confirmed: a claim), ARGV[4] now (ms),
-- ARGV[5] "1" when the order's order_paid was applied.
--
-- An authoritative record replaces a claim or a disagreement between claims; two authoritative records naming
-- different players leave "X", which nothing replaces. A claim is kept only where nothing was known; a second claim
-- for another player makes "x". Replies with what the hash holds afterwards.
local order, player, authority = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', KEYS[1], order)
local want = authority .. ':' .. player
local after = current
if authority == 'w' then
  if not current or current == 'x' or string.sub(current, 1, 2) == 's:' then
    after = want
  elseif current ~= want and current ~= 'X' then
    after = 'X'
  end
elseif not current then
  after = want
elseif string.sub(current, 1, 2) == 's:' and current ~= want then
  after = 'x'
end
if after ~= current then
  redis.call('HSET', KEYS[1], order, after)
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], order)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], 'NX', ARGV[4], order)
end
return after
